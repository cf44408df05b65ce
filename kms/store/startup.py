"""Start-up: verify the stored log against its hash chain and signed checkpoints, and
replay it to the log's subscribers (kms.store.log calls ``replay`` from ``open``).

Rules: rows after the last signed checkpoint, and ``recheck`` rows before it, are re-hashed;
the rest are link-checked; every checkpoint is verified (signature, and the hash at its seq);
a log that ends before its last checkpoint or its witness file is refused (``LogCorrupted``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from kms.audit.checkpoints import WITNESS_FILE
from kms.domain import events as ev
from kms.store import checkpointing
from kms.store.chain import AUDIT_STREAM, GENESIS, LogCorrupted, row_hash
from kms.store.replication import merged_cursors

if TYPE_CHECKING:
    from kms.store.log import EventLog

REPLAY_CHUNK = 10_000  # rows read, and audit facts handed on, per step of the start-up replay

log = structlog.get_logger("kms.store")


async def replay(store: EventLog) -> None:
    """Verify and decode the stored rows a page at a time. State subscribers get the
    state events in one call once the chain verified; audit facts (most of the log) go
    to audit subscribers page by page and are not kept.

    With a usable snapshot (kms.store.snapshot: bound to a verified checkpoint, signed,
    of this code's version and schema), the projections are restored from it and only
    the rows after its seq are decoded and handed on; rows before it are not read, but
    for the ``recheck`` window. Any trouble with a snapshot is logged and every row is
    replayed instead.

    Rows after the last signed checkpoint, and ``recheck`` rows before it, are re-hashed;
    rows read before that are link-checked (each names the stored hash before it), which
    the checkpoints' signatures vouch for; ``kms audit verify --data-dir`` re-hashes all."""
    batch: list[ev.Envelope] = []
    vault, cursors = await store._load()
    store.vault.clear()  # the keyring holds this very dict
    store.vault.update(vault)
    cp = store.checkpointer
    checkpoints = {c.seq: c for c in await store._checkpoints()}
    last_cp = max(checkpoints, default=0)
    pruned = await store._pruned_through()
    recheck_from = max(0, last_cp - 1 - cp.recheck) if cp and last_cp else 0
    try:
        witness = cp.witness() if cp is not None else None
    except ValueError as exc:
        raise LogCorrupted(str(exc)) from None
    for c in checkpoints.values():
        if cp is not None and not cp.verifies(c):
            raise LogCorrupted(f"the signed checkpoint at seq {c.seq} does not verify "
                               "under the audit signing key (a rewritten chain?)")
    restored = await checkpointing.restore_snapshot(store, checkpoints)
    snap_seq = restored.seq if restored is not None else 0
    # The first row read (the anchor) is trusted for its hash only: the re-hashed rows
    # after it reach a signed checkpoint, which vouches for it.
    anchor = min(snap_seq, recheck_from) if restored is not None else 0
    after = max(0, anchor - 1)
    prev: bytes | None = GENESIS if anchor == 0 else None
    prev_seq = after
    read = rehashed = decoded = 0
    handed_on = False
    held: dict[str, int] = dict(store._held)  # per origin, the last origin_seq rows reached
    while rows := await store.read_rows(after, REPLAY_CHUNK):
        after = rows[-1][0]
        audit: list[ev.Envelope] = []
        for row in rows:
            seq, stream, version, type_name, origin_region, origin_seq, at_ms, body, p, h \
                = row
            linked = seq > pruned or seq == prev_seq + 1  # a prune leaves gaps before its cut
            if prev is None and seq != anchor and anchor > pruned:
                raise LogCorrupted(f"hash chain broken at seq {anchor}: the row is missing")
            if (linked and prev is not None and p != prev) or (
                    seq > recheck_from and row_hash(
                        p, seq, stream, version, type_name, origin_region, origin_seq,
                        at_ms, body) != h):
                raise LogCorrupted(f"hash chain broken at seq {seq}")
            signed = checkpoints.get(seq)
            if signed is not None and signed.head != h:
                raise LogCorrupted(f"hash chain rewritten: seq {seq} is not the row its "
                                   "signed checkpoint names")
            rehashed += seq > recheck_from
            prev, prev_seq = h, seq
            read += 1
            store.last_seq = seq
            if seq <= snap_seq:  # folded into the snapshot: verified, not decoded
                continue
            store._last_at_ms = at_ms
            store._heads[stream] = version
            if origin_region != store.region:
                held[origin_region] = max(held.get(origin_region, 0), origin_seq)
            try:
                event = ev.decode(type_name, body)
            except Exception as exc:  # a row that hashes right but will not decode
                raise LogCorrupted(f"undecodable event at seq {seq}: {exc}") from exc
            decoded += 1
            (audit if stream == AUDIT_STREAM else batch).append(
                ev.Envelope(seq, stream, version, origin_region, origin_seq, at_ms, event))
        if audit:
            handed_on = True
            for fn in store._audit_subscribers:
                fn(audit)
    stored, below = await store._count(max(0, anchor - 1))
    if below or stored != read:  # a row below seq 1, which paging never reads
        raise LogCorrupted(f"{stored + below - read} stored rows are outside the hash chain")
    if last_cp > store.last_seq:
        raise LogCorrupted(f"missing tail: the log ends at seq {store.last_seq}, but a "
                           f"signed checkpoint covers it up to seq {last_cp}")
    if witness is not None and checkpoints.get(witness.seq) != witness:
        raise LogCorrupted(
            f"missing tail: the log ends at seq {store.last_seq}, but {WITNESS_FILE} records "
            f"the signed checkpoint at seq {witness.seq}, which the log does not hold")
    store._last_hash = prev if prev is not None else GENESIS
    store._held = held
    store._cp_rows = store.last_seq - last_cp
    store._cp_since_ms = checkpoints[last_cp].at_ms if last_cp else None
    store._cp_count = 0
    store._last_checkpoint = checkpoints[last_cp] if last_cp else None
    store._snapshot_seq = snap_seq
    store.start_rehashed = rehashed
    store.start_decoded = decoded
    store.start_snapshot_seq = snap_seq
    store._cursors = merged_cursors(cursors, held)
    log.info("log_verified", region=store.region, rows=store.last_seq, rows_read=read,
             rows_rehashed=rehashed, rows_link_checked=read - rehashed, rows_decoded=decoded,
             snapshot_seq=snap_seq, checkpoint_seq=last_cp,
             checkpoints=len(checkpoints), pruned_through=pruned)
    if not handed_on:  # an empty replay is still a replay
        for fn in store._audit_subscribers:
            fn([])
    for fn in store._subscribers:
        fn(batch)
