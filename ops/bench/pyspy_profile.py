"""py-spy profiles of a server under load, summarised by component (bench_crypto --profile).

A sample is charged to the first component that matches its stack from the leaf up, so
the shares add up to the main thread's CPU; nothing here starts or stops a server.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any


# -- profile ----------------------------------------------------------------------------------
def _func(frame: str) -> str:
    """'name (path/to/file.py:123)' -> 'name (file.py)' relative to site-packages/lib."""
    m = re.match(r"^(.*) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    name, path = m.groups()
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


COMPONENTS = [  # (label, path fragments); a sample goes to the first match from the leaf up
    ("crypto: KDF + AES-GCM", ("kms/crypto/", "hmac.py", "cryptography/")),
    ("request log line (structlog)", ("structlog/",)),
    ("JSON encode/decode", ("json/",)),
    ("uuid4", ("uuid.py",)),
    ("audit event encode (events.py)", ("kms/domain/events.py", "msgpack/")),
    ("event log: append/commit + aiosqlite", ("kms/store/log.py", "kms/store/chain.py",
                                              "kms/store/checkpointing.py", "aiosqlite/",
                                              "sqlite3/")),
    ("request validation model", ("kms/api/validation.py", "botocore/")),
    ("service: dispatch, lookup, authz", ("kms/service/", "kms/domain/", "kms/store/")),
    ("handler body (kms/api/app.py | ceiling.py)", ("kms/api/", "ceiling.py")),
    ("aiohttp HTTP layer", ("aiohttp/", "multidict/", "yarl/")),
    ("asyncio loop + socket I/O", ("asyncio/", "selectors.py")),
]


def component(frames: list[str]) -> str:
    for frame in reversed(frames):
        where = frame.rsplit("(", 1)[-1]
        for label, needles in COMPONENTS:
            if any(nd in where for nd in needles):
                return label
    return "other"


def summarise_profile(raw: Path, rate: int, seconds: float) -> dict[str, Any]:
    self_main: Counter[str] = Counter()
    self_other: Counter[str] = Counter()
    incl_main: Counter[str] = Counter()
    by_component: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    main_total = other_total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        thread, *frames = stack.split(";")
        leaf = _func(frames[-1]) if frames else thread
        if "MainThread" in thread:
            by_thread["main (event loop)"] += count
            main_total += count
            self_main[leaf] += count
            by_component[component(frames)] += count
            for f in {_func(f) for f in frames}:
                incl_main[f] += count
        else:
            by_thread["other (aiosqlite writer, executor)"] += count
            other_total += count
            self_other[leaf] += count
    expected = rate * seconds

    def share(c: Counter[str], total: int, n: int) -> list[tuple[str, int, float]]:
        return [(f, k, round(100 * k / max(total, 1), 1)) for f, k in c.most_common(n)]

    return {
        "samples": main_total + other_total, "rate_hz": rate, "seconds": seconds,
        "busy_pct_by_thread": {k: round(100 * v / expected, 1) for k, v in by_thread.items()},
        "main_by_component": share(by_component, main_total, 20),
        "top_self_main": share(self_main, main_total, 25),
        "top_inclusive_main": share(incl_main, main_total, 60),
        "top_self_other_threads": share(self_other, other_total, 10),
    }


def profile_server(pid: int, load_for: Callable[[float], dict[str, Any]], seconds: int,
                   out_raw: Path, rate: int = 200) -> dict[str, Any] | None:
    """py-spy process ``pid`` for ``seconds`` in the middle of a load run (``load_for(s)``
    runs s seconds of load and returns its figures, ``measured``'s); that run's CPU per op
    turns the main thread's component shares into microseconds per request."""
    if shutil.which("py-spy") is None:
        print("py-spy not found; skipping the profile (pip install py-spy)")
        return None
    load: dict[str, Any] = {}
    loader = threading.Thread(target=lambda: load.update(load_for(seconds + 2)))
    loader.start()
    try:
        time.sleep(1)
        spy = subprocess.run(["py-spy", "record", "-p", str(pid), "-d", str(seconds),
                              "-r", str(rate), "--nonblocking", "--threads", "-f", "raw",
                              "-o", str(out_raw)], capture_output=True, text=True)
    finally:
        loader.join()
    if spy.returncode != 0 or not out_raw.exists():
        print(f"py-spy failed ({spy.returncode}): {spy.stderr.strip()[-400:]}")
        return None
    prof = summarise_profile(out_raw, rate, seconds)
    main_us = 1e4 * load["server_cpu_main_pct"] / max(load["ops_s"], 1e-9)
    prof.update(ops_s=round(load["ops_s"]), main_cpu_us_per_op=round(main_us, 1),
                raw=out_raw.name,
                main_us_per_op_by_component={f: round(pct * main_us / 100, 1)
                                             for f, _, pct in prof["main_by_component"]})
    return prof
