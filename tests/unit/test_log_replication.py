"""The log's replication contract, run against SqliteLog and MemoryLog alike: what a
region serves its peers (``read_for_peer``) and how a receiver appends it
(``append_replicated``): origin kept, local seqs, one cursor per origin, replays no-ops.

Rules: every log is opened through the ``backend`` fixture (the contract suite's backends,
taught to open an origin region's log and to carry cursors across a reopen) and closed by
it; an origin's rows reach a receiver only the way a peer would get them, by read_for_peer.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from kms.domain import events as ev
from kms.domain.errors import KMSInternalException
from kms.store import replication
from kms.store.log import AUDIT_STREAM, Append, EventLog, MemoryLog, ReplicatedRow
from kms.store.sqlite import SqliteLog
from tests.unit.test_log_contract import (
    REGION,
    MemoryBackend,
    Recorder,
    SqliteBackend,
    audit,
    chain_ok,
    described,
    enabled,
)

ORIGIN = "eu-west-1"
THIRD = "ap-southeast-2"
SHARED = "key/mrk-1"


def shared(stream: str) -> bool:
    return stream.startswith("key/mrk-")


class ReplicationSqlite(SqliteBackend):
    def open_origin_log(self) -> EventLog:
        return SqliteLog(self.path.with_name("origin.sqlite3"), ORIGIN)

    def set_stored_cursor(self, log: EventLog, origin: str, seq: int) -> None:
        with closing(sqlite3.connect(self.path)) as db, db:
            db.execute("UPDATE replication_cursors SET origin_seq = ? WHERE origin_region = ?",
                       (seq, origin))


class ReplicationMemory(MemoryBackend):
    def _new(self, previous: EventLog | None) -> EventLog:
        log = super()._new(previous)
        if previous is not None:  # the stored cursors and vault outlive the process, too
            assert isinstance(log, MemoryLog) and isinstance(previous, MemoryLog)
            log.stored_cursors, log.stored_vault = previous.stored_cursors, previous.stored_vault
        return log

    def open_origin_log(self) -> EventLog:
        return MemoryLog(ORIGIN)

    def set_stored_cursor(self, log: EventLog, origin: str, seq: int) -> None:
        assert isinstance(log, MemoryLog)
        log.stored_cursors[origin] = seq


Backend = ReplicationSqlite | ReplicationMemory


@pytest.fixture(params=["sqlite", "memory"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    b: Backend = ReplicationSqlite(tmp_path / "events.sqlite3") if request.param == "sqlite" \
        else ReplicationMemory()
    yield b
    await b.close_all()


async def open_origin(b: Backend) -> EventLog:
    log = b.open_origin_log()
    b.opened.append(log)
    await log.open()
    return log


async def origin_with_history(b: Backend) -> EventLog:
    """An origin log holding, in order: shared key events, a regional key's, an alias's,
    audit facts, and a row it replicated from a third region (which it must not serve)."""
    origin = await open_origin(b)
    await origin.append([Append(SHARED, (enabled("mrk-1"),), 0),
                         Append("key/local", (enabled("local"),), 0),
                         Append(AUDIT_STREAM, (audit(1),))], at_ms=1_000)
    await origin.append([Append(SHARED, (described("mrk-1", "one"),), 1),
                         Append("alias/x", (enabled("alias"),), 0),
                         Append(AUDIT_STREAM, (audit(2),))], at_ms=2_000)
    third = await origin.append_replicated(THIRD, [ReplicatedRow(
        7, "key/mrk-3", "KeyEnabled", 1_500, ev.encode(enabled("mrk-3")))])
    assert [(e.origin_region, e.origin_seq) for e in third] == [(THIRD, 7)]
    await origin.append([Append("key/mrk-2", (enabled("mrk-2"),), 0),
                         Append("key/local", (described("local", "x"),), 1),
                         Append(AUDIT_STREAM, (audit(3),))], at_ms=3_000)
    return origin


async def pull_all(origin: EventLog, after: int = 0, limit: int = 100,
                   ) -> tuple[list[ReplicatedRow], int]:
    rows, cursor = await origin.read_for_peer(after, shared, limit)
    return rows, cursor


async def test_a_peer_is_served_own_filtered_state_rows_and_a_cursor_past_the_rest(
        backend: Backend) -> None:
    origin = await origin_with_history(backend)
    stored = {r[0]: r for r in await origin.read_rows(0, 100)}

    rows, cursor = await origin.read_for_peer(0, shared, 100)
    assert [(r.origin_seq, r.stream, r.type_name) for r in rows] == [
        (1, SHARED, "KeyEnabled"), (4, SHARED, "KeyDescriptionUpdated"),
        (8, "key/mrk-2", "KeyEnabled")]
    for r in rows:  # seq, stream, type, at_ms and body exactly as stored
        assert (r.origin_seq, r.stream, r.type_name, r.at_ms, r.body) == tuple(
            stored[r.origin_seq][i] for i in (0, 1, 3, 6, 7))
    assert cursor == origin.last_seq == 10  # past the trailing regional and audit rows

    everything, _ = await origin.read_for_peer(0, lambda stream: True, 100)
    assert {r.stream for r in everything} == {SHARED, "key/mrk-2", "key/local", "alias/x"}
    assert 7 not in {r.origin_seq for r in everything}  # the third region's row stays here
    assert await origin.read_for_peer(0, lambda stream: False, 100) == ([], 10)
    assert await origin.read_for_peer(10, shared, 100) == ([], 10)
    with pytest.raises(ValueError):
        await origin.read_for_peer(0, shared, 0)


async def test_a_peer_pages_through_with_the_cursor_it_is_given(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    origin = await origin_with_history(backend)
    first, cursor = await origin.read_for_peer(0, shared, 1)
    assert ([r.origin_seq for r in first], cursor) == ([1], 1)  # complete up to its last row

    # A scan that stops early (here after 2 own state rows) still answers with a cursor
    # past what it looked at, so a peer gets through long runs of filtered rows.
    monkeypatch.setattr(replication, "PEER_PAGE", 2)
    monkeypatch.setattr(replication, "PEER_SCAN", 2)
    got, cursors, after = [], [], 0
    while True:
        rows, after = await origin.read_for_peer(after, lambda s: s == "key/mrk-2", 2)
        got += rows
        cursors.append(after)
        if after == origin.last_seq:
            break
    assert [r.origin_seq for r in got] == [8]
    assert cursors == [2, 5, 9, 10]  # past each page of own state rows, then to the end


async def test_replicated_rows_keep_their_origin_at_local_seqs_and_versions(
        backend: Backend) -> None:
    origin = await origin_with_history(backend)
    sent, through = await pull_all(origin)
    live = Recorder()
    log = await backend.open(subscriber=live)
    await log.append([Append(SHARED, (enabled("local twin"),), 0),
                      Append(AUDIT_STREAM, (audit(9),))], at_ms=50)

    envs = await log.append_replicated(ORIGIN, sent, through)
    assert [(e.seq, e.stream, e.version, e.origin_region, e.origin_seq, e.at_ms) for e in envs] \
        == [(3, SHARED, 2, ORIGIN, 1, 1_000), (4, SHARED, 3, ORIGIN, 4, 2_000),
            (5, "key/mrk-2", 1, ORIGIN, 8, 3_000)]
    assert [e.event for e in envs] == [
        enabled("mrk-1"), described("mrk-1", "one"), enabled("mrk-2")]
    assert live.envelopes[1:] == envs  # subscribers get them like local state events
    assert (log.cursor(ORIGIN), log.cursor(THIRD), log.last_seq) == (10, 0, 5)
    rows = await log.read_rows(0, 100)
    assert chain_ok(rows)
    assert [r[7] for r in rows[2:]] == [r.body for r in sent]  # bodies unchanged
    # and what this region replicated is never served on to its own peers
    assert [r.stream for r in (await log.read_for_peer(0, lambda s: True, 100))[0]] == [SHARED]


async def test_a_replayed_batch_is_a_no_op_and_the_writer_keeps_serving(
        backend: Backend) -> None:
    origin = await origin_with_history(backend)
    sent, through = await pull_all(origin)
    live = Recorder()
    log = await backend.open(subscriber=live)
    first = await log.append_replicated(ORIGIN, sent, through)
    rows, batches = await log.read_rows(0, 100), log.batches

    for _ in range(2):
        assert await log.append_replicated(ORIGIN, sent, through) == []
    assert await log.read_rows(0, 100) == rows
    assert (log.last_seq, log.cursor(ORIGIN), log.batches) == (3, 10, batches)
    assert live.envelopes == first
    assert log.writable
    after = await log.append([Append("key/next", (enabled("next"),), 0)], at_ms=4_000)
    assert [(e.seq, e.origin_region, e.origin_seq) for e in after] == [(4, REGION, 4)]


async def test_an_overlapping_batch_appends_only_its_new_tail(backend: Backend) -> None:
    origin = await origin_with_history(backend)
    sent, _ = await pull_all(origin)
    log = await backend.open()
    await log.append_replicated(ORIGIN, sent[:2])
    assert log.cursor(ORIGIN) == 4

    tail = await log.append_replicated(ORIGIN, sent)  # rows 1 and 4 again, then 8
    assert [(e.seq, e.origin_seq) for e in tail] == [(3, 8)]
    assert log.cursor(ORIGIN) == 8
    assert [r[5] for r in await log.read_rows(0, 100)] == [1, 4, 8]
    assert chain_ok(await log.read_rows(0, 100))


async def test_the_cursor_moves_past_filtered_rows_durably_and_survives_reopen(
        backend: Backend) -> None:
    origin = await origin_with_history(backend)
    sent, through = await pull_all(origin)
    log = await backend.open()
    assert await log.append_replicated(ORIGIN, [], through=6) == []  # nothing passed, yet
    assert (log.cursor(ORIGIN), log.last_seq) == (6, 0)
    envs = await log.append_replicated(ORIGIN, sent, through)  # 1 and 4 are behind 6
    assert [e.origin_seq for e in envs] == [8]
    await log.close()

    replayed = Recorder()
    again = await backend.open(log, subscriber=replayed)  # open verifies the chain
    assert again.cursor(ORIGIN) == through == 10
    assert replayed.calls == [envs]  # replicated envelopes, origin fields and all
    assert await again.append_replicated(ORIGIN, sent, through) == []
    assert again.last_seq == 1


async def test_local_and_replicated_appends_share_one_writer_and_one_chain(
        backend: Backend) -> None:
    origin = await open_origin(backend)
    for i in range(30):
        await origin.append([Append(f"key/mrk-{i}", (enabled(str(i)),), 0),
                             Append(AUDIT_STREAM, (audit(i),))], at_ms=i)
    sent, _ = await pull_all(origin)
    live = Recorder()
    log = await backend.open(subscriber=live)
    batches = log.batches
    calls = []  # queued in this order: local appends with replicated batches between
    for i in range(30):
        calls.append(log.append([Append(f"key/{i}", (enabled(str(i)),), 0),
                                 Append(AUDIT_STREAM, (audit(i),))], at_ms=100 + i))
        if i % 5 == 0:
            calls.append(log.append_replicated(ORIGIN, sent[i:i + 5]))
    calls.append(log.append_replicated(ORIGIN, sent[:10]))  # queued behind them: a no-op
    results = await asyncio.gather(*calls)
    assert results[-1] == []
    assert log.batches - batches < len(results)  # group committed together
    rows = await log.read_rows(0, 1_000)
    assert len(rows) == 30 * 2 + 30 and chain_ok(rows)
    assert [r[5] for r in rows if r[4] == ORIGIN] == [r.origin_seq for r in sent]
    assert log.cursor(ORIGIN) == sent[-1].origin_seq
    assert sorted(e.seq for e in live.envelopes) == [r[0] for r in rows if r[1] != AUDIT_STREAM]
    await log.close()
    again = await backend.open(log)
    assert again.last_seq == 90 and again.cursor(ORIGIN) == sent[-1].origin_seq


async def test_a_batch_the_log_must_refuse_raises_value_error_and_appends_nothing(
        backend: Backend) -> None:
    origin = await origin_with_history(backend)
    sent, _ = await pull_all(origin)
    log = await backend.open()
    body = ev.encode(enabled("x"))
    refused = [
        (REGION, sent),  # our own events never come back as a peer's
        ("", sent),
        (ORIGIN, [sent[1], sent[0]]),  # out of origin_seq order
        (ORIGIN, [sent[0], sent[0]]),
        (ORIGIN, [ReplicatedRow(0, SHARED, "KeyEnabled", 1, body)]),
        (ORIGIN, [ReplicatedRow(1, AUDIT_STREAM, "ApiCallRecorded", 1,
                                ev.encode(audit(1)))]),
        (ORIGIN, [ReplicatedRow(1, SHARED, "KeyEnabled", 1, b"\xc1not msgpack")]),
        (ORIGIN, [ReplicatedRow(1, SHARED, "NoSuchEvent", 1, body)]),
    ]
    for origin_region, rows in refused:
        with pytest.raises(ValueError):
            await log.append_replicated(origin_region, rows)
    with pytest.raises(ValueError):
        await log.append_replicated(ORIGIN, sent, through=sent[-1].origin_seq - 1)
    assert (log.last_seq, log.cursor(ORIGIN), await log.read_rows(0, 10)) == (0, 0, [])
    assert len(await log.append_replicated(ORIGIN, sent)) == 3


async def test_a_stored_cursor_behind_its_rows_is_caught_up_at_open(backend: Backend) -> None:
    """The chained rows are the authority: a cursor that fell behind them (edited by hand)
    must not let their next copy in."""
    origin = await origin_with_history(backend)
    sent, _ = await pull_all(origin)
    log = await backend.open()
    await log.append_replicated(ORIGIN, sent)
    await log.close()
    backend.set_stored_cursor(log, ORIGIN, 0)
    again = await backend.open(log)
    assert again.cursor(ORIGIN) == 8
    assert await again.append_replicated(ORIGIN, sent) == [] and again.writable


async def test_reset_forgets_the_cursors_with_the_rows(backend: Backend) -> None:
    origin = await origin_with_history(backend)
    sent, through = await pull_all(origin)
    log = await backend.open()
    await log.append_replicated(ORIGIN, sent, through)
    await log.reset()
    assert log.cursor(ORIGIN) == 0
    assert len(await log.append_replicated(ORIGIN, sent, through)) == 3
    await log.close()
    assert (await backend.open(log)).cursor(ORIGIN) == 10


async def test_a_second_insert_of_an_origin_row_trips_unique_but_a_replay_does_not(
        tmp_path: Path) -> None:
    """What a receiver without cursors would do (insert the row again) the schema refuses,
    and such a refusal stops the writer; the cursor makes the replay a no-op instead."""
    b = ReplicationSqlite(tmp_path / "events.sqlite3")
    try:
        origin = await origin_with_history(b)
        sent, through = await pull_all(origin)
        log = await b.open()
        await log.append_replicated(ORIGIN, sent, through)
        await log.close()
        with closing(sqlite3.connect(b.path)) as db, db:
            row = db.execute("SELECT * FROM events WHERE seq = 1").fetchone()
            with pytest.raises(sqlite3.IntegrityError,
                               match="UNIQUE constraint failed: events.origin_region"):
                db.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)",
                           (4, "key/mrk-1", 9, *row[3:]))
        again = await b.open(log)
        assert await again.append_replicated(ORIGIN, sent, through) == []
        ok = await again.append([Append("key/next", (enabled("next"),), 0)], at_ms=1)
        assert again.writable and [e.seq for e in ok] == [4]
    finally:
        await b.close_all()


async def test_a_peer_read_is_bounded_by_the_origin_index_not_a_scan_and_sort(
        tmp_path: Path) -> None:
    """read_for_peer runs on the writer's connection for every pull: SQLite must seek into
    UNIQUE (origin_region, origin_seq) at the cursor and read in its order, never sort
    every own row in a temporary B-tree (0.137 s a call at 1M audit rows)."""
    b = ReplicationSqlite(tmp_path / "events.sqlite3")
    try:
        origin = await origin_with_history(b)
        assert isinstance(origin, SqliteLog)
        statements: list[str] = []
        conn = origin.db._conn
        await origin.db._execute(conn.set_trace_callback, statements.append)
        rows, _ = await pull_all(origin, after=1)
        await origin.db._execute(conn.set_trace_callback, None)
        assert [r.stream for r in rows] == [SHARED, "key/mrk-2"]
        reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        assert reads, statements
        for sql in reads:
            plan = " | ".join(str(r[3]) for r in await origin.db.execute_fetchall(
                "EXPLAIN QUERY PLAN " + sql))
            assert "USING INDEX sqlite_autoindex_events_2 (origin_region=? AND origin_seq>?)" \
                in plan, plan
            assert "TEMP B-TREE" not in plan, plan
    finally:
        await b.close_all()


async def test_a_cancelled_caller_never_stops_the_writer_nor_loses_a_queued_reset(
        backend: Backend) -> None:
    """A puller cancelled (a dev reset stops them) while its replayed batch, or a caller
    whose append conflicts, waits in the queue: the writer still settles everything queued
    behind it (the reset's wipe first of all) and keeps serving."""
    origin = await origin_with_history(backend)
    sent, through = await pull_all(origin)
    log = await backend.open()
    await log.append_replicated(ORIGIN, sent, through)
    await log.append([Append("key/local", (enabled("local"),), 0)], at_ms=1)

    replay = asyncio.create_task(log.append_replicated(ORIGIN, sent, through))
    conflicting = asyncio.create_task(
        log.append([Append("key/local", (described("local", "late"),), 0)], at_ms=2))
    await asyncio.sleep(0)  # both queued, the writer not yet woken
    replay.cancel()
    conflicting.cancel()
    await asyncio.wait_for(log.reset(), 30)  # a bound on a hang, not a timing assertion
    for task in (replay, conflicting):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert log.writable and (log.last_seq, log.cursor(ORIGIN)) == (0, 0)
    assert len(await log.append_replicated(ORIGIN, sent, through)) == 3


async def test_a_reset_whose_wipe_breaks_is_answered_and_the_writer_says_why_it_stopped(
        backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    """A subscriber raising on the wipe (or the wipe itself failing) fails the reset's
    caller instead of leaving it waiting, and the stopped writer is logged."""
    def breaks_on_wipe(envelopes: object) -> None:
        if envelopes is None:
            raise RuntimeError("subscriber broke")

    log = await backend.open()
    log.subscribe(breaks_on_wipe)
    with pytest.raises(KMSInternalException):
        await asyncio.wait_for(log.reset(), 30)  # a bound on a hang, not a timing assertion
    await asyncio.sleep(0)  # the writer's done-callback
    assert not log.writable
    assert "event_log_writer_stopped" in capsys.readouterr().out
