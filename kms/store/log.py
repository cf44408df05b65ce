"""The append-only event log: one writer task, group commit, hash chain.

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
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from kms.audit.checkpoints import Checkpoint
from kms.domain import events as ev
from kms.domain.errors import ConflictingWrite, KMSInternalException
from kms.store import checkpointing, startup
from kms.store import snapshot as snapshots
from kms.store.chain import AUDIT_STREAM, GENESIS, LogCorrupted, _Row, row_hash
from kms.store.pruning import AuditPruned
from kms.store.replication import (
    CursorChange,
    ReplicatedBatch,
    ReplicatedRow,
    checked_batch,
    peer_page,
)
from kms.store.startup import REPLAY_CHUNK

if TYPE_CHECKING:
    from kms.audit.checkpoints import Checkpointer

MAX_BATCH = 1024
COMMIT_FAILED = "The event log could not commit; try again."
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


@dataclass(slots=True)
class _Pending:
    appends: tuple[Append, ...]
    at_ms: int
    future: asyncio.Future[list[ev.Envelope]]
    wipe: bool = False  # a --dev reset, ordered with the appends around it
    vault: tuple[VaultChange, ...] = ()
    replicated: ReplicatedBatch | None = None
    pruned: AuditPruned | None = None  # kms audit prune, in the transaction of its audit fact


def _settle(future: asyncio.Future[list[ev.Envelope]], envs: list[ev.Envelope]) -> None:
    """Answer a caller, unless it went away: a cancelled caller cancels its future, and
    the writer must go on to the rest of the batch (and the queue) regardless."""
    if not future.done():
        future.set_result(envs)


def _fail(future: asyncio.Future[list[ev.Envelope]], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


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
                await self._do_wipe(first)
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
                await self._commit(batch)
            except BaseException:
                if held is not None:  # taken off the queue: the drain in _run misses it
                    _fail(held.future, KMSInternalException("The event log stopped."))
                raise
            if held is not None:
                await self._do_wipe(held)
            if stop:
                await checkpointing.final_checkpoint(self)
                return

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            await self._commit_batch(batch)
        except BaseException:
            for pending in batch:  # fail closed: no caller waits on a batch that broke
                _fail(pending.future, KMSInternalException(COMMIT_FAILED))
            raise

    def _items(self, pending: _Pending, cursors: dict[str, int],
               ) -> Iterator[tuple[str, ev.Event, str, int | None, int, bytes]]:
        """(stream, event, origin, origin_seq or None for "its seq", at_ms, body) of
        each row a pending append adds (of a replicated one, those past the cursor)."""
        r = pending.replicated
        if r is None:
            for a in pending.appends:
                for event in a.events:
                    yield a.stream, event, self.region, None, pending.at_ms, ev.encode(event)
            return
        done = cursors.get(r.origin_region, 0)
        for row, event in r.rows:
            if row.origin_seq > done:
                yield row.stream, event, r.origin_region, row.origin_seq, row.at_ms, row.body

    def _head(self, moved: dict[str, int], stream: str) -> int:
        """A stream's version as of the batch so far: what it moved, else as committed."""
        got = moved.get(stream)
        return self._heads.get(stream, 0) if got is None else got

    def _rows_for(self, pending: _Pending, moved: dict[str, int], seq: int, prev: bytes,
                  cursors: dict[str, int],
                  ) -> tuple[list[_Row], list[ev.Envelope], dict[str, int], int, bytes]:
        """Rows and envelopes of one pending append, continuing the chain from seq/prev, and
        the heads it moves (on top of ``moved``, the batch's so far): work in proportion to
        its rows, never to the number of streams in the log."""
        heads: dict[str, int] = {}
        rows: list[_Row] = []
        envs: list[ev.Envelope] = []
        for stream, event, origin, origin_seq, at_ms, body in self._items(pending, cursors):
            seq += 1
            version = (heads[stream] if stream in heads else self._head(moved, stream)) + 1
            heads[stream] = version
            o_seq = seq if origin_seq is None else origin_seq
            h = row_hash(prev, seq, stream, version, event.type_name, origin, o_seq, at_ms,
                         body)
            rows.append((seq, stream, version, event.type_name, origin, o_seq, at_ms, body,
                         prev, h))
            prev = h
            envs.append(ev.Envelope(seq, stream, version, origin, o_seq, at_ms, event))
        return rows, envs, heads, seq, prev

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        heads: dict[str, int] = {}  # the streams this batch moves, over self._heads
        seq, prev = self.last_seq, self._last_hash
        cursors = dict(self._cursors)
        rows: list[_Row] = []
        accepted: list[tuple[_Pending, list[ev.Envelope]]] = []
        for pending in batch:
            conflict = any(
                a.expected is not None and self._head(heads, a.stream) != a.expected
                for a in pending.appends
            )
            if conflict:
                _fail(pending.future, ConflictingWrite("stream moved; decide again"))
                continue
            try:  # a row that cannot be encoded fails its own call, never the batch
                rows_of, envs, p_heads, p_seq, p_prev = self._rows_for(pending, heads, seq, prev,
                                                                       cursors)
            except (ValueError, TypeError, OverflowError, struct.error):
                _fail(pending.future, KMSInternalException("The request could not be recorded."))
                continue
            rows.extend(rows_of)
            heads.update(p_heads)
            seq, prev = p_seq, p_prev
            r = pending.replicated
            if r is not None and r.through > cursors.get(r.origin_region, 0):
                cursors[r.origin_region] = r.through
            accepted.append((pending, envs))
        if not accepted:
            return
        checkpoint = checkpointing.checkpoint_due(self, rows, seq, prev)
        vault = [v for pending, _ in accepted for v in pending.vault]
        moved = [CursorChange(o, s) for o, s in cursors.items() if self._cursors.get(o) != s]
        if not rows and not vault and not moved:  # a replayed batch, say: nothing to write
            for pending, envs in accepted:
                _settle(pending.future, envs)
            return
        try:
            pruned = [p.pruned for p, _ in accepted if p.pruned is not None]
            await self._persist(rows, [*vault, *moved, *pruned,
                                       *([checkpoint] if checkpoint else [])])
        except Exception as exc:
            transient = await self._rolled_back(exc)
            self._note_failure(exc, transient, accepted, len(rows))
            for pending, _ in accepted:
                _fail(pending.future, KMSInternalException(COMMIT_FAILED))
            if transient:  # nothing of the batch is stored; the next batch is tried anew
                return
            raise LogCorrupted("commit failed; refusing further writes") from exc
        self.batches += 1
        self.degraded = False
        self._heads.update(heads)
        self.last_seq, self._last_hash = seq, prev
        self._cursors = cursors
        checkpointing.counted(self, rows, checkpoint)
        for row in rows:
            if row[4] != self.region and row[5] > self._held.get(row[4], 0):
                self._held[row[4]] = row[5]
        for p in pruned:  # from this commit on, cursors up to what it dropped are stale
            self._pruned_max = max(self._pruned_max, p.last)
            self._floor = None if self._floor is None else max(self._floor, p.last)
        for v in vault:
            if v.wrapped is None:
                self.vault.pop(v.key_id, None)
            else:
                self.vault[v.key_id] = v.wrapped
        committed = [e for _, envs in accepted for e in envs]
        state_envs = [e for e in committed if e.stream != AUDIT_STREAM]
        if state_envs:
            for fn in self._subscribers:
                fn(state_envs)
        if self._audit_subscribers:
            audit_envs = [e for e in committed if e.stream == AUDIT_STREAM]
            if audit_envs:
                for fn in self._audit_subscribers:
                    fn(audit_envs)
        for pending, envs in accepted:
            _settle(pending.future, envs)
        if checkpoint is not None:
            await checkpointing.witness(self, checkpoint)
            if checkpointing.snapshot_due(self, checkpoint):
                await checkpointing.write_snapshot(self, checkpoint)


    async def _rolled_back(self, exc: Exception) -> bool:
        """Whether a failed commit was transient and left the store exactly as the
        in-memory heads say (so the chain continues from them). Anything else stops
        the writer: fail closed rather than serve from a store that may have moved."""
        if not self._transient(exc):
            return False
        try:
            tail = await self._tail()
        except Exception:  # cannot read the tail now (the same fault, say): rely on the
            return True    # UNIQUE(seq) backstop, which refuses the next batch if it moved
        return tail == (self.last_seq, self._last_hash)

    def _note_failure(self, exc: Exception, transient: bool,
                      accepted: list[tuple[_Pending, list[ev.Envelope]]], n_rows: int) -> None:
        self.failed_commits += 1
        self.degraded = True
        self.last_error = str(exc) or type(exc).__name__
        self.last_error_at_ms = max(p.at_ms for p, _ in accepted)
        request_ids = [e.event.request_id for _, envs in accepted for e in envs
                       if isinstance(e.event, ev.ApiCallRecorded)]
        log.error("event_log_commit_failed", error=self.last_error,
                  error_type=type(exc).__name__, transient=transient,
                  writer="serving" if transient else "stopped", batch_calls=len(accepted),
                  batch_rows=n_rows, failed_commits=self.failed_commits,
                  request_ids=request_ids[:20])

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

    async def _do_wipe(self, pending: _Pending) -> None:
        try:
            await self._wipe_all()
        except BaseException:  # the reset's caller is answered whatever broke (never waits)
            _fail(pending.future, KMSInternalException("reset failed"))
            raise
        _settle(pending.future, [])

    async def _wipe_all(self) -> None:
        try:
            if self.checkpointer is not None:  # first: a crash mid-wipe must not leave a
                self.checkpointer.wiped()      # witness the emptied log cannot match
            await self._wipe()
        except Exception as exc:
            raise LogCorrupted("wipe failed") from exc
        self._heads.clear()
        self.vault.clear()
        self._cursors.clear()
        self._held.clear()
        self.last_seq, self._last_hash = 0, GENESIS
        self._cp_rows, self._cp_since_ms = 0, None
        self._cp_count, self._last_checkpoint, self._snapshot_seq = 0, None, 0
        self._floor, self._pruned_max = 0, 0
        for fn in (*self._subscribers, *self._audit_subscribers):
            fn(None)

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
