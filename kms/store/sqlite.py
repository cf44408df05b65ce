"""The durable event log: SQLite in WAL mode with synchronous=FULL, asserted at open.

Rules: one batch is one transaction and one fsync (its rows, vault entries and
replication cursors); only a lock or a full disk is a transient failure (the batch fails,
the writer goes on); a commit that drops a vault row is followed by a non-blocking WAL
checkpoint, so a shredded KEK leaves no copy behind.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite

from kms.audit.checkpoints import Checkpoint
from kms.store import pruning
from kms.store.log import (
    AUDIT_STREAM,
    GENESIS,
    KEEP_SNAPSHOTS,
    EventLog,
    LogCorrupted,
    SideChange,
    VaultChange,
    _Row,
    log,
)
from kms.store.replication import CursorChange, ReplicatedRow
from kms.store.snapshot import Snapshot

BUSY_TIMEOUT_MS = 2000  # a brief external lock is waited out, a long one fails the batch

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    version INTEGER NOT NULL,
    type TEXT NOT NULL,
    origin_region TEXT NOT NULL,
    origin_seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    body BLOB NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    UNIQUE (stream, version),
    UNIQUE (origin_region, origin_seq)
);
CREATE TABLE IF NOT EXISTS vault (
    key_id TEXT PRIMARY KEY,
    wrapped BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS replication_cursors (
    origin_region TEXT PRIMARY KEY,
    origin_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY,
    head BLOB NOT NULL,
    at_ms INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    signature BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    seq INTEGER PRIMARY KEY,
    head BLOB NOT NULL,
    version INTEGER NOT NULL,
    digest BLOB NOT NULL,
    fingerprint TEXT NOT NULL,
    signature BLOB NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS log_marks (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
"""
PRUNED_MARK = "pruned_through"  # log_marks: the checkpoint row a prune cut at (kms.audit.prune)
# SQLite's primary result codes that a later attempt may get past: a lock held by
# another connection, a full disk. Each rolls the transaction back before anything of
# it is on disk. Not SQLITE_IOERR: after a failed fsync the WAL frames, commit frame
# included, may be on disk with valid checksums, so a crash could bring back a batch
# whose calls were answered 500; the writer stops instead (fail closed).
_TRANSIENT_CODES = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL")
_COLUMNS = "seq, stream, version, type, origin_region, origin_seq, at_ms, body, prev_hash, hash"


class SqliteLog(EventLog):
    """The durable log: SQLite in WAL mode with synchronous=FULL, asserted at open."""

    def __init__(self, path: Path, region: str) -> None:
        super().__init__(region)
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._checkpoint_owed = False  # a shred whose WAL frames are not yet truncated
        self._checkpoint_warned = False  # the owed checkpoint's warning is logged once

    @property
    def db(self) -> aiosqlite.Connection:
        assert self._db is not None, "log not open"
        return self._db

    async def _load(self) -> tuple[dict[str, bytes], dict[str, int]]:
        self._db = await aiosqlite.connect(self.path)
        await self.db.execute("PRAGMA journal_mode=WAL")
        await self.db.execute("PRAGMA secure_delete=ON")  # a dropped KEK is overwritten
        await self.db.execute("PRAGMA synchronous=FULL")
        await self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        async with self.db.execute("PRAGMA synchronous") as cur:
            row = await cur.fetchone()
        if row is None or row[0] != 2:
            raise RuntimeError(
                "SQLite refused synchronous=FULL; acknowledged writes would not be durable"
            )
        async with self.db.execute("PRAGMA journal_mode") as cur:
            mode = await cur.fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise RuntimeError("SQLite refused WAL mode")
        await self.db.executescript(_SCHEMA)
        await self.db.commit()
        # A node that died between a shred's commit and its checkpoint left the dropped
        # KEK in the WAL; truncate it now (owed, and retried after commits, if a reader
        # holds the WAL).
        self._checkpoint_owed = True
        await self.db._execute(self._checkpoint, self.db._conn)
        async with self.db.execute("SELECT key_id, wrapped FROM vault") as cur:
            vault = {k: bytes(w) for k, w in await cur.fetchall()}
        async with self.db.execute("SELECT origin_region, origin_seq FROM replication_cursors"
                                   ) as cur:
            cursors = {str(o): int(s) for o, s in await cur.fetchall()}
        return vault, cursors

    async def _count(self, after_seq: int) -> tuple[int, int]:
        counts = []
        for where in ("seq > ?", "seq < 1 AND ? = ?"):  # both ranges of the rowid: no scan
            args = (after_seq,) if where == "seq > ?" else (0, 0)
            async with self.db.execute(f"SELECT count(*) FROM events WHERE {where}", args) as cur:
                row = await cur.fetchone()
            counts.append(int(row[0]) if row is not None else 0)
        return counts[0], counts[1]

    async def _snapshots(self) -> list[Snapshot]:
        # As blobs whatever a damaged row holds: a snapshot that does not verify is skipped,
        # never a reason to refuse the start.
        async with self.db.execute(
                "SELECT seq, CAST(head AS BLOB), version, CAST(digest AS BLOB), fingerprint,"
                " CAST(signature AS BLOB), CAST(body AS BLOB) FROM snapshots ORDER BY seq DESC"
        ) as cur:
            return [Snapshot(int(q), bytes(h), int(v), bytes(d), str(f), bytes(g), bytes(b))
                    for q, h, v, d, f, g, b in await cur.fetchall()]

    async def _persist_snapshot(self, snapshot: Snapshot) -> None:
        await self.db._execute(self._write_snapshot_row, snapshot)

    def _write_snapshot_row(self, s: Snapshot) -> None:
        conn = self.db._conn
        try:
            conn.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (s.seq, s.head, s.version, s.digest, s.fingerprint, s.signature,
                          s.body))
            conn.execute("DELETE FROM snapshots WHERE seq NOT IN (SELECT seq FROM snapshots "
                         "ORDER BY seq DESC LIMIT ?)", (KEEP_SNAPSHOTS,))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    async def _persist(self, rows: list[_Row], changes: list[SideChange]) -> None:
        # One hop to aiosqlite's thread for the whole batch (insert, vault, cursors,
        # commit) instead of one per statement: the writer's wait is the fsync, not the hops.
        await self.db._execute(self._write_batch, rows, changes)

    def _write_batch(self, rows: list[_Row], changes: list[SideChange]) -> None:
        conn = self.db._conn
        try:
            conn.executemany(f"INSERT INTO events ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            for c in changes:
                if isinstance(c, CursorChange):
                    conn.execute("INSERT OR REPLACE INTO replication_cursors VALUES (?, ?)",
                                 (c.origin_region, c.origin_seq))
                elif isinstance(c, Checkpoint):
                    conn.execute("INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?)",
                                 (c.seq, c.head, c.at_ms, c.fingerprint, c.signature))
                elif isinstance(c, pruning.AuditPruned):
                    pruning.apply(conn, c)
                    self._checkpoint_owed = True  # no copy of the dropped rows left in the WAL
                elif c.wrapped is None:
                    conn.execute("DELETE FROM vault WHERE key_id = ?", (c.key_id,))
                else:
                    conn.execute("INSERT OR REPLACE INTO vault VALUES (?, ?)",
                                 (c.key_id, c.wrapped))
            conn.commit()
        except BaseException as exc:
            try:
                conn.rollback()
            except sqlite3.Error as again:
                raise LogCorrupted(f"rollback failed: {again}") from exc
            if conn.in_transaction:  # never let the next batch join a half-written one
                raise LogCorrupted("a failed transaction is still open") from exc
            raise
        if any(isinstance(c, VaultChange) and c.wrapped is None for c in changes):
            # owed only once the shred is committed
            self._checkpoint_owed = True
        if self._checkpoint_owed:
            self._checkpoint(conn)

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL into the main file and truncate it, so the frames that held a
        shredded KEK are gone (secure_delete has zeroed it in the page itself). The
        commit is already durable and its callers wait on this, so it never waits: with
        no busy handler, a checkpoint that cannot finish now (a reader holds an old
        snapshot) stays owed and is tried again, as cheaply, after each later commit.
        Never raises: a checkpoint's trouble must not turn a commit into a failure."""
        try:
            conn.execute("PRAGMA busy_timeout=0")
            try:
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            self._checkpoint_unfinished("wal_checkpoint_failed", error=str(exc))
            return
        if busy:
            self._checkpoint_unfinished("wal_checkpoint_incomplete",
                                        reason="a reader holds the WAL")
            return
        if self._checkpoint_warned:
            log.info("wal_checkpoint_completed")
        self._checkpoint_owed = self._checkpoint_warned = False

    def _checkpoint_unfinished(self, event: str, **fields: str) -> None:
        # Once per owed checkpoint, not once per commit: a reader may hold the WAL a while.
        if not self._checkpoint_warned:
            log.warning(event, retry="after each commit", **fields)
            self._checkpoint_warned = True

    def _try_write_lock(self) -> None:
        conn = self.db._conn
        if conn.in_transaction:  # a --dev wipe between its statements: not ours to end
            raise sqlite3.OperationalError("a transaction is open")
        conn.execute("PRAGMA busy_timeout=0")  # a health check answers now
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        finally:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    async def _probe(self) -> None:
        # One function on aiosqlite's thread, so it runs between writer batches.
        await self.db._execute(self._try_write_lock)

    def _transient(self, exc: Exception) -> bool:
        name = getattr(exc, "sqlite_errorname", "")
        return isinstance(exc, sqlite3.OperationalError) and name.startswith(_TRANSIENT_CODES)

    async def _tail(self) -> tuple[int, bytes]:
        async with self.db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
                                   ) as cur:
            row = await cur.fetchone()
        return (int(row[0]), bytes(row[1])) if row is not None else (0, GENESIS)

    async def _wipe(self) -> None:
        await self.db.execute("DELETE FROM events")
        await self.db.execute("DELETE FROM vault")
        await self.db.execute("DELETE FROM replication_cursors")
        await self.db.execute("DELETE FROM log_marks")
        await self.db.execute("DELETE FROM checkpoints")
        await self.db.execute("DELETE FROM snapshots")
        await self.db.commit()
        self._checkpoint_owed = True
        await self.db._execute(self._checkpoint, self.db._conn)

    async def _checkpoints(self) -> list[Checkpoint]:
        async with self.db.execute("SELECT seq, head, at_ms, fingerprint, signature FROM "
                                   "checkpoints ORDER BY seq") as cur:
            return [Checkpoint(int(q), bytes(h), int(a), str(f), bytes(g))
                    for q, h, a, f, g in await cur.fetchall()]

    async def _pruned_through(self) -> int:
        async with self.db.execute("SELECT seq FROM log_marks WHERE name = ?",
                                   (PRUNED_MARK,)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row is not None else 0

    async def prune_plan(self, cut: int, before_ms: int) -> tuple[int, int]:
        # on aiosqlite's thread, between writer batches
        return await self.db._execute(pruning.plan, self.db._conn, cut, before_ms)

    async def _load_floor(self) -> int:
        return await self.db._execute(pruning.floor, self.db._conn)

    async def _close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def read_rows(self, after_seq: int, limit: int) -> list[_Row]:
        async with self.db.execute(
            f"SELECT {_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        ) as cur:
            return [tuple(r) for r in await cur.fetchall()]  # type: ignore[misc]

    async def _read_own(self, after_seq: int, limit: int) -> list[ReplicatedRow]:
        # Own rows have origin_seq == seq: asked by origin_seq, the UNIQUE (origin_region,
        # origin_seq) index bounds the range and gives the order (no scan of every own row,
        # no temporary B-tree per call on the writer's connection).
        async with self.db.execute(
            "SELECT seq, stream, type, at_ms, body FROM events WHERE origin_region = ? AND"
            " origin_seq > ? AND stream != ? ORDER BY origin_seq LIMIT ?",
            (self.region, after_seq, AUDIT_STREAM, limit),
        ) as cur:
            return [ReplicatedRow(int(q), str(st), str(t), int(a), bytes(b))
                    for q, st, t, a, b in await cur.fetchall()]
