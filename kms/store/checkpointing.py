"""Signed checkpoints and projection snapshots, as the log's writer makes them and its
start-up restores them (functions of an ``EventLog``, called by kms.store.log/startup).

Rules: a checkpoint is written in its batch's transaction, at intervals the checkpointer
decides; a snapshot is taken only at a checkpoint the projections have folded exactly, and a
snapshot is used only if bound to a verified checkpoint, signed, and of this code's version
and schema. Trouble with a witness or a snapshot is logged, never fails a call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from kms.audit.checkpoints import Checkpoint
from kms.store import snapshot as snapshots
from kms.store.chain import _Row
from kms.store.snapshot import Projection

if TYPE_CHECKING:
    from kms.store.log import EventLog

log = structlog.get_logger("kms.store")


# -- signed checkpoints -----------------------------------------------------------------------
def checkpoint_due(store: EventLog, rows: list[_Row], seq: int, prev: bytes, *,
                   force: bool = False) -> Checkpoint | None:
    """The signed checkpoint of the head a batch of ``rows`` ends at, when one is due."""
    cp = store.checkpointer
    if cp is None or seq == 0 or not rows and not force:
        return None
    at_ms = max([r[6] for r in rows] or [store._last_at_ms])
    since = store._cp_since_ms if store._cp_since_ms is not None else at_ms
    if not force and not cp.due(store._cp_rows + len(rows), at_ms - since):
        return None
    return cp.make(seq, prev, at_ms)


def counted(store: EventLog, rows: list[_Row], checkpoint: Checkpoint | None) -> None:
    if rows:
        store._last_at_ms = rows[-1][6]
    if checkpoint is not None:
        store._cp_rows, store._cp_since_ms = 0, checkpoint.at_ms
        store._last_checkpoint = checkpoint
    else:
        store._cp_rows += len(rows)
        if store._cp_since_ms is None and rows:
            store._cp_since_ms = rows[0][6]


async def witness(store: EventLog, checkpoint: Checkpoint) -> None:
    """Record a committed checkpoint beside the log; trouble here is logged, never
    fails the calls (they are durable; the witness only lags)."""
    assert store.checkpointer is not None
    try:
        await store.checkpointer.committed(checkpoint)
    except OSError as exc:
        log.warning("checkpoint_witness_failed", error=str(exc), seq=checkpoint.seq)


async def final_checkpoint(store: EventLog) -> None:
    """At clean shutdown: sign the head if rows came after the last checkpoint, and
    snapshot the projections at it (so the next start decodes nothing)."""
    if store.checkpointer is None:
        return
    last = store._last_checkpoint
    if store._cp_rows == 0:
        if last is not None and last.seq == store.last_seq != store._snapshot_seq:
            await write_snapshot(store, last)
        return
    checkpoint = checkpoint_due(store, [], store.last_seq, store._last_hash, force=True)
    if checkpoint is None:
        return
    try:
        await store._persist([], [checkpoint])
    except Exception as exc:  # the log stays valid; it just ends unsigned
        log.warning("final_checkpoint_failed", error=str(exc) or type(exc).__name__)
        return
    counted(store, [], checkpoint)
    await witness(store, checkpoint)
    await write_snapshot(store, checkpoint)


# -- projection snapshots ---------------------------------------------------------------------
def projections_of(store: EventLog) -> list[Projection]:
    return [fn for fn in (*store._subscribers, *store._audit_subscribers)
            if isinstance(fn, Projection)]


def projection_schema(store: EventLog) -> str:
    return snapshots.schema(snapshots.LogMarks,
                            *sorted((p.snapshot_type for p in projections_of(store)),
                                    key=lambda t: t.__qualname__))


async def restore_snapshot(store: EventLog, checkpoints: dict[int, Checkpoint],
                           ) -> snapshots.Snapshot | None:
    """Restore every projection (and the log's heads) from the newest usable stored
    snapshot; None (projections untouched) when there is none."""
    cp = store.checkpointer
    if cp is None:
        return None
    try:
        stored_snapshots = await store._snapshots()
    except Exception as exc:  # noqa: BLE001  (unreadable: the rows are the authority)
        log.warning("snapshot_unusable", reason=f"unreadable: {exc}", fallback="every row")
        return None
    for stored in stored_snapshots:
        try:
            marks, data = usable(store, stored, checkpoints)
        except snapshots.SnapshotUnusable as exc:
            log.warning("snapshot_unusable", snapshot_seq=stored.seq, reason=str(exc),
                        fallback="an older snapshot, else every row")
            continue
        projections = projections_of(store)
        try:
            for p in projections:
                p.restore(data[p.snapshot_name])
        except Exception as exc:  # noqa: BLE001  (any decode trouble: replay instead)
            for p in projections:
                p(None)  # back to empty, as a full replay expects
            log.warning("snapshot_unusable", snapshot_seq=stored.seq,
                        reason=f"a projection did not decode: {type(exc).__name__}: {exc}",
                        fallback="an older snapshot, else every row")
            continue
        store._heads.update(marks.heads)
        store._held = dict(marks.held)
        store._last_at_ms = marks.last_at_ms
        return stored
    return None


def usable(store: EventLog, stored: snapshots.Snapshot, checkpoints: dict[int, Checkpoint],
           ) -> tuple[snapshots.LogMarks, dict[str, object]]:
    cp = store.checkpointer
    assert cp is not None
    if stored.version != snapshots.VERSION:
        raise snapshots.SnapshotUnusable(f"version {stored.version}, this code reads "
                                         f"version {snapshots.VERSION}")
    signed = checkpoints.get(stored.seq)
    if signed is None or signed.head != stored.head:
        raise snapshots.SnapshotUnusable("no signed checkpoint at its seq names its hash")
    if snapshots.digest_of(stored.body) != stored.digest:
        raise snapshots.SnapshotUnusable("its body does not match its digest")
    if not cp.signed(snapshots.message(store.region, stored.seq, stored.head, stored.version,
                                       stored.digest), stored.signature):
        raise snapshots.SnapshotUnusable("its signature does not verify")
    try:
        schema_id, marks, data = snapshots.unpack_body(stored.body)
    except Exception as exc:  # noqa: BLE001
        raise snapshots.SnapshotUnusable(f"undecodable: {type(exc).__name__}") from None
    if schema_id != projection_schema(store):
        raise snapshots.SnapshotUnusable("written for another shape of the projections")
    missing = [p.snapshot_name for p in projections_of(store) if p.snapshot_name not in data]
    if missing:
        raise snapshots.SnapshotUnusable(f"it lacks {', '.join(missing)}")
    return marks, data


def snapshot_due(store: EventLog, checkpoint: Checkpoint, *, final: bool = False) -> bool:
    cp = store.checkpointer
    if cp is None:
        return False
    store._cp_count += 1
    return final or (cp.snapshot_every > 0 and store._cp_count >= cp.snapshot_every)


async def write_snapshot(store: EventLog, checkpoint: Checkpoint) -> None:
    """Store a snapshot of every projection as of ``checkpoint`` (the projections have
    folded exactly the rows through its seq); trouble is logged, never fails a call."""
    cp = store.checkpointer
    if cp is None or checkpoint.seq != store.last_seq:  # the projections are past it
        return
    try:
        marks = snapshots.LogMarks(dict(store._heads), dict(store._held), store._last_at_ms)
        body = snapshots.pack_body(projection_schema(store), marks,
                                   {p.snapshot_name: p.snapshot() for p in
                                    projections_of(store)})
        digest = snapshots.digest_of(body)
        fingerprint, signature = cp.sign(snapshots.message(
            store.region, checkpoint.seq, checkpoint.head, snapshots.VERSION, digest))
        await store._persist_snapshot(snapshots.Snapshot(
            checkpoint.seq, checkpoint.head, snapshots.VERSION, digest, fingerprint,
            signature, body))
    except Exception as exc:  # noqa: BLE001  (the log is valid without it)
        log.warning("snapshot_failed", error=str(exc) or type(exc).__name__,
                    seq=checkpoint.seq)
        return
    store._cp_count, store._snapshot_seq = 0, checkpoint.seq
    log.info("snapshot_written", seq=checkpoint.seq, bytes=len(body))
