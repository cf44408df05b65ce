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

from kms.audit.checkpoints import WITNESS_FILE, Checkpoint, message
from kms.audit.signing import AuditPublicKey, verified_public_key
from kms.crypto.sealing import RootKey, RootKeyMissing
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


def checkpoints(db: sqlite3.Connection) -> list[Checkpoint]:
    try:
        found = db.execute("SELECT seq, head, at_ms, fingerprint, signature FROM checkpoints "
                           "ORDER BY seq").fetchall()
    except sqlite3.OperationalError:  # a log from before checkpoints existed
        return []
    return [Checkpoint(int(q), bytes(h), int(a), str(f), bytes(g)) for q, h, a, f, g in found]


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
        unsigned = max(0, self.last_seq - self.last_checkpoint)
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
        witness = Checkpoint.read(data_dir / WITNESS_FILE)
    except ValueError as exc:
        report.problems.append(str(exc))
        witness = None
    db = open_readonly(data_dir)
    try:
        pruned = pruned_through(db)
        signed = {}
        for cp in checkpoints(db):
            if key is not None and not key.verifies(message(region, cp.seq, cp.head),
                                                    cp.signature):
                report.problems.append(
                    f"seq {cp.seq}: rewritten checkpoint: its signature does not verify under "
                    f"key {key.fingerprint}")
            else:
                signed[cp.seq] = cp
        report.checkpoints = len(signed)
        report.last_checkpoint = max(signed, default=0)
        _walk(db, pruned, signed, report)
    finally:
        db.close()
    if report.last_checkpoint > report.last_seq:
        report.problems.append(
            f"missing tail: the log ends at seq {report.last_seq}, but the signed checkpoint "
            f"at seq {report.last_checkpoint} covers rows up to there")
    elif witness is not None and signed.get(witness.seq) != witness:
        report.problems.append(
            f"missing tail: the log ends at seq {report.last_seq}, but {WITNESS_FILE} records "
            f"the signed checkpoint at seq {witness.seq} (head {witness.head.hex()[:16]}…), "
            "which the log does not hold")
    return report


def _walk(db: sqlite3.Connection, pruned: int, signed: dict[int, Checkpoint],
          report: LiveReport) -> None:
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
        cp = signed.get(seq)
        if cp is not None and cp.head != h:
            report.problems.append(
                f"seq {seq}: rewritten chain: the row's hash is not the head the checkpoint "
                f"signed there (the rows up to seq {seq} are not the ones that were signed)")
        prev, prev_seq = h, seq
