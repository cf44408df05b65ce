"""Encrypt throughput of a node with a consumer following its audit stream, beside without.

One ``--dev`` node; the same closed-loop wrk load as bench_crypto.py (its harness is reused),
in --rounds alternating runs without and with a follower: ``kms audit tail --follow --json
--event-name Encrypt`` as a subprocess writing to a file, as a consumer would run it. After
each followed run the follower's catch-up is awaited: the time from the end of the load until
it has printed every Encrypt record of the run (lag at the end of the load), the
follower's own CPU per request is read from /proc (a client sharing the node's cores), and
the rows the log gained beyond one per Encrypt are counted: the ``ReadAuditStream`` records
of the follower's reads (each read that returns records is answered only once one is
durable), per 1,000 Encrypts. Throughput and server CPU per Encrypt are given as ratios,
followed over alone.

    python ops/bench/bench_audit.py [--duration 10 --concurrency 32 --rounds 2 --warmup 2]

Prints a table and writes ops/bench/results/audit-<date>.json.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_crypto import (  # noqa: E402
    ROOT,
    Server,
    combine,
    free_port,
    lua_script,
    measured,
    run_wrk,
    source_fingerprint,
    versions,
)

RESULTS = HERE / "results"


def lines_in(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def follower(url: str, out: Path) -> subprocess.Popen[bytes]:
    with open(out, "wb") as sink:
        return subprocess.Popen([sys.executable, "-m", "regions.cli", "audit", "tail",
                                 "--endpoint", url, "--follow", "--json", "--event-name",
                                 "Encrypt"], cwd=ROOT, stdout=sink, stderr=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def caught_up(out: Path, expected: int, bound_s: float = 120.0) -> float | None:
    """Seconds until the follower's file holds ``expected`` records (None past the bound)."""
    t0 = time.monotonic()
    while lines_in(out) < expected:
        if time.monotonic() - t0 > bound_s:
            return None
        time.sleep(0.01)
    return time.monotonic() - t0


def main() -> int:
    p = argparse.ArgumentParser(description="Encrypt with and without an audit follower")
    p.add_argument("--duration", type=float, default=10,
                   help="seconds of load per case, split over --rounds (default 10)")
    p.add_argument("--concurrency", default="32", help="comma list of connections")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kms-bench-audit-"))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = a.out or RESULTS / f"audit-{stamp}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    concurrencies = [int(c) for c in a.concurrency.split(",") if c]
    results: list[dict[str, Any]] = []
    node = None
    with open(work / "node-stderr.jsonl", "wb") as node_err:
        try:
            node = Server("node", [sys.executable, "-m", "kms.cli", "serve", "--dev",
                                   "--host", "127.0.0.1", "--port", str(port := free_port()),
                                   "--data-dir", str(work / "data"), "--log-format", "json"],
                          port, node_err)
            key_id = node.call("CreateKey", {"Description": "bench"})["KeyMetadata"]["KeyId"]
            body = {"KeyId": key_id, "Plaintext": base64.b64encode(os.urandom(64)).decode()}
            script = lua_script(work / "encrypt.lua", "Encrypt", json.dumps(body))
            made = 0  # Encrypt records in the log so far (a follower starts from the first)
            if a.warmup > 0:
                made += run_wrk(node.url, script, max(concurrencies), a.warmup,
                                a.threads)["requests"]
            for c in concurrencies:
                runs: dict[str, list[dict[str, Any]]] = {"alone": [], "followed": []}
                for i in range(a.rounds):
                    for case in (("alone", "followed") if i % 2 == 0 else ("followed", "alone")):
                        proc = out = None
                        if case == "followed":
                            out = work / f"follow-{c}-{i}.jsonl"
                            proc = follower(node.url, out)
                            # measure once it has read the backlog: it is then long-polling
                            if caught_up(out, made) is None:
                                raise RuntimeError("the follower never read the backlog")
                        try:
                            start = lines_in(out) if out else 0
                            cpu0 = cpu_seconds(proc.pid) if proc is not None else 0.0
                            seq0 = int(node.health()["log_seq"])
                            r = measured(node, script, c, a.duration / a.rounds, a.threads)
                            made += r["requests"]
                            if out is not None and proc is not None:
                                lag = caught_up(out, made)
                                # the rows beyond one per Encrypt: the follower's reads'
                                r["read_records_per_1k"] = round(1000 * (
                                    int(node.health()["log_seq"]) - seq0 - r["requests"])
                                    / r["requests"], 2)
                                r["follower_catch_up_s"] = -1.0 if lag is None else lag
                                r["follower_records"] = lines_in(out) - start
                                # the follower's own CPU (a client on the same cores)
                                r["follower_cpu_us_per_op"] = (
                                    (cpu_seconds(proc.pid) - cpu0) * 1e6 / r["requests"])
                        finally:
                            if proc is not None:
                                proc.terminate()
                                proc.wait(timeout=15)
                        runs[case].append(r)
                        extra = (f"  follower caught up {r['follower_catch_up_s']:.2f}s after,"
                                 f" its CPU {r['follower_cpu_us_per_op']:.0f} us/op, read "
                                 f"records {r['read_records_per_1k']:.1f}/1k"
                                 if case == "followed" else "")
                        print(f"  {case:9} c={c:<4} {r['ops_s']:8.0f} ops/s  p50 "
                              f"{r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  CPU "
                              f"{r['server_cpu_us_per_op']:5.0f} us/op  errors "
                              f"{r['errors']}{extra}", flush=True)
                pair = {}
                for case in ("alone", "followed"):
                    pair[case] = combine(runs[case])
                    pair[case].update(case=case, concurrency=c)
                    if case == "followed":
                        pair[case]["follower_catch_up_s"] = max(
                            x["follower_catch_up_s"] for x in runs[case])
                        pair[case]["follower_cpu_us_per_op"] = round(sum(
                            x["follower_cpu_us_per_op"] * x["requests"] for x in runs[case])
                            / sum(x["requests"] for x in runs[case]), 1)
                        pair[case]["read_records_per_1k"] = round(sum(
                            x["read_records_per_1k"] * x["requests"] for x in runs[case])
                            / sum(x["requests"] for x in runs[case]), 2)
                    results.append(pair[case])
                pair["followed"]["ratio_ops_s"] = round(
                    pair["followed"]["ops_s"] / pair["alone"]["ops_s"], 3)
                pair["followed"]["ratio_cpu_us_per_op"] = round(
                    pair["followed"]["server_cpu_us_per_op"]
                    / pair["alone"]["server_cpu_us_per_op"], 3)
        finally:
            if node is not None:
                node.stop()
    print("\nEncrypt with a follower of /_kms/audit (kms audit tail --follow) beside without")
    print(f"{'case':16}{'ops/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'CPU us/op':>10}{'ratio':>7}"
          f"{'CPU ratio':>10}{'catch-up s':>11}{'follower CPU us/op':>19}"
          f"{'read records/1k':>16}")
    for r in results:
        ratio = (f"{r['ratio_ops_s']:7.2f}{r['ratio_cpu_us_per_op']:10.2f}"
                 if "ratio_ops_s" in r else " " * 17)
        lag = (f"{r['follower_catch_up_s']:11.2f}{r['follower_cpu_us_per_op']:19.0f}"
               f"{r['read_records_per_1k']:16.1f}" if "follower_catch_up_s" in r else "")
        print(f"{r['case'] + ' c=' + str(r['concurrency']):16}{r['ops_s']:8.0f}"
              f"{r['p50_ms']:8.2f}{r['p99_ms']:8.2f}{r['server_cpu_us_per_op']:10.0f}{ratio}"
              f"{lag}")
    out_path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()},
                                    "versions": versions(), "source": source_fingerprint(),
                                    "results": results}, indent=2))
    print(f"\nwrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
