"""The commit of what the event log's writer takes off its queue: one batch, or a wipe.

The writer (kms.store.log: the queue, batching, lifecycle and the read APIs) hands each
batch of pending appends to ``commit`` and each ``--dev`` reset to ``wipe``; these are
functions of an ``EventLog``, as kms.store.checkpointing's are, and run only in its writer
task, so nothing else moves the in-memory heads, cursors, vault or chain tail meanwhile.

Rules: a pending append whose stream moved fails alone (``ConflictingWrite``), and so does
one whose rows cannot be encoded; the rest of the batch is written in one ``_persist``
(rows and side changes: vault, cursors, a prune, a checkpoint), and only after it is durable
do the in-memory state, the subscribers (state events, then audit facts) and the callers
see it, in that order. A failed commit fails every call of its batch: a transient failure
that left the store as the heads say keeps the writer serving, anything else stops it
(``LogCorrupted``: fail closed). A caller that went away is never answered (its future is
done), and the writer goes on regardless. A wipe's caller is answered whatever breaks.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from kms.domain import events as ev
from kms.domain.errors import ConflictingWrite, KMSInternalException
from kms.store import checkpointing
from kms.store.chain import AUDIT_STREAM, GENESIS, LogCorrupted, _Row, row_hash
from kms.store.pruning import AuditPruned
from kms.store.replication import CursorChange, ReplicatedBatch

if TYPE_CHECKING:
    from kms.store.log import Append, EventLog, VaultChange

COMMIT_FAILED = "The event log could not commit; try again."

log = structlog.get_logger("kms.store")


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


async def commit(store: EventLog, batch: list[_Pending]) -> None:
    try:
        await _commit_batch(store, batch)
    except BaseException:
        for pending in batch:  # fail closed: no caller waits on a batch that broke
            _fail(pending.future, KMSInternalException(COMMIT_FAILED))
        raise


def _items(store: EventLog, pending: _Pending, cursors: dict[str, int],
           ) -> Iterator[tuple[str, ev.Event, str, int | None, int, bytes]]:
    """(stream, event, origin, origin_seq or None for "its seq", at_ms, body) of
    each row a pending append adds (of a replicated one, those past the cursor)."""
    r = pending.replicated
    if r is None:
        for a in pending.appends:
            for event in a.events:
                yield a.stream, event, store.region, None, pending.at_ms, ev.encode(event)
        return
    done = cursors.get(r.origin_region, 0)
    for row, event in r.rows:
        if row.origin_seq > done:
            yield row.stream, event, r.origin_region, row.origin_seq, row.at_ms, row.body


def _head(store: EventLog, moved: dict[str, int], stream: str) -> int:
    """A stream's version as of the batch so far: what it moved, else as committed."""
    got = moved.get(stream)
    return store._heads.get(stream, 0) if got is None else got


def _rows_for(store: EventLog, pending: _Pending, moved: dict[str, int], seq: int, prev: bytes,
              cursors: dict[str, int],
              ) -> tuple[list[_Row], list[ev.Envelope], dict[str, int], int, bytes]:
    """Rows and envelopes of one pending append, continuing the chain from seq/prev, and
    the heads it moves (on top of ``moved``, the batch's so far): work in proportion to
    its rows, never to the number of streams in the log."""
    heads: dict[str, int] = {}
    rows: list[_Row] = []
    envs: list[ev.Envelope] = []
    for stream, event, origin, origin_seq, at_ms, body in _items(store, pending, cursors):
        seq += 1
        version = (heads[stream] if stream in heads else _head(store, moved, stream)) + 1
        heads[stream] = version
        o_seq = seq if origin_seq is None else origin_seq
        h = row_hash(prev, seq, stream, version, event.type_name, origin, o_seq, at_ms,
                     body)
        rows.append((seq, stream, version, event.type_name, origin, o_seq, at_ms, body,
                     prev, h))
        prev = h
        envs.append(ev.Envelope(seq, stream, version, origin, o_seq, at_ms, event))
    return rows, envs, heads, seq, prev


async def _commit_batch(store: EventLog, batch: list[_Pending]) -> None:
    heads: dict[str, int] = {}  # the streams this batch moves, over store._heads
    seq, prev = store.last_seq, store._last_hash
    cursors = dict(store._cursors)
    rows: list[_Row] = []
    accepted: list[tuple[_Pending, list[ev.Envelope]]] = []
    for pending in batch:
        conflict = any(
            a.expected is not None and _head(store, heads, a.stream) != a.expected
            for a in pending.appends
        )
        if conflict:
            _fail(pending.future, ConflictingWrite("stream moved; decide again"))
            continue
        try:  # a row that cannot be encoded fails its own call, never the batch
            rows_of, envs, p_heads, p_seq, p_prev = _rows_for(store, pending, heads, seq, prev,
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
    checkpoint = checkpointing.checkpoint_due(store, rows, seq, prev)
    vault = [v for pending, _ in accepted for v in pending.vault]
    moved = [CursorChange(o, s) for o, s in cursors.items() if store._cursors.get(o) != s]
    if not rows and not vault and not moved:  # a replayed batch, say: nothing to write
        for pending, envs in accepted:
            _settle(pending.future, envs)
        return
    try:
        pruned = [p.pruned for p, _ in accepted if p.pruned is not None]
        await store._persist(rows, [*vault, *moved, *pruned,
                                    *([checkpoint] if checkpoint else [])])
    except Exception as exc:
        transient = await _rolled_back(store, exc)
        _note_failure(store, exc, transient, accepted, len(rows))
        for pending, _ in accepted:
            _fail(pending.future, KMSInternalException(COMMIT_FAILED))
        if transient:  # nothing of the batch is stored; the next batch is tried anew
            return
        raise LogCorrupted("commit failed; refusing further writes") from exc
    store.batches += 1
    store.degraded = False
    store._heads.update(heads)
    store.last_seq, store._last_hash = seq, prev
    store._cursors = cursors
    checkpointing.counted(store, rows, checkpoint)
    for row in rows:
        if row[4] != store.region and row[5] > store._held.get(row[4], 0):
            store._held[row[4]] = row[5]
    for p in pruned:  # from this commit on, cursors up to what it dropped are stale
        store._pruned_max = max(store._pruned_max, p.last)
        store._floor = None if store._floor is None else max(store._floor, p.last)
    for v in vault:
        if v.wrapped is None:
            store.vault.pop(v.key_id, None)
        else:
            store.vault[v.key_id] = v.wrapped
    committed = [e for _, envs in accepted for e in envs]
    state_envs = [e for e in committed if e.stream != AUDIT_STREAM]
    if state_envs:
        for fn in store._subscribers:
            fn(state_envs)
    if store._audit_subscribers:
        audit_envs = [e for e in committed if e.stream == AUDIT_STREAM]
        if audit_envs:
            for fn in store._audit_subscribers:
                fn(audit_envs)
    for pending, envs in accepted:
        _settle(pending.future, envs)
    if checkpoint is not None:
        await checkpointing.witness(store, checkpoint)
        if checkpointing.snapshot_due(store, checkpoint):
            await checkpointing.write_snapshot(store, checkpoint)


async def _rolled_back(store: EventLog, exc: Exception) -> bool:
    """Whether a failed commit was transient and left the store exactly as the
    in-memory heads say (so the chain continues from them). Anything else stops
    the writer: fail closed rather than serve from a store that may have moved."""
    if not store._transient(exc):
        return False
    try:
        tail = await store._tail()
    except Exception:  # cannot read the tail now (the same fault, say): rely on the
        return True    # UNIQUE(seq) backstop, which refuses the next batch if it moved
    return tail == (store.last_seq, store._last_hash)


def _note_failure(store: EventLog, exc: Exception, transient: bool,
                  accepted: list[tuple[_Pending, list[ev.Envelope]]], n_rows: int) -> None:
    store.failed_commits += 1
    store.degraded = True
    store.last_error = str(exc) or type(exc).__name__
    store.last_error_at_ms = max(p.at_ms for p, _ in accepted)
    request_ids = [e.event.request_id for _, envs in accepted for e in envs
                   if isinstance(e.event, ev.ApiCallRecorded)]
    log.error("event_log_commit_failed", error=store.last_error,
              error_type=type(exc).__name__, transient=transient,
              writer="serving" if transient else "stopped", batch_calls=len(accepted),
              batch_rows=n_rows, failed_commits=store.failed_commits,
              request_ids=request_ids[:20])


async def wipe(store: EventLog, pending: _Pending) -> None:
    try:
        await _wipe_all(store)
    except BaseException:  # the reset's caller is answered whatever broke (never waits)
        _fail(pending.future, KMSInternalException("reset failed"))
        raise
    _settle(pending.future, [])


async def _wipe_all(store: EventLog) -> None:
    try:
        if store.checkpointer is not None:  # first: a crash mid-wipe must not leave a
            store.checkpointer.wiped()      # witness the emptied log cannot match
        await store._wipe()
    except Exception as exc:
        raise LogCorrupted("wipe failed") from exc
    store._heads.clear()
    store.vault.clear()
    store._cursors.clear()
    store._held.clear()
    store.last_seq, store._last_hash = 0, GENESIS
    store._cp_rows, store._cp_since_ms = 0, None
    store._cp_count, store._last_checkpoint, store._snapshot_seq = 0, None, 0
    store._floor, store._pruned_max = 0, 0
    for fn in (*store._subscribers, *store._audit_subscribers):
        fn(None)
