"""Replication lag between region nodes while the primary takes lifecycle events.

Starts the local cluster from the repository's compose.yaml (``ops.cluster.Cluster``, a
fresh temp state dir, always stopped at the end), creates multi-region keys in the first
region (us-east-1) and replicates each to the other regions, then runs two phases:

* **idle** (the baseline): no load; a prober makes one shared change at a time
  (EnableKeyRotation/DisableKeyRotation on a probe key) and waits until every replica
  shows it.
* **loaded**: the same prober, while an open-loop driver (asyncio + aiohttp, one request
  per scheduled instant, whatever the answers do) sends ``--rate`` lifecycle events per
  second to the primary: shared ones (EnableKeyRotation/DisableKeyRotation toggles and
  RotateKeyOnDemand, both written on ``mrk/<key id>`` and replicated) and regional ones
  (TagResource, UpdateKeyDescription).

Two lags, per replica region:

* **cursor lag**, for every shared change: from the primary's answer until the replica's
  durable cursor for the primary (``/_kms/health`` ``peers[<primary>].cursor``, read by a
  fast poller) passed the change's own row. The row is found afterwards in the primary's
  ``/_kms/replication`` feed (stream ``mrk/<key id>``, ``at_ms`` inside the request's
  send..answer window; the driver keeps at most one request per key in flight).
* **visible lag**, for the prober's changes: from the primary's answer until the
  replica's GetKeyRotationStatus shows the new setting (what a user sees).

    python ops/bench/bench_replication.py [--rate 1000] [--duration 20] [--regions 3]
        [--keys N] [--mix toggle=40,rotate=10,tag=25,describe=25] [--idle-probes 30]
        [--poll-ms 5] [--out FILE]

Prints a table and writes ops/bench/results/replication-<date>.json. Loopback only;
bounded in time and count; every node it starts is stopped. See README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import datetime as dt
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]

from bench_crypto import machine_ticks, rss_mib, source_fingerprint  # noqa: E402

from ops.cluster import Cluster  # noqa: E402

RESULTS = HERE / "results"
CTYPE = "application/x-amz-json-1.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_ON_DEMAND = 25  # RotateKeyOnDemand's per-key quota
SHARED_KINDS = ("toggle", "rotate")
KIND_TARGETS = {"toggle": "EnableKeyRotation/DisableKeyRotation", "rotate": "RotateKeyOnDemand",
                "tag": "TagResource", "describe": "UpdateKeyDescription"}


def auth(region: str) -> str:
    """A fixed Authorization header scoped to ``region``: --dev reads only the access key
    and the scope, it verifies no signature (as bench_crypto does)."""
    return (f"AWS4-HMAC-SHA256 Credential=AKIABENCHMARK0000000/20240101/{region}/kms/"
            "aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, "
            "Signature=" + "0" * 64)


class KmsError(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(f"{status} {kind}: {message}")
        self.status, self.kind = status, kind


class Endpoint:
    """One region's node, called with raw AWS JSON requests."""

    def __init__(self, session: aiohttp.ClientSession, region: str, url: str) -> None:
        self.session, self.region, self.url = session, region, url
        self.headers = {"Content-Type": CTYPE, "Authorization": auth(region),
                        "X-Amz-Date": "20240101T000000Z", "User-Agent": "kms-bench/1 replication"}

    async def call(self, target: str, body: dict[str, Any], timeout: float = 30.0
                   ) -> dict[str, Any]:
        async with self.session.post(
                self.url + "/", data=json.dumps(body),
                headers={**self.headers, "X-Amz-Target": f"TrentService.{target}"},
                timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            text = await r.text()
            doc: dict[str, Any] = json.loads(text) if text else {}
            if r.status != 200:
                kind = str(doc.get("__type", "?")).rsplit("#", 1)[-1]
                raise KmsError(r.status, kind, str(doc.get("message", doc.get("Message", ""))))
            return doc

    async def health(self) -> dict[str, Any]:
        async with self.session.get(self.url + "/_kms/health",
                                    timeout=aiohttp.ClientTimeout(total=10)) as r:
            doc: dict[str, Any] = await r.json(content_type=None)
            return doc


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
class Sent:
    """One request the driver or the prober made."""

    kind: str
    key_id: str
    t_send: float
    t_answer: float = 0.0
    error: str | None = None
    seq: int | None = None  # the primary's row for it (shared kinds), once found


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


async def make_keys(primary: Endpoint, replicas: list[Endpoint], n: int, description: str
                    ) -> list[str]:
    """``n`` multi-region keys in the primary's region, each replicated to every replica
    region and Enabled there."""
    sem = asyncio.Semaphore(8)

    async def one() -> str:
        async with sem:
            meta = (await primary.call("CreateKey", {"MultiRegion": True,
                                                     "Description": description}))["KeyMetadata"]
            key_id = str(meta["KeyId"])
            for rep in replicas:
                await primary.call("ReplicateKey", {"KeyId": key_id,
                                                    "ReplicaRegion": rep.region})
            return key_id

    keys = list(await asyncio.gather(*(one() for _ in range(n))))
    deadline = time.monotonic() + 60 + n * 0.2
    for rep in replicas:
        waiting = set(keys)
        while waiting:
            for key_id in list(waiting):
                try:
                    meta = (await rep.call("DescribeKey", {"KeyId": key_id}))["KeyMetadata"]
                except KmsError as exc:
                    if exc.kind != "NotFoundException":
                        raise
                    continue
                if meta["KeyState"] == "Enabled":
                    waiting.discard(key_id)
            if waiting:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(waiting)} replicas in {rep.region} not Enabled "
                                       f"after {deadline:.0f} s")
                await asyncio.sleep(0.1)
    return keys


# -- the prober ---------------------------------------------------------------------------------
async def probe(primary: Endpoint, replicas: list[Endpoint], key_id: str, state: list[bool],
                stop: asyncio.Event, count: int | None, poll: float, gap: float,
                sent: list[Sent], visible: dict[str, list[float]], timeouts: Counter[str]
                ) -> None:
    """One shared change at a time on ``key_id`` (rotation on/off); after each, poll every
    replica's GetKeyRotationStatus until it shows the change (at most 10 s)."""
    done = 0
    while not stop.is_set() and (count is None or done < count):
        want = not state[0]
        s = Sent("toggle", key_id, time.time())
        try:
            await primary.call("EnableKeyRotation" if want else "DisableKeyRotation",
                               {"KeyId": key_id})
        except (KmsError, aiohttp.ClientError, TimeoutError) as exc:
            s.t_answer, s.error = time.time(), type(exc).__name__ + ": " + str(exc)[:120]
            sent.append(s)
            await asyncio.sleep(gap)
            continue
        s.t_answer = time.time()
        state[0] = want
        sent.append(s)

        async def seen(rep: Endpoint, s: Sent = s, want: bool = want) -> None:
            deadline = s.t_answer + 10
            while time.time() < deadline:
                t0 = time.time()
                try:
                    doc = await rep.call("GetKeyRotationStatus", {"KeyId": key_id})
                    if bool(doc.get("KeyRotationEnabled")) == want:
                        t = (t0 + time.time()) / 2
                        visible[rep.region].append(max(0.0, t - s.t_answer))
                        return
                except (KmsError, aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(poll)
            timeouts[rep.region] += 1

        await asyncio.gather(*(seen(r) for r in replicas))
        done += 1
        await asyncio.sleep(gap)


# -- the load -----------------------------------------------------------------------------------
@dataclass
class Driver:
    """Open loop: request i is sent at t0 + i/rate, whatever the earlier answers did
    (bounded by ``max_inflight``; a slot missed for that is counted, not sent later)."""

    primary: Endpoint
    keys: list[str]
    rate: float
    mix: dict[str, float]
    max_inflight: int
    seed: int = 1
    sent: list[Sent] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    substituted: int = 0
    inflight: int = 0
    max_seen_inflight: int = 0

    def __post_init__(self) -> None:
        self.free = deque(self.keys)
        random.Random(self.seed).shuffle(self.free)
        self.rng = random.Random(self.seed)
        self.rotation = dict.fromkeys(self.keys, False)
        self.on_demand = dict.fromkeys(self.keys, 0)
        self.tags = Counter[str]()

    def _pick_key(self, kind: str) -> str | None:
        """The free key that has waited longest (so one key's requests are far apart),
        skipping keys whose RotateKeyOnDemand quota is used up for ``rotate``."""
        for _ in range(min(len(self.free), 16)):
            key = self.free.popleft()
            if kind != "rotate" or self.on_demand[key] < MAX_ON_DEMAND:
                return key
            self.free.append(key)
        return None

    async def _one(self, kind: str, key: str) -> None:
        s = Sent(kind, key, time.time())
        try:
            if kind == "toggle":
                want = not self.rotation[key]
                await self.primary.call("EnableKeyRotation" if want else "DisableKeyRotation",
                                        {"KeyId": key})
                self.rotation[key] = want
            elif kind == "rotate":
                self.on_demand[key] += 1
                await self.primary.call("RotateKeyOnDemand", {"KeyId": key})
            elif kind == "tag":
                self.tags[key] += 1
                await self.primary.call("TagResource", {"KeyId": key, "Tags": [
                    {"TagKey": f"bench{self.tags[key] % 8}", "TagValue": str(self.tags[key])}]})
            else:
                await self.primary.call("UpdateKeyDescription",
                                        {"KeyId": key, "Description": f"bench {s.t_send:.6f}"})
        except KmsError as exc:
            s.error = f"{exc.status} {exc.kind}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            s.error = type(exc).__name__
        finally:
            s.t_answer = time.time()
            self.sent.append(s)
            self.free.append(key)
            self.inflight -= 1

    async def run(self, seconds: float) -> float:
        kinds, weights = list(self.mix), list(self.mix.values())
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.monotonic()
        total = int(self.rate * seconds)
        for i in range(total):
            due = t0 + i / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            kind = self.rng.choices(kinds, weights)[0]
            if self.inflight >= self.max_inflight:
                self.skipped["inflight cap"] += 1
                continue
            key = self._pick_key(kind)
            if key is None and kind == "rotate":  # every free key used its quota
                kind, self.substituted = "toggle", self.substituted + 1
                key = self._pick_key(kind)
            if key is None:
                self.skipped["no free key"] += 1
                continue
            self.inflight += 1
            self.max_seen_inflight = max(self.max_seen_inflight, self.inflight)
            task = asyncio.create_task(self._one(kind, key))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elapsed = time.monotonic() - t0
        if tasks:
            await asyncio.wait(tasks, timeout=60)
        return max(elapsed, seconds)


# -- phases -------------------------------------------------------------------------------------
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


async def phase(name: str, primary: Endpoint, replicas: list[Endpoint], cluster: Cluster,
                probe_key: str, probe_state: list[bool], args: argparse.Namespace,
                driver: Driver | None) -> dict[str, Any]:
    """One phase: pollers and the prober (and the driver, when loaded); then each shared
    change's cursor lag per replica, the prober's visible lag, rates and CPU."""
    seq0 = int((await primary.health())["log_seq"])
    stop = asyncio.Event()
    pollers = {r.region: Poller(r, primary.region, args.poll_ms / 1000) for r in replicas}
    poll_tasks = [asyncio.create_task(p.run(stop)) for p in pollers.values()]
    probe_sent: list[Sent] = []
    visible: dict[str, list[float]] = {r.region: [] for r in replicas}
    timeouts: Counter[str] = Counter()
    probe_stop = asyncio.Event()
    cpu = CpuWindow({r: cluster.pids[r] for r in cluster.urls})
    prober = asyncio.create_task(probe(
        primary, replicas, probe_key, probe_state, probe_stop,
        None if driver else args.idle_probes, args.poll_ms / 1000, args.probe_gap_ms / 1000,
        probe_sent, visible, timeouts))
    seconds: float
    try:
        if driver is not None:
            seconds = await driver.run(args.duration)
            probe_stop.set()
            await asyncio.wait_for(prober, 30)
        else:
            t0 = time.monotonic()
            await asyncio.wait_for(prober, args.idle_probes * 12 + 10)
            seconds = time.monotonic() - t0
        cpu_doc = cpu.close()
        last, rows = await last_shared(primary, seq0)
        await drain(primary, replicas, max((r["origin_seq"] for r in rows), default=seq0))
        await asyncio.sleep(3 * args.poll_ms / 1000 + 0.05)  # a poll after the drain
    finally:
        probe_stop.set()
        stop.set()
        await asyncio.gather(*poll_tasks, return_exceptions=True)
        if not prober.done():
            prober.cancel()
    sent = (driver.sent if driver else []) + probe_sent
    matching = attach_rows(sent, rows)
    cursor_lag: dict[str, Any] = {}
    for region, p in pollers.items():
        lags, missing = [], 0
        p.freeze()
        for s in sent:
            if s.seq is None:
                continue
            t = p.passed(s.seq)
            if t is None:
                missing += 1
            else:
                lags.append(max(0.0, t - s.t_answer))
        cursor_lag[region] = {**summary_ms(lags), "not_seen": missing,
                              "health_polls": len(p.samples), "poll_errors": p.errors,
                              "poll_hz": round(len(p.samples) / max(seconds, 1e-9), 1)}
    kinds: dict[str, Any] = {}
    for kind in KIND_TARGETS:
        mine = [s for s in (driver.sent if driver else []) if s.kind == kind]
        ok = [s for s in mine if s.error is None]
        if not mine:
            continue
        kinds[kind] = {"operation": KIND_TARGETS[kind], "sent": len(mine), "ok": len(ok),
                       "ok_per_s": round(len(ok) / seconds, 1),
                       "errors": dict(Counter(s.error for s in mine if s.error)),
                       "latency": summary_ms([s.t_answer - s.t_send for s in ok])}
    doc: dict[str, Any] = {
        "phase": name, "seconds": round(seconds, 2), "primary_log_rows": last - seq0,
        "cursor_lag": cursor_lag, "row_matching": matching,
        "visible_lag": {r: {**summary_ms(v), "timeouts": timeouts[r]} for r, v in visible.items()},
        "probe": {"changes": sum(1 for s in probe_sent if s.error is None),
                  "errors": dict(Counter(s.error for s in probe_sent if s.error))},
        "cpu": cpu_doc}
    if driver is not None:
        ok = sum(k["ok"] for k in kinds.values())
        doc["load"] = {
            "target_per_s": args.rate, "kinds": kinds,
            "sent": len(driver.sent), "ok": ok, "ok_per_s": round(ok / seconds, 1),
            "shared_ok_per_s": round(sum(kinds[k]["ok"] for k in SHARED_KINDS if k in kinds)
                                     / seconds, 1),
            "skipped": dict(driver.skipped), "rotate_substituted_by_toggle": driver.substituted,
            "max_inflight": driver.max_seen_inflight}
    return doc


def fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 2)


async def run(args: argparse.Namespace, cluster: Cluster) -> dict[str, Any]:
    regions = list(cluster.urls)[:args.regions]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        eps = [Endpoint(session, r, cluster.urls[r]) for r in regions]
        primary, replicas = eps[0], eps[1:]
        if not replicas:
            raise SystemExit("--regions must be at least 2")
        t = time.monotonic()
        keys = await make_keys(primary, replicas, args.keys, "bench load")
        probe_key = (await make_keys(primary, replicas, 1, "bench probe"))[0]
        setup_s = time.monotonic() - t
        print(f"{len(keys)} load keys + 1 probe key in {primary.region}, replicated to "
              f"{', '.join(r.region for r in replicas)} and Enabled, in {setup_s:.1f} s",
              flush=True)
        _, rows = await last_shared(primary, 0)
        await drain(primary, replicas, max((r["origin_seq"] for r in rows), default=0))
        rss_before = {r: round(rss_mib(cluster.pids[r]), 1) for r in cluster.urls}
        state = [False]
        print(f"idle: {args.idle_probes} probe changes, one at a time ...", flush=True)
        idle = await phase("idle", primary, replicas, cluster, probe_key, state, args, None)
        print(f"loaded: {args.rate:g} events/s for {args.duration:g} s, mix {args.mix} ...",
              flush=True)
        driver = Driver(primary, keys, args.rate, parse_mix(args.mix), args.max_inflight)
        loaded = await phase("loaded", primary, replicas, cluster, probe_key, state, args,
                             driver)
        rss_after = {r: round(rss_mib(cluster.pids[r]), 1) for r in cluster.urls}
    comparison = {}
    for rep in replicas:
        r = rep.region
        li, ll = idle["cursor_lag"][r], loaded["cursor_lag"][r]
        vi, vl = idle["visible_lag"][r], loaded["visible_lag"][r]
        comparison[r] = {q: {"cursor": ratio(ll[f"{q}_ms"], li[f"{q}_ms"]),
                             "visible": ratio(vl[f"{q}_ms"], vi[f"{q}_ms"])}
                         for q in ("p50", "p99", "max")}
    return {"setup_seconds": round(setup_s, 1), "keys": len(keys), "primary": primary.region,
            "replicas": [r.region for r in replicas], "idle": idle, "loaded": loaded,
            "loaded_over_idle": comparison,
            "node_rss_mib": {"before": rss_before, "after": rss_after}}


def report(doc: dict[str, Any]) -> None:
    idle, loaded = doc["idle"], doc["loaded"]
    load = loaded["load"]
    print(f"\nload on {doc['primary']}: target {load['target_per_s']:g}/s, achieved "
          f"{load['ok_per_s']:,.0f}/s ok ({load['shared_ok_per_s']:,.0f}/s shared), "
          f"{load['sent']} sent, max {load['max_inflight']} in flight, skipped "
          f"{load['skipped'] or 0}, RotateKeyOnDemand quota substitutions "
          f"{load['rotate_substituted_by_toggle']}")
    print(f"  {'kind':38}{'sent':>7}{'ok':>7}{'ok/s':>8}{'p50 ms':>8}{'p99 ms':>8}  errors")
    for k in load["kinds"].values():
        print(f"  {k['operation']:38}{k['sent']:7}{k['ok']:7}{k['ok_per_s']:8.0f}"
              f"{fmt(k['latency']['p50_ms']):>8}{fmt(k['latency']['p99_ms']):>8}  "
              f"{k['errors'] or '-'}")
    print("\nreplication lag, ms from the primary's answer (idle = one change at a time, "
          "load off)")
    print(f"  {'replica':16}{'lag':9}{'phase':8}{'n':>7}{'p50':>9}{'p99':>9}{'max':>9}"
          f"{'loaded/idle p50 p99':>22}")
    for r in doc["replicas"]:
        for lag in ("cursor", "visible"):
            for ph in (idle, loaded):
                s = ph[f"{lag}_lag"][r]
                c = doc["loaded_over_idle"][r]
                extra = (f"{fmt(c['p50'][lag], 2):>11}{fmt(c['p99'][lag], 2):>11}"
                         if ph is loaded else "")
                print(f"  {r:16}{lag:9}{ph['phase']:8}{s['n']:7}{fmt(s['p50_ms']):>9}"
                      f"{fmt(s['p99_ms']):>9}{fmt(s['max_ms']):>9}{extra}")
    for ph in (idle, loaded):
        m = ph["row_matching"]
        lags = ph["cursor_lag"]
        print(f"  {ph['phase']}: {m['rows']} shared rows, {m['rows_unmatched']} unmatched, "
              f"{m['shared_requests_without_row']} of {m['shared_requests']} shared requests "
              f"without a row; cursor polls/s " + ", ".join(
                  f"{r} {v['poll_hz']:.0f}" for r, v in lags.items())
              + "; not seen " + ", ".join(f"{r} {v['not_seen']}" for r, v in lags.items()))
    print("\nCPU % (of 200 %):")
    for ph in (idle, loaded):
        c = ph["cpu"]
        print(f"  {ph['phase']:7} nodes " + ", ".join(f"{r} {v:.0f}" for r, v in
                                                      c["node_cpu_pct"].items())
              + f"; bench {c['bench_cpu_pct']:.0f}; foreign CPU {c['foreign_cpu_pct']:.0f}%")
    rss = doc["node_rss_mib"]
    print("\nnode RSS MiB before -> after: " + ", ".join(
        f"{r} {rss['before'][r]:.1f} -> {rss['after'][r]:.1f}" for r in rss["before"]))


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in KIND_TARGETS:
            raise SystemExit(f"--mix: unknown kind {name!r} (one of {', '.join(KIND_TARGETS)})")
        mix[name.strip()] = float(weight)
    return mix


def main() -> int:
    p = argparse.ArgumentParser(description="replication lag under lifecycle load")
    p.add_argument("--rate", type=float, default=1000, help="events per second (default 1000)")
    p.add_argument("--duration", type=float, default=20, help="seconds of load (default 20)")
    p.add_argument("--regions", type=int, default=3,
                   help="regions used: the primary and N-1 replica regions (default 3)")
    p.add_argument("--keys", type=int, default=0,
                   help="load keys (default: enough for RotateKeyOnDemand's quota, >= 256)")
    p.add_argument("--mix", default="toggle=40,rotate=10,tag=25,describe=25",
                   help="weights of toggle (Enable/DisableKeyRotation), rotate "
                        "(RotateKeyOnDemand), tag (TagResource), describe (UpdateKeyDescription)")
    p.add_argument("--idle-probes", type=int, default=30, help="changes in the idle baseline")
    p.add_argument("--probe-gap-ms", type=float, default=100,
                   help="pause between the prober's changes (default 100)")
    p.add_argument("--poll-ms", type=float, default=5,
                   help="pause between a poller's reads (cursor and visible; default 5)")
    p.add_argument("--max-inflight", type=int, default=512)
    p.add_argument("--keep", action="store_true", help="keep the cluster's data dir")
    p.add_argument("--out", type=Path, help="result JSON (default results/replication-<date>.json)")
    a = p.parse_args()
    if a.rate <= 0 or a.duration <= 0 or a.duration > 600 or a.rate > 10000:
        raise SystemExit("--rate in (0, 10000], --duration in (0, 600]")
    mix = parse_mix(a.mix)
    rotate_share = mix.get("rotate", 0) / sum(mix.values())
    if a.keys <= 0:  # the quota, with room for keys being busy when picked
        a.keys = max(256, math.ceil(a.rate * a.duration * rotate_share / (MAX_ON_DEMAND - 5)))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = a.out or RESULTS / f"replication-{stamp}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="kms-bench-repl-"))

    def terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # so that `finally` stops the cluster

    signal.signal(signal.SIGTERM, terminate)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    meta: dict[str, Any] = {"started": dt.datetime.now().isoformat(timespec="seconds"),
                            "args": {k: str(v) for k, v in vars(a).items()},
                            "git_head": commit, "source": source_fingerprint(),
                            "python": platform.python_version(), "cpus": os.cpu_count(),
                            "aiohttp": aiohttp.__version__}
    print(f"kms/ sources {meta['source']['kms_sha256']} (HEAD {commit}); cluster state {state}",
          flush=True)
    cluster = None
    try:
        cluster = Cluster.up(ROOT / "compose.yaml", state)
        print("  ".join(f"{r} {u} pid {cluster.pids[r]}" for r, u in cluster.urls.items()),
              flush=True)
        doc = asyncio.run(run(a, cluster))
    finally:
        if cluster is not None:
            cluster.down(quiet=True)
        if not a.keep:
            shutil.rmtree(state, ignore_errors=True)
    doc = {**meta, **doc}
    report(doc)
    out_path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
