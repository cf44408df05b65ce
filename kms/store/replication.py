"""The log's replication seam, below HTTP and domain rules: what a peer is served and
what a receiver appends.

Rules: a region serves only its own state events (never rows it replicated from
elsewhere, never audit facts); a receiver keeps each row's origin_region/origin_seq and
one cursor per origin, written with the rows, so a replayed or overlapping batch appends
nothing twice; a batch is checked (order, decoding) before it reaches the writer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from kms.domain import events as ev

PEER_PAGE = 500  # own state rows read per step of read_for_peer
PEER_SCAN = 10_000  # own state rows one read_for_peer looks at, at most, before it answers

log = structlog.get_logger("kms.store")


@dataclass(frozen=True, slots=True)
class ReplicatedRow:
    """An event of a region's own log as its peers get it: ``origin_seq`` is its seq in
    that log (a peer's cursor), ``body`` the msgpack exactly as stored there."""

    origin_seq: int
    stream: str
    type_name: str
    at_ms: int
    body: bytes


@dataclass(frozen=True, slots=True)
class CursorChange:
    """Store how far this log holds ``origin_region``'s events (with the batch's rows)."""

    origin_region: str
    origin_seq: int


@dataclass(frozen=True, slots=True)
class ReplicatedBatch:
    """A peer's rows, checked and decoded, on their way to the writer."""

    origin_region: str
    rows: tuple[tuple[ReplicatedRow, ev.Event], ...]
    through: int  # the origin's cursor once the batch is in


def checked_batch(region: str, origin_region: str, rows: Sequence[ReplicatedRow],
                  through: int | None) -> ReplicatedBatch:
    """``rows`` from ``origin_region`` ready to append to ``region``'s log, or ValueError:
    this region's own origin, rows not in increasing origin_seq order, a body that does
    not decode (it would make the log refuse to open), ``through`` below the last row."""
    if not origin_region or origin_region == region:
        raise ValueError(f"cannot replicate from origin region {origin_region!r}")
    out: list[tuple[ReplicatedRow, ev.Event]] = []
    last = 0
    for row in rows:
        if row.origin_seq <= last:
            raise ValueError("replicated rows must come in increasing origin_seq order")
        try:
            event = ev.decode(row.type_name, row.body)
        except Exception as exc:
            raise ValueError(f"origin_seq {row.origin_seq} does not decode: {exc}") from exc
        out.append((row, event))
        last = row.origin_seq
    if through is not None and through < last:
        raise ValueError("through is below the batch's last origin_seq")
    return ReplicatedBatch(origin_region, tuple(out), max(last, through or 0))


def merged_cursors(stored: dict[str, int], held: dict[str, int]) -> dict[str, int]:
    """The cursors to resume from: the chained rows are the authority, and a stored
    cursor may run ahead of them (past rows the peer filtered out) but never behind, or
    the next copy of a held row would be appended again."""
    for origin, seq in held.items():
        if stored.get(origin, 0) < seq:
            log.warning("replication_cursor_behind_rows", origin_region=origin,
                        stored=stored.get(origin, 0), rows=seq)
    return {o: max(stored.get(o, 0), held.get(o, 0)) for o in {*stored, *held}}


async def peer_page(read_own: Callable[[int, int], Awaitable[list[ReplicatedRow]]],
                    complete: int, after_seq: int, streams: Callable[[str], bool],
                    limit: int) -> tuple[list[ReplicatedRow], int]:
    """Up to ``limit`` rows of ``read_own`` after ``after_seq`` that ``streams`` accepts,
    and the cursor the answer is complete up to: the last row looked at, or ``complete``
    (the log's last seq before the reads) once every row was looked at."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    page_size = max(limit, PEER_PAGE)
    out: list[ReplicatedRow] = []
    cursor, looked = after_seq, 0
    while True:
        page = await read_own(cursor, page_size)
        for row in page:
            cursor = row.origin_seq
            if streams(row.stream):
                out.append(row)
                if len(out) == limit:
                    return out, cursor
        looked += len(page)
        if len(page) < page_size:
            return out, max(cursor, complete)
        if looked >= PEER_SCAN:
            return out, cursor
