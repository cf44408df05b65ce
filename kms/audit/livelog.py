"""The live log read from outside the node: read-only SQLite, the full chain check.

Rules: nothing here writes to the data dir (``mode=ro``; a running node keeps serving);
``check`` re-hashes every row, verifies every signed checkpoint and the witness file, and
names the first broken link, a rewritten chain (hashes agree, a signature does not) or a
missing tail (the log ends before the checkpoint ``log-checkpoint.json`` records).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kms.audit.checkpoints import (
    CHECKPOINT_STREAM,
    WITNESS_FILE,
    CheckpointSigned,
    Witness,
    message,
)
from kms.audit.signing import AuditPublicKey, verified_public_key
from kms.crypto.sealing import RootKey, RootKeyMissing
from kms.domain import events as ev
from kms.store.log import GENESIS, row_hash

LOG_FILE = "events.sqlite3"
IDENTITY_FILE = "node.json"
PRUNED_MARK = "pruned_through"
COLUMNS = "seq, stream, version, type, origin_region, origin_seq, at_ms, body, prev_hash, hash"


class LiveLogUnreadable(Exception):
    """The data dir has no readable log or identity; the message says which."""


def identity(data_dir: Path) -> tuple[str, str]:
    """(region, account) from ``node.json``."""
    try:
        doc = json.loads((data_dir / IDENTITY_FILE).read_text())
        return str(doc["region"]), str(doc["account_id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LiveLogUnreadable(f"cannot read {data_dir / IDENTITY_FILE}: {exc}") from None


def root_key(data_dir: Path) -> RootKey | None:
    try:
        return RootKey.load_or_create(data_dir, create=False)
    except (RootKeyMissing, ValueError):
        return None


def open_readonly(data_dir: Path) -> sqlite3.Connection:
    path = data_dir / LOG_FILE
    if not path.exists():
        raise LiveLogUnreadable(f"{path} does not exist")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        db.execute("SELECT count(*) FROM events").fetchone()
    except sqlite3.Error as exc:
        raise LiveLogUnreadable(f"cannot read {path}: {exc}") from None
    return db


def pruned_through(db: sqlite3.Connection) -> int:
    try:
        row = db.execute("SELECT seq FROM log_marks WHERE name = ?", (PRUNED_MARK,)).fetchone()
    except sqlite3.OperationalError:  # a log from before prune existed
        return 0
    return int(row[0]) if row else 0


def rows(db: sqlite3.Connection, after_seq: int = 0) -> Iterator[tuple]:  # type: ignore[type-arg]
    yield from db.execute(f"SELECT {COLUMNS} FROM events WHERE seq > ? ORDER BY seq",
                          (after_seq,))


@dataclass
class LiveReport:
    """What ``check`` found: problems (one line each) and the figures of the summary."""

    problems: list[str] = field(default_factory=list)
    rows: int = 0
    last_seq: int = 0
    checkpoints: int = 0
    last_checkpoint: int = 0
    fingerprint: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, data_dir: Path) -> str:
        unsigned = self.last_seq - self.last_checkpoint
        state = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        return (f"live log {data_dir}: {self.rows} rows through seq {self.last_seq}, "
                f"{self.checkpoints} signed checkpoints (last at seq {self.last_checkpoint}, "
                f"{unsigned} rows after it), key {self.fingerprint or 'unknown'}: {state}")


def check(data_dir: Path, key: AuditPublicKey | None = None) -> LiveReport:
    """Re-hash the whole chain and check every checkpoint and the witness."""
    region, _ = identity(data_dir)
    report = LiveReport()
    key = key or verified_public_key(data_dir, root_key(data_dir))
    if key is None:
        report.problems.append(f"no audit public key in {data_dir}: checkpoints cannot be "
                               "checked")
    else:
        report.fingerprint = key.fingerprint
    try:
        witness = Witness.read(data_dir / WITNESS_FILE)
    except ValueError as exc:
        report.problems.append(str(exc))
        witness = None
    db = open_readonly(data_dir)
    try:
        pruned = pruned_through(db)
        _walk(db, region, key, pruned, witness, report)
    finally:
        db.close()
    if witness is not None:
        if key is not None and not key.verifies(message(region, witness.covers_seq,
                                                        witness.head), witness.signature):
            report.problems.append(f"{WITNESS_FILE}: its signature does not verify")
        if report.last_seq < witness.seq:
            report.problems.append(
                f"missing tail: the log ends at seq {report.last_seq}, but {WITNESS_FILE} "
                f"records the signed checkpoint at seq {witness.seq} (head "
                f"{witness.head.hex()[:16]}…)")
    return report


def _walk(db: sqlite3.Connection, region: str, key: AuditPublicKey | None, pruned: int,
          witness: Witness | None, report: LiveReport) -> None:
    prev, prev_seq, broken = GENESIS, 0, False
    for seq, stream, version, type_name, origin, oseq, at_ms, body, p, h in rows(db):
        report.rows += 1
        report.last_seq = seq
        p, h, body = bytes(p), bytes(h), bytes(body)
        if not broken:
            linked = seq > pruned or seq == prev_seq + 1
            if linked and (seq != prev_seq + 1 or p != prev):
                why = ("rows are missing before it" if seq != prev_seq + 1
                       else "its prev_hash is not the hash before it")
                report.problems.append(
                    f"seq {seq}: broken link: the row does not follow seq {prev_seq} ({why})")
                broken = True
            elif row_hash(p, seq, stream, version, type_name, origin, oseq, at_ms, body) != h:
                report.problems.append(f"seq {seq}: broken link: the stored row does not hash "
                                       "to its stored hash (the row was changed)")
                broken = True
        prev, prev_seq = h, seq
        if stream != CHECKPOINT_STREAM:
            continue
        try:
            cp = ev.decode(str(type_name), body)
        except Exception:
            cp = None
        if not isinstance(cp, CheckpointSigned) or cp.covers_seq != seq - 1:
            report.problems.append(f"seq {seq}: the checkpoint row is malformed")
            continue
        if cp.head != p:
            report.problems.append(
                f"seq {seq}: rewritten chain: the checkpoint signed another head for seq "
                f"{cp.covers_seq} than the row the log holds there")
            continue
        if key is not None and not key.verifies(message(region, cp.covers_seq, cp.head),
                                                cp.signature):
            report.problems.append(
                f"seq {seq}: rewritten chain: the checkpoint's signature does not verify under "
                f"key {key.fingerprint} (the rows up to seq {cp.covers_seq} are not the ones "
                "that were signed)")
            continue
        report.checkpoints += 1
        report.last_checkpoint = seq
        if witness is not None and seq == witness.seq and cp.signature != witness.signature:
            report.problems.append(f"seq {seq}: the checkpoint is not the one {WITNESS_FILE} "
                                   "records (the log was rewritten from there)")
