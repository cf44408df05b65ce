"""The append-only event log: one writer task, group commit, hash chain.

Here: the log's API (append, append_replicated, reset, the read APIs), its lifecycle and
the writer loop, which takes pending appends off its queue in batches of up to
``MAX_BATCH`` (a reset ends a batch and runs alone, in order) and hands each to
kms.store.commit, which commits one batch (or wipes) and answers its callers; the storage
hooks a subclass implements.

Rules: an append is acknowledged only after its batch is committed (one
transaction and one fsync for many appends); UNIQUE(stream, version) is the
optimistic-concurrency backstop behind an in-memory head check; every row's hash
covers the previous hash, so a corrupted row is found at open and never served.
``SqliteLog`` (kms.store.sqlite) and ``MemoryLog`` share all of this and differ only
in storage.

Beside the log sits the key vault: one wrapped key-encryption key per KMS key,
written in the same transaction as the events that need it. Dropping a vault
entry crypto-shreds every sealed material of that key the log still holds.

A commit that fails for a transient reason (the database locked, the disk full)
fails only its own calls; the writer keeps serving. Any other failure, an I/O error
included, stops it (fail closed).

Replication (kms.store.replication): ``read_for_peer`` serves this region's own state
events after a cursor; ``append_replicated`` appends a peer's through the same writer,
keeping their origin, with a per-origin cursor in the same transaction.

Signed checkpoints (kms.audit.checkpoints): with a ``checkpointer`` a batch also writes, at
intervals, a signed checkpoint of its head into the ``checkpoints`` side table, and close
writes one (kms.store.checkpointing, with the projection snapshots); start-up re-hashes only
the rows from the last checkpoint on (and ``recheck`` rows before it), link-checks the rest,
verifies every checkpoint (signature, and the hash at its seq) and refuses a log that ends
before its last checkpoint or its witness file (kms.store.startup). The row format and its
hash are in kms.store.chain.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from kms.audit.checkpoints import Checkpoint
from kms.domain import events as ev
from kms.domain.errors import KMSInternalException
from kms.store import checkpointing, commit, startup
from kms.store import snapshot as snapshots
from kms.store.chain import AUDIT_STREAM, GENESIS, LogCorrupted, _Row, row_hash
from kms.store.commit import COMMIT_FAILED, _fail, _Pending
from kms.store.pruning import AuditPruned
from kms.store.replication import (
    CursorChange,
    ReplicatedRow,
    checked_batch,
    peer_page,
)
from kms.store.startup import REPLAY_CHUNK

if TYPE_CHECKING:
    from kms.audit.checkpoints import Checkpointer

# Named here for the code that imports them from kms.store.log.
__all__ = ["AUDIT_STREAM", "COMMIT_FAILED", "GENESIS", "REPLAY_CHUNK", "Append", "EventLog",
           "LogCorrupted", "SideChange", "Subscriber", "VaultChange", "row_hash"]

MAX_BATCH = 1024
KEEP_SNAPSHOTS = 2  # stored projection snapshots kept: the newest and the one before

log = structlog.get_logger("kms.store")

# Called with committed state events (or, for audit subscribers, audit facts) in order;
# with None when the log was wiped.
Subscriber = Callable[[Sequence[ev.Envelope] | None], None]


@dataclass(frozen=True, slots=True)
class Append:
    """Events for one stream. ``expected`` is the stream version the decision saw
    (0 for a new stream), or None where order is all that matters (audit facts)."""

    stream: str
    events: tuple[ev.Event, ...]
    expected: int | None = None


@dataclass(frozen=True, slots=True)
class VaultChange:
    """Store a key's wrapped key-encryption key, or destroy it (``wrapped=None``)."""

    key_id: str
    wrapped: bytes | None


# What a batch writes besides its rows, in the same transaction.
SideChange = VaultChange | CursorChange | Checkpoint | AuditPruned


class EventLog(abc.ABC):
    """Shared core: heads, hash chain, the writer task. Subclasses persist rows."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.last_seq = 0
        self._last_hash = GENESIS
        self._heads: dict[str, int] = {}
        self._subscribers: list[Subscriber] = []
        self._audit_subscribers: list[Subscriber] = []
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self.vault: dict[str, bytes] = {}  # key id -> wrapped KEK, as committed
        self._cursors: dict[str, int] = {}  # origin region -> its last seq held, as committed
        self.batches = 0  # commits made; batching figures for benchmarks
        # The writer's condition, for /_kms/health: commits that failed (cumulative), the
        # last failure's error text and batch time, and whether the last commit failed.
        self.failed_commits = 0
        self.last_error: str | None = None
        self.last_error_at_ms: int | None = None
        self.degraded = False
        # Signed checkpoints (None: none written, every row re-hashed at start).
        self.checkpointer: Checkpointer | None = None
        self._cp_rows = 0  # rows committed since the last checkpoint
        self._cp_since_ms: int | None = None  # batch time the unchecked span began
        self._last_at_ms = 0
        self.start_rehashed = 0  # rows re-hashed by the last start-up (the rest link-checked)
        self.start_decoded = 0  # rows decoded by the last start-up (those after its snapshot)
        self.start_snapshot_seq = 0  # the seq of the snapshot it restored (0: none)
        self._held: dict[str, int] = {}  # per origin region, the last origin seq rows reached
        self._cp_count = 0  # checkpoints since the last snapshot
        self._last_checkpoint: Checkpoint | None = None
        self._snapshot_seq = 0  # the seq of the last snapshot stored (0: none)
        self._floor: int | None = None  # pruned_floor once read (None: not yet)
        self._pruned_max = 0  # the last fact dropped by a prune this process committed

    # -- lifecycle ----------------------------------------------------------------------------
    def subscribe(self, fn: Subscriber) -> None:
        """``fn`` gets the committed state events: all of them at replay, then each batch's."""
        self._subscribers.append(fn)

    def unsubscribe(self, fn: Subscriber) -> None:
        """Stop calling ``fn`` (given to ``subscribe``); no error if it was not there."""
        if fn in self._subscribers:
            self._subscribers.remove(fn)

    def subscribe_audit(self, fn: Subscriber) -> None:
        """``fn`` gets the committed audit facts (stream ``audit``), decoded, in seq order:
        all of them at replay, then each batch's; None when the log is wiped.

        The replay may arrive in several calls (up to ``REPLAY_CHUNK`` facts each, one
        empty list when there are none), handed on as rows are verified, so the whole
        audit stream is never held at once. A replay that then finds a corrupt row raises
        from ``open``: what ``fn`` was given is a verified prefix of a log that is refused."""
        self._audit_subscribers.append(fn)

    async def open(self) -> None:
        """Replay stored rows (verifying the chain) to subscribers, then start the writer.
        On any failure the storage is closed again, so a refusing node can exit."""
        try:
            await startup.replay(self)
        except BaseException:
            await self._close()
            raise
        self._writer = asyncio.create_task(self._run(), name="event-log-writer")
        self._writer.add_done_callback(self._writer_ended)

    def _writer_ended(self, task: asyncio.Task[None]) -> None:
        """Say why the writer stopped when it did not stop by ``close`` (the node then
        refuses writes: the health endpoint shows it too)."""
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("event_log_writer_stopped", region=self.region,
                      error=f"{type(exc).__name__}: {exc}")

    @property
    def writable(self) -> bool:
        return self._writer is not None and not self._writer.done()

    async def close(self) -> None:
        try:
            if self._writer is not None:
                if not self._writer.done():
                    await self._queue.put(None)
                await self._writer
        except Exception:  # the writer already failed; what matters now is closing
            pass
        finally:
            self._writer = None
            await self._close()

    def version(self, stream: str) -> int:
        return self._heads.get(stream, 0)

    def cursor(self, origin_region: str) -> int:
        """The last seq of ``origin_region``'s log this log holds (0: none): where to pull
        from next, committed, and the same after a restart."""
        return self._cursors.get(origin_region, 0)

    # -- appending ----------------------------------------------------------------------------
    async def append(self, appends: Iterable[Append], at_ms: int,
                     vault: Iterable[VaultChange] = (),
                     pruned: AuditPruned | None = None) -> list[ev.Envelope]:
        """Append atomically; return once durable. Raises ConflictingWrite if a stream moved.
        ``pruned`` drops old audit facts in the same transaction (kms.store.pruning)."""
        return await self._submit(lambda fut: _Pending(tuple(appends), at_ms, fut,
                                                       vault=tuple(vault), pruned=pruned))

    async def append_replicated(self, origin_region: str, rows: Sequence[ReplicatedRow],
                                through: int | None = None) -> list[ev.Envelope]:
        """Append a batch that ``origin_region``'s ``read_for_peer`` served, through the
        same writer and batches as local appends, at local seqs and stream versions but
        keeping each row's origin_region/origin_seq/at_ms; return the envelopes appended,
        once durable (subscribers get them like local ones). Rows the origin's cursor has
        passed are skipped (a replay appends nothing); the cursor moves to the last row or
        to ``through`` if later, in the same transaction. No expected-version check: the
        origin decided these events and only their order matters. ValueError (nothing
        queued) for an audit row or what ``checked_batch`` refuses."""
        if any(row.stream == AUDIT_STREAM for row in rows):
            raise ValueError("audit facts are never replicated")
        batch = checked_batch(self.region, origin_region, rows, through)
        return await self._submit(lambda fut: _Pending((), 0, fut, replicated=batch))

    async def _submit(self, make: Callable[[asyncio.Future[list[ev.Envelope]]], _Pending],
                      ) -> list[ev.Envelope]:
        if not self.writable:
            raise KMSInternalException("The event log is not accepting writes.")
        fut: asyncio.Future[list[ev.Envelope]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(make(fut))
        return await fut

    async def read_for_peer(self, after_seq: int, streams: Callable[[str], bool], limit: int,
                            ) -> tuple[list[ReplicatedRow], int]:
        """This region's own committed state events after ``after_seq`` whose stream
        ``streams`` accepts, in seq order, at most ``limit``; and the cursor the answer is
        complete up to (past rows the filter left out, so a peer's cursor moves on even
        when nothing passes). Rows replicated from elsewhere and audit facts (whatever the
        filter says) are never served. One call looks at up to ``PEER_SCAN`` rows."""
        return await peer_page(self._read_own, self.last_seq, after_seq,
                               lambda stream: stream != AUDIT_STREAM and streams(stream), limit)

    async def read_audit(self, after_seq: int, limit: int) -> tuple[list[ev.Envelope], int]:
        """Committed audit facts after ``after_seq`` in seq order, at most ``limit``, and the
        seq the answer is complete up to (past the state rows between them, so a reader's
        cursor moves on). One call looks at up to ``REPLAY_CHUNK`` rows."""
        out: list[ev.Envelope] = []
        through = scanned = after_seq
        page = max(64, min(limit + 16, REPLAY_CHUNK))
        while len(out) < limit and scanned - after_seq < REPLAY_CHUNK:
            rows = await self.read_rows(scanned, page)
            if not rows:
                break
            for seq, stream, version, type_name, origin_region, origin_seq, at_ms, body, _, _ \
                    in rows:
                scanned = seq
                if stream == AUDIT_STREAM:
                    if len(out) >= limit:
                        break
                    out.append(ev.Envelope(seq, stream, version, origin_region, origin_seq,
                                           at_ms, ev.decode(type_name, body)))
                through = seq
            if len(rows) < page:
                break
        return out, through

    async def chain_hash(self, seq: int) -> bytes | None:
        """The hash of the row at ``seq`` (GENESIS for 0), None if there is no such row. The
        hash covers every row before it, so it names this log's history up to ``seq``:
        after a reset or a restore the same seq has another hash (or no row)."""
        if seq == 0:
            return GENESIS
        if seq == self.last_seq:
            return self._last_hash
        rows = await self.read_rows(seq - 1, 1)
        return bytes(rows[0][9]) if rows and rows[0][0] == seq else None

    async def _run(self) -> None:
        try:
            await self._loop()
        finally:  # fail closed: nothing waits forever on a writer that stopped
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if item is not None:
                    _fail(item.future, KMSInternalException("The event log stopped."))

    async def _loop(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                await checkpointing.final_checkpoint(self)
                return
            if first.wipe:
                await commit.wipe(self, first)
                continue
            batch = [first]
            held: _Pending | None = None
            stop = False
            while len(batch) < MAX_BATCH and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stop = True
                    break
                if item.wipe:
                    held = item
                    break
                batch.append(item)
            try:
                await commit.commit(self, batch)
            except BaseException:
                if held is not None:  # taken off the queue: the drain in _run misses it
                    _fail(held.future, KMSInternalException("The event log stopped."))
                raise
            if held is not None:
                await commit.wipe(self, held)
            if stop:
                await checkpointing.final_checkpoint(self)
                return

    async def probe(self) -> bool:
        """Whether the store would take a commit now, asked without writing anything (for
        ``/_kms/health`` while degraded, when traffic may have stopped and no commit comes
        to clear it). On success the log is no longer degraded; a full disk shows only at
        the next commit."""
        if not self.writable:
            return False
        try:
            await self._probe()
        except Exception as exc:
            log.info("event_log_probe_failed", error=str(exc) or type(exc).__name__)
            return False
        self.degraded = False
        return True

    async def reset(self) -> None:
        """Drop every row (``--dev`` only); subscribers then see an empty replay."""
        await self._submit(lambda fut: _Pending((), 0, fut, wipe=True))

    # -- storage hooks ------------------------------------------------------------------------
    @abc.abstractmethod
    async def _load(self) -> tuple[dict[str, bytes], dict[str, int]]:
        """Open the store; return the vault and the replication cursors (the rows
        themselves are read a page at a time with ``read_rows``)."""

    @abc.abstractmethod
    async def _count(self, after_seq: int) -> tuple[int, int]:
        """How many stored rows have a seq after ``after_seq``, and how many below 1."""

    @abc.abstractmethod
    async def _persist(self, rows: list[_Row], changes: list[SideChange]) -> None:
        """Write one batch (rows, vault entries, cursors) atomically and durably."""

    @abc.abstractmethod
    async def _wipe(self) -> None:
        """Delete every row, vault entry and cursor."""

    @abc.abstractmethod
    async def _tail(self) -> tuple[int, bytes]:
        """The stored last seq and hash (0 and GENESIS when empty)."""

    @abc.abstractmethod
    async def _probe(self) -> None:
        """Take the store's write lock and let go of it, between batches; raise if not."""

    def _transient(self, exc: Exception) -> bool:
        """Whether a failed ``_persist`` is worth retrying with the next batch."""
        return False

    async def _checkpoints(self) -> list[Checkpoint]:
        """The stored signed checkpoints, in seq order."""
        return []

    async def _pruned_through(self) -> int:
        """The seq of the checkpoint a prune cut at: rows before it may have gaps (0: none)."""
        return 0

    async def prune_plan(self, cut: int, before_ms: int) -> tuple[int, int]:
        """(facts ``AuditPruned(cut, before_ms)`` would drop, the last one's seq)."""
        rows = [r for r in await self.read_rows(0, self.last_seq + 1)
                if r[1] == AUDIT_STREAM and r[0] < cut and r[6] < before_ms]
        return len(rows), (rows[-1][0] if rows else 0)

    async def pruned_floor(self) -> int:
        """The seq of the last audit fact a prune dropped (0: none; kms.store.pruning): a
        stream cursor at or before it has missed records. Read once, then kept as commits
        and wipes move it."""
        if self._floor is None:
            stored = await self._load_floor()
            if self._floor is None:  # no wipe meanwhile; a prune committed meanwhile counts
                self._floor = max(stored, self._pruned_max)
        return self._floor

    async def _load_floor(self) -> int:
        """The stored mark ``pruned_floor`` starts from."""
        return 0

    async def _snapshots(self) -> list[snapshots.Snapshot]:
        """The stored projection snapshots, newest first."""
        return []

    async def _persist_snapshot(self, snapshot: snapshots.Snapshot) -> None:
        """Store a snapshot durably, dropping all but the newest ``KEEP_SNAPSHOTS``."""
        return None

    async def _close(self) -> None:
        return None

    @abc.abstractmethod
    async def read_rows(self, after_seq: int, limit: int) -> list[_Row]:
        """Rows after ``after_seq``, in order (for consumers of the log)."""

    @abc.abstractmethod
    async def _read_own(self, after_seq: int, limit: int) -> list[ReplicatedRow]:
        """Up to ``limit`` committed rows after ``after_seq`` in seq order whose origin is
        this region and whose stream is not audit (their origin_seq is their seq)."""


def __getattr__(name: str) -> type[EventLog]:
    """``MemoryLog`` lives in kms.store.memory (which imports this module): named here too."""
    if name == "MemoryLog":
        from kms.store.memory import MemoryLog
        return MemoryLog
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
