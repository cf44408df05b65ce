"""``kms audit prune --older-than 90d``: drop old, exported audit facts from the live log.

Rules: with ``--endpoint URL`` the running node does it (``POST /_kms/audit/prune``,
kms.audit.retention), through its own writer, signed with SigV4 by a principal in the
config's ``admins`` (unsigned to a ``--dev`` node); a refusal is one line and exit status 1.
With ``--data-dir DIR`` the node must be stopped (the data dir's lock is taken, as ``kms
serve`` takes it; a running node's dir is refused, exit 2, pointing at ``--endpoint``); the
live log must verify first. Either way only rows of the ``audit`` stream go, and only those
that ``audit-exported.json`` (written by ``kms audit export``) says are exported, that are
older than the age by the node's clock (the ``--dev`` clock's offset included), and that lie
before the cut: the last signed checkpoint the export covers (the row it signs stays). The
deletion and the marks are one transaction (kms.store.pruning): below the cut the chain has
gaps, and start-up and ``verify`` trust it from the cut's signed head on.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import sys
from pathlib import Path
from typing import Any

from kms import admin_client
from kms.admin_client import NodeRefused
from kms.audit import livelog
from kms.audit.export import EXPORTED_FILE
from kms.clock import Clock, PersistentClock
from kms.datadir import DataDirInUse, take_lock
from kms.store import pruning

DEV_CLOCK_FILE = "dev-clock.json"
PRUNE_PATH = "/_kms/audit/prune"  # the running node's endpoint (kms.audit.retention)
TIMEOUT = 600.0  # a bound for a stuck node; a large prune holds the node's writer a while
_AGE = re.compile(r"([0-9]+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint", metavar="URL",
                       help="a running node: it prunes its own log (admins only)")
    where.add_argument("--data-dir", type=Path, help="a stopped node's data dir")
    p.add_argument("--older-than", required=True, type=age_seconds,
                   help="age of the audit facts to drop, e.g. 90d, 12h, 30m")
    p.add_argument("--region", help="with --endpoint: a region the node hosts (default: its own)")
    p.add_argument("--access-key", help="with --endpoint: sign with this access key id")
    p.add_argument("--secret-key", help="... and this secret access key")
    p.add_argument("--json", action="store_true", help="with --endpoint: print the JSON answer")


def age_seconds(text: str) -> int:
    m = _AGE.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age like 90d, 12h, 30m or 45s")
    return int(m.group(1)) * _UNIT_S[m.group(2)]


class PruneRefused(Exception):
    """Nothing was dropped; the message says why."""


def run(args: argparse.Namespace) -> int:
    if args.endpoint:
        try:
            answer = prune_online(args)
        except NodeRefused as exc:
            print(f"kms audit prune: error: {exc}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(answer, indent=2))
        elif answer["PrunedFacts"]:
            print(f"pruned {answer['PrunedFacts']} audit facts from {answer['Region']}; the "
                  f"chain is verifiable from the signed checkpoint at seq "
                  f"{answer['CheckpointSeq']}")
        else:
            print(f"nothing to prune in {answer['Region']}: no exported audit fact older than "
                  "that lies before a signed checkpoint")
        return 0
    try:
        dropped, cut = prune(args.data_dir, args.older_than)
    except (PruneRefused, livelog.LiveLogUnreadable) as exc:
        print(f"kms audit prune: error: {exc}", file=sys.stderr)
        return 2
    if cut == 0:
        print("nothing to prune: no exported audit fact older than that lies before a signed "
              "checkpoint")
    else:
        print(f"pruned {dropped} audit facts; the chain is verifiable from the signed "
              f"checkpoint at seq {cut}")
    return 0


def _lock(data_dir: Path) -> int:
    try:
        return take_lock(data_dir)
    except DataDirInUse as exc:
        raise PruneRefused(f"data dir {data_dir} is in use by a running kms node (pid "
                           f"{exc.holder}): ask the node to prune its own log with `kms audit "
                           "prune --endpoint <its URL> --older-than AGE`, or stop the node "
                           "before pruning") from None
    except OSError as exc:
        raise PruneRefused(f"cannot open {data_dir}: {exc.strerror or exc}") from None


def _now_ms(data_dir: Path) -> int:
    path = data_dir / DEV_CLOCK_FILE
    return (PersistentClock(path) if path.exists() else Clock()).now_ms()


def prune(data_dir: Path, older_than_s: int) -> tuple[int, int]:
    """(audit facts dropped, the cut's seq; 0 when nothing could be dropped)."""
    fd = _lock(data_dir)
    try:
        try:
            exported = int(json.loads((data_dir / EXPORTED_FILE).read_text())["last_seq"])
        except FileNotFoundError:
            raise PruneRefused(f"nothing is exported yet ({data_dir / EXPORTED_FILE} is "
                               "absent): run `kms audit export` first") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PruneRefused(f"cannot read {data_dir / EXPORTED_FILE}: {exc}") from None
        before = livelog.check(data_dir)
        if not before.ok:
            raise PruneRefused("the live log does not verify (`kms audit verify --data-dir "
                               f"{data_dir}`): {before.problems[0]}")
        cutoff = _now_ms(data_dir) - older_than_s * 1000
        return _drop(data_dir, exported, cutoff)
    finally:
        os.close(fd)


def _drop(data_dir: Path, exported: int, cutoff_ms: int) -> tuple[int, int]:
    db = sqlite3.connect(data_dir / livelog.LOG_FILE)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA secure_delete=ON")  # as the node's own connection
        # the cut: the last signed checkpoint whose rows are all exported
        row = db.execute("SELECT max(seq) FROM checkpoints WHERE seq <= ?",
                         (exported,)).fetchone()
        cut = int(row[0]) if row and row[0] is not None else 0
        n, last = pruning.plan(db, cut, cutoff_ms) if cut else (0, 0)
        if n == 0:
            return 0, 0
        db.execute("CREATE TABLE IF NOT EXISTS log_marks (name TEXT PRIMARY KEY, "
                   "seq INTEGER NOT NULL)")  # a log from before prune existed
        with db:  # one transaction: the rows and the marks
            pruning.apply(db, pruning.AuditPruned(cut, cutoff_ms, last))
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return n, cut
    finally:
        db.close()


# -- with the node running --------------------------------------------------------------------
def prune_online(args: argparse.Namespace) -> dict[str, Any]:
    """Ask the node at ``args.endpoint`` to prune; its answer, or NodeRefused."""
    body: dict[str, Any] = {"OlderThanSeconds": args.older_than}
    if args.region:
        body["Region"] = args.region
    creds = admin_client.credentials(args.access_key, args.secret_key)
    return admin_client.call(args.endpoint, "POST", PRUNE_PATH, creds, body=body,
                             timeout=TIMEOUT)
