"""Signed checkpoints of the live log: the hash chain's head, signed at intervals.

Rules: a checkpoint signs (region, seq, hash) of a row of the chain with the audit signing
key; it lives in the log's side table ``checkpoints`` keyed by that seq, written in the same
transaction as the batch it ends, once ``rows`` rows or ``seconds`` of the batch clock have
passed since the last one, and at clean shutdown (so it adds no row: log seqs stay one per
event). After each checkpoint commits, ``log-checkpoint.json`` beside the log (replaced
atomically) records it: the witness that a log cut short, side table included, lost its tail.
Every ``snapshot_every`` checkpoints (and at the shutdown one) the log also stores a snapshot of
its projections (kms.store.snapshot) as of that checkpoint's seq, signed here with its seq,
chain hash and body digest, so start-up folds only the rows after it.

Settings: ``[node] checkpoint_rows``, ``checkpoint_seconds``, ``start_recheck_rows`` and
``snapshot_checkpoints`` (kms.config); the environment variables below override them.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from kms.audit.signing import AuditPublicKey, AuditSigningKey
from kms.files import write_atomically

WITNESS_FILE = "log-checkpoint.json"
# Defaults (the [node] settings); the environment overrides both (tests, operators).
ROWS_ENV, SECONDS_ENV, RECHECK_ENV, SNAPSHOT_ENV = (
    "KMS_CHECKPOINT_ROWS", "KMS_CHECKPOINT_SECONDS", "KMS_START_RECHECK_ROWS",
    "KMS_SNAPSHOT_CHECKPOINTS")
DEFAULT_ROWS = 1000
DEFAULT_SECONDS = 60
DEFAULT_RECHECK = 10_000  # rows before the last checkpoint still re-hashed at start
DEFAULT_SNAPSHOT_CHECKPOINTS = 10  # a projection snapshot every this many checkpoints (0: none
#                                    but the one at clean shutdown)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The chain's head at ``seq`` (the hash of the row there), signed; a row of the
    ``checkpoints`` table, and what ``log-checkpoint.json`` holds of the last one."""

    seq: int
    head: bytes
    at_ms: int
    fingerprint: str
    signature: bytes

    @classmethod
    def read(cls, path: Path) -> Checkpoint | None:
        """The witness file's checkpoint: None when absent; ValueError when unreadable."""
        try:
            doc = json.loads(path.read_text())
            return cls(int(doc["seq"]), bytes.fromhex(doc["head"]), int(doc["at_ms"]),
                       str(doc["fingerprint"]), bytes.fromhex(doc["signature"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is damaged: {exc}") from None

    def write(self, path: Path) -> None:
        body = json.dumps({"seq": self.seq, "head": self.head.hex(), "at_ms": self.at_ms,
                           "fingerprint": self.fingerprint,
                           "signature": self.signature.hex()}, indent=2) + "\n"
        write_atomically(path, body.encode())


def message(region: str, seq: int, head: bytes) -> bytes:
    """What a checkpoint signs: bound to the region, so a region's log cannot borrow
    another region's checkpoints."""
    return (b"kms-log-checkpoint-v1\x00" + region.encode() + b"\x00"
            + struct.pack(">Q", seq) + head)


def _env_int(name: str, default: int) -> int:
    try:
        return max(0, int(os.environ.get(name, default)))
    except ValueError:
        return default


def _setting(name: str, given: int | None, default: int) -> int:
    """The environment's value if set, else the configured one, else the default."""
    return _env_int(name, given if given is not None else default)


class Checkpointer:
    """The log's checkpoint policy, signer and witness (kms.store.log calls it)."""

    def __init__(self, region: str, key: AuditPublicKey, witness_path: Path | None, *,
                 rows: int | None = None, seconds: int | None = None,
                 recheck: int | None = None, snapshot_every: int | None = None) -> None:
        self.region = region
        self.key = key
        self.witness_path = witness_path
        self.rows = max(1, _setting(ROWS_ENV, rows, DEFAULT_ROWS))
        self.interval_ms = _setting(SECONDS_ENV, seconds, DEFAULT_SECONDS) * 1000
        self.recheck = _setting(RECHECK_ENV, recheck, DEFAULT_RECHECK)
        self.snapshot_every = _setting(SNAPSHOT_ENV, snapshot_every,
                                       DEFAULT_SNAPSHOT_CHECKPOINTS)

    def due(self, rows_since: int, ms_since: int) -> bool:
        return rows_since >= self.rows or (rows_since > 0 and ms_since >= self.interval_ms)

    def make(self, seq: int, head: bytes, at_ms: int) -> Checkpoint:
        if not isinstance(self.key, AuditSigningKey):
            raise RuntimeError("this checkpointer only verifies")
        return Checkpoint(seq, head, at_ms, self.key.fingerprint,
                          self.key.sign(message(self.region, seq, head)))

    def verifies(self, cp: Checkpoint) -> bool:
        return self.key.verifies(message(self.region, cp.seq, cp.head), cp.signature)

    def sign(self, message_: bytes) -> tuple[str, bytes]:
        """(fingerprint, signature) of ``message_`` (a snapshot's, kms.store.snapshot)."""
        if not isinstance(self.key, AuditSigningKey):
            raise RuntimeError("this checkpointer only verifies")
        return self.key.fingerprint, self.key.sign(message_)

    def signed(self, message_: bytes, signature: bytes) -> bool:
        return self.key.verifies(message_, signature)

    def witness(self) -> Checkpoint | None:
        return Checkpoint.read(self.witness_path) if self.witness_path is not None else None

    async def committed(self, cp: Checkpoint) -> None:
        if self.witness_path is not None:
            await asyncio.to_thread(cp.write, self.witness_path)

    def wiped(self) -> None:
        if self.witness_path is not None:
            self.witness_path.unlink(missing_ok=True)
