"""How bench_replication.py measures: replicas' cursors polled fast, the primary's shared rows
matched to the requests that wrote them, percentiles, and CPU per process over a phase.

Rules: read-only against the nodes (``/_kms/health`` and the ``--dev`` replication feed);
a lag is from the primary's answer to the first poll that saw the replica past the row.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import os
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from bench_crypto import machine_ticks
from replication_load import SHARED_KINDS, Endpoint, Sent

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- measurement helpers ------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of ``values``, or None when there are none."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def summary_ms(values_s: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values_s]
    out: dict[str, Any] = {"n": len(ms)}
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        v = pct(ms, q)
        out[f"{name}_ms"] = None if v is None else round(v, 2)
    out["max_ms"] = round(max(ms), 2) if ms else None
    out["mean_ms"] = round(statistics.fmean(ms), 2) if ms else None
    return out


def proc_ticks(pid: int) -> int:
    """utime + stime of a process, all its threads, in clock ticks."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except (OSError, IndexError):
        return 0


class CpuWindow:
    """CPU % of the nodes, of this process, and of everything else (foreign) over a phase."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.t0, self.m0 = time.monotonic(), machine_ticks()[0]
        self.n0 = {r: proc_ticks(p) for r, p in pids.items()}
        t = os.times()
        self.b0 = t.user + t.system

    def close(self) -> dict[str, Any]:
        secs = time.monotonic() - self.t0
        busy = 100 * (machine_ticks()[0] - self.m0) / CLK_TCK / secs
        nodes = {r: 100 * (proc_ticks(p) - self.n0[r]) / CLK_TCK / secs
                 for r, p in self.pids.items()}
        t = os.times()
        bench = 100 * (t.user + t.system - self.b0) / secs
        return {"seconds": round(secs, 2), "machine_busy_pct": round(busy, 1),
                "node_cpu_pct": {r: round(v, 1) for r, v in nodes.items()},
                "bench_cpu_pct": round(bench, 1),
                "foreign_cpu_pct": round(max(0.0, busy - sum(nodes.values()) - bench), 1)}


@dataclass
class Poller:
    """Reads one replica's cursor for the primary as fast as ``interval`` allows."""

    endpoint: Endpoint
    origin: str
    interval: float
    samples: list[tuple[float, int]] = field(default_factory=list)  # (mid time, cursor)
    errors: int = 0
    _cursors: list[int] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            t0 = time.time()
            try:
                doc = await self.endpoint.health()
                cursor = int(doc["peers"][self.origin]["cursor"])
                self.samples.append(((t0 + time.time()) / 2, cursor))
            except (aiohttp.ClientError, TimeoutError, KeyError, ValueError, TypeError):
                self.errors += 1
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except TimeoutError:
                pass

    def passed(self, seq: int) -> float | None:
        """When the cursor was first seen at or past ``seq`` (cursors only grow)."""
        i = bisect.bisect_left([c for _, c in self.samples], seq) if self._cursors is None \
            else bisect.bisect_left(self._cursors, seq)
        return self.samples[i][0] if i < len(self.samples) else None

    def freeze(self) -> None:
        self._cursors = [c for _, c in self.samples]


# -- the cluster and its keys -------------------------------------------------------------------
async def shared_rows(primary: Endpoint, after: int, until: int) -> list[dict[str, Any]]:
    """The primary's own shared rows with after < seq <= until, from its replication feed
    (open to loopback callers in --dev), without their bodies."""
    rows: list[dict[str, Any]] = []
    cursor = after
    while cursor < until:
        async with primary.session.get(
                primary.url + "/_kms/replication",
                params={"origin": primary.region, "after": str(cursor), "limit": "1000",
                        "wait": "0"}, timeout=aiohttp.ClientTimeout(total=30)) as r:
            doc = await r.json(content_type=None)
        page = [{k: row[k] for k in ("origin_seq", "stream", "type_name", "at_ms")}
                for row in doc["rows"]]
        rows += [p for p in page if p["origin_seq"] <= until]
        nxt = int(doc["next_cursor"])
        if nxt <= cursor:
            break
        cursor = nxt
    return rows


def attach_rows(sent: list[Sent], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Give each successful shared request the seq of its row(s): rows on ``mrk/<key>``
    whose ``at_ms`` falls in the request's send..answer window (at most one request per
    key is in flight; 2 ms slack for at_ms's resolution). A request with several rows gets
    the last. Returns counts of matched and unmatched rows and requests."""
    by_key: dict[str, list[Sent]] = defaultdict(list)
    for s in sent:
        if s.kind in SHARED_KINDS and s.error is None:
            by_key[s.key_id].append(s)
    for lst in by_key.values():
        lst.sort(key=lambda s: s.t_send)
    matched = unmatched = 0
    types: Counter[str] = Counter()
    for row in rows:
        key = str(row["stream"]).removeprefix("mrk/")
        at = row["at_ms"] / 1000  # a whole millisecond: the event's time is in [at, at + 1 ms)
        near = [s for s in by_key.get(key, ())
                if s.t_send - 0.0015 <= at <= s.t_answer + 0.0005]
        if not near:
            unmatched += 1
            continue
        hit = min(near, key=lambda s: max(0.0, s.t_send - 0.001 - at, at - s.t_answer))
        matched += 1
        types[f"{hit.kind} {row['type_name']}"] += 1
        hit.seq = max(hit.seq or 0, int(row["origin_seq"]))
    requests = sum(len(v) for v in by_key.values())
    with_row = sum(1 for v in by_key.values() for s in v if s.seq is not None)
    return {"rows": len(rows), "rows_matched": matched, "rows_unmatched": unmatched,
            "shared_requests": requests, "shared_requests_without_row": requests - with_row,
            "row_types_by_kind": dict(types)}



async def drain(primary: Endpoint, replicas: list[Endpoint], seq: int, timeout: float = 30
                ) -> None:
    """Wait until every replica's cursor for the primary reached ``seq`` (a shared row's:
    audit facts after the last shared row wake no follower)."""
    deadline = time.monotonic() + timeout
    for rep in replicas:
        while True:
            cursor = int((await rep.health())["peers"][primary.region]["cursor"])
            if cursor >= seq:
                break
            if time.monotonic() > deadline:
                print(f"  {rep.region}: cursor {cursor} < {seq} after {timeout:.0f} s")
                break
            await asyncio.sleep(0.05)


async def last_shared(primary: Endpoint, after: int) -> tuple[int, list[dict[str, Any]]]:
    """The primary's log seq now, and its shared rows after ``after``."""
    last = int((await primary.health())["log_seq"])
    return last, await shared_rows(primary, after, last)

