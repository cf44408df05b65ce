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
bounded in time and count; every node it starts is stopped. See README.md. The requests
(endpoint, keys, prober, driver) are in replication_load.py, the measuring (cursor pollers,
row matching, percentiles, CPU) in replication_lag.py; this file runs the phases and reports.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]

from bench_crypto import rss_mib, source_fingerprint  # noqa: E402
from replication_lag import (  # noqa: E402
    CpuWindow,
    Poller,
    attach_rows,
    drain,
    last_shared,
    summary_ms,
)
from replication_load import (  # noqa: E402
    KIND_TARGETS,
    MAX_ON_DEMAND,
    SHARED_KINDS,
    Driver,
    Endpoint,
    Sent,
    make_keys,
    probe,
)

from ops.cluster import Cluster  # noqa: E402

RESULTS = HERE / "results"


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
