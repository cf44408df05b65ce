"""``kms audit prune --data-dir DIR --older-than 90d``: drop old, exported audit facts.

Rules: the node must be stopped (the data dir's lock is taken, as ``kms serve`` takes it);
the live log must verify first; only rows of the ``audit`` stream go, and only those that
``audit-exported.json`` (written by ``kms audit export``) says are exported, that are older
than the age by the node's clock (the ``--dev`` clock's offset included), and that lie before
the cut: the last signed checkpoint the export covers (the row it signs stays). The deletion
and the ``pruned_through`` mark (the cut's seq) are one transaction: below the cut the chain
has gaps, and start-up and ``verify`` trust it from the cut's signed head on (rows before it
are still re-hashed one by one by ``verify``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import sys
from pathlib import Path

from kms.audit import livelog
from kms.audit.export import EXPORTED_FILE
from kms.clock import Clock, PersistentClock
from kms.datadir import DataDirInUse, take_lock
from kms.store.log import AUDIT_STREAM

DEV_CLOCK_FILE = "dev-clock.json"
_AGE = re.compile(r"([0-9]+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, required=True, help="the (stopped) node's data dir")
    p.add_argument("--older-than", required=True, type=age_seconds,
                   help="age of the audit facts to drop, e.g. 90d, 12h, 30m")


def age_seconds(text: str) -> int:
    m = _AGE.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age like 90d, 12h, 30m or 45s")
    return int(m.group(1)) * _UNIT_S[m.group(2)]


class PruneRefused(Exception):
    """Nothing was dropped; the message says why."""


def run(args: argparse.Namespace) -> int:
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
        raise PruneRefused(f"data dir {data_dir} is in use by a running kms process (pid "
                           f"{exc.holder}); stop the node before pruning") from None
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
        # the cut: the last signed checkpoint whose rows are all exported
        row = db.execute("SELECT max(seq) FROM checkpoints WHERE seq <= ?",
                         (exported,)).fetchone()
        cut = int(row[0]) if row and row[0] is not None else 0
        if cut == 0 or cut <= livelog.pruned_through(db) and not _droppable(db, cut, cutoff_ms):
            return 0, 0
        with db:  # one transaction: the rows and the mark
            n = db.execute("DELETE FROM events WHERE stream = ? AND seq < ? AND at_ms < ?",
                           (AUDIT_STREAM, cut, cutoff_ms)).rowcount
            if n == 0:
                db.rollback()
                return 0, 0
            db.execute("CREATE TABLE IF NOT EXISTS log_marks (name TEXT PRIMARY KEY, "
                       "seq INTEGER NOT NULL)")
            db.execute("INSERT OR REPLACE INTO log_marks VALUES (?, max(?, coalesce((SELECT "
                       "seq FROM log_marks WHERE name = ?), 0)))",
                       (livelog.PRUNED_MARK, cut, livelog.PRUNED_MARK))
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return n, cut
    finally:
        db.close()


def _droppable(db: sqlite3.Connection, cut: int, cutoff_ms: int) -> bool:
    row = db.execute("SELECT count(*) FROM events WHERE stream = ? AND seq < ? AND at_ms < ?",
                     (AUDIT_STREAM, cut, cutoff_ms)).fetchone()
    return bool(row and row[0])
