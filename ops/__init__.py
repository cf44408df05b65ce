"""Operator tools: the local cluster (cluster.py) and the benchmarks (bench/)."""
