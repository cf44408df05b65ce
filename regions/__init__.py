"""Multi-region: the topology of region nodes, hosting regions in one process (--dev),
forwarding requests signed for a peer's region. Rules: regions -> kms, never the reverse."""
