"""One contract suite for every event-log backend: SqliteLog and MemoryLog must
behave alike (round trip, optimistic concurrency, group commit, hash chain, reset).

Rules: each test opens logs through the ``backend`` fixture only, so a new backend
joins the suite by adding one class; every log a test opens is closed by the fixture.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from kms.domain import events as ev
from kms.domain.errors import ConflictingWrite, KMSInternalException
from kms.store.log import (
    AUDIT_STREAM,
    GENESIS,
    REPLAY_CHUNK,
    Append,
    EventLog,
    LogCorrupted,
    MemoryLog,
    Subscriber,
    row_hash,
)
from kms.store.sqlite import SqliteLog
from kms.store.usage import KeyUsage

REGION = "us-east-1"


class Recorder:
    """A subscriber that keeps what it was told; ``None`` is kept as a wipe marker."""

    def __init__(self) -> None:
        self.calls: list[list[ev.Envelope] | None] = []

    def __call__(self, envelopes: Sequence[ev.Envelope] | None) -> None:
        self.calls.append(None if envelopes is None else list(envelopes))

    @property
    def envelopes(self) -> list[ev.Envelope]:
        return [e for call in self.calls if call is not None for e in call]


class Backend(abc.ABC):
    """Opens a fresh log, or reopens one over the same stored rows."""

    name = ""

    def __init__(self) -> None:
        self.opened: list[EventLog] = []

    @abc.abstractmethod
    def _new(self, previous: EventLog | None) -> EventLog:
        """A log over fresh storage, or over ``previous``'s stored rows."""

    async def open(self, previous: EventLog | None = None,
                   subscriber: Recorder | None = None,
                   audit_subscriber: Subscriber | None = None) -> EventLog:
        log = self._new(previous)
        if subscriber is not None:
            log.subscribe(subscriber)
        if audit_subscriber is not None:
            log.subscribe_audit(audit_subscriber)
        self.opened.append(log)
        await log.open()
        return log

    @abc.abstractmethod
    def tamper(self, log: EventLog, seq: int) -> None:
        """Flip one byte of the stored body of row ``seq`` (the log must be closed)."""

    @abc.abstractmethod
    def replace_rows(self, log: EventLog, rows: Sequence[tuple]) -> None:  # type: ignore[type-arg]
        """Store exactly ``rows`` in place of the log's rows (the log must be closed)."""

    async def close_all(self) -> None:
        for log in self.opened:
            await log.close()


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def _new(self, previous: EventLog | None) -> EventLog:
        return SqliteLog(self.path, REGION)

    def tamper(self, log: EventLog, seq: int) -> None:
        import sqlite3

        with sqlite3.connect(self.path) as db:
            (body,) = db.execute("SELECT body FROM events WHERE seq = ?", (seq,)).fetchone()
            flipped = bytes([body[0] ^ 0x01]) + body[1:]
            db.execute("UPDATE events SET body = ? WHERE seq = ?", (flipped, seq))
        db.close()

    def replace_rows(self, log: EventLog, rows: Sequence[tuple]) -> None:  # type: ignore[type-arg]
        import sqlite3

        with sqlite3.connect(self.path) as db:
            db.execute("DELETE FROM events")
            db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        db.close()


class MemoryBackend(Backend):
    name = "memory"

    def _new(self, previous: EventLog | None) -> EventLog:
        log = MemoryLog(REGION)
        if previous is not None:
            assert isinstance(previous, MemoryLog)
            log.rows = previous.rows
        return log

    def tamper(self, log: EventLog, seq: int) -> None:
        assert isinstance(log, MemoryLog)
        i = next(i for i, r in enumerate(log.rows) if r[0] == seq)
        row = list(log.rows[i])
        row[7] = bytes([row[7][0] ^ 0x01]) + row[7][1:]
        log.rows[i] = tuple(row)  # type: ignore[assignment]

    def replace_rows(self, log: EventLog, rows: Sequence[tuple]) -> None:  # type: ignore[type-arg]
        assert isinstance(log, MemoryLog)
        log.rows[:] = [tuple(r) for r in rows]  # type: ignore[misc]


@pytest.fixture(params=["sqlite", "memory"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    b: Backend = SqliteBackend(tmp_path / "events.sqlite3") if request.param == "sqlite" \
        else MemoryBackend()
    yield b
    await b.close_all()


def enabled(key_id: str) -> ev.KeyEnabled:
    return ev.KeyEnabled(key_id=key_id)


def described(key_id: str, text: str) -> ev.KeyDescriptionUpdated:
    return ev.KeyDescriptionUpdated(key_id=key_id, description=text)


def audit(n: int) -> ev.ApiCallRecorded:
    return ev.ApiCallRecorded(request_id=f"r{n}", operation="EnableKey", principal_arn="p",
                              account="111122223333", access_key_id="AK", source_ip="",
                              user_agent="", read_only=False)


def rechained(rows: Sequence[tuple], seq: int, body: bytes) -> list[tuple]:  # type: ignore[type-arg]
    """``rows`` with row ``seq``'s body replaced and every hash recomputed: a chain that
    verifies but holds a body that does not decode."""
    out: list[tuple] = []  # type: ignore[type-arg]
    prev = GENESIS
    for row in rows:
        r = list(row)
        if r[0] == seq:
            r[7] = body
        r[8] = prev
        r[9] = prev = row_hash(prev, *r[:8])
        out.append(tuple(r))
    return out


def chain_ok(rows: Sequence[tuple]) -> bool:  # type: ignore[type-arg]
    prev = GENESIS
    for expected_seq, row in enumerate(rows, start=1):
        seq, stream, version, type_name, origin_region, origin_seq, at_ms, body, p, h = row
        if seq != expected_seq or p != prev:
            return False
        if row_hash(prev, seq, stream, version, type_name, origin_region, origin_seq, at_ms,
                    body) != h:
            return False
        prev = h
    return True


async def test_append_then_replay_gives_subscribers_the_same_envelopes(backend: Backend) -> None:
    live = Recorder()
    log = await backend.open(subscriber=live)
    assert live.calls == [[]]  # an empty replay, then live commits
    first = await log.append([Append("key/a", (enabled("a"), described("a", "one")), 0),
                              Append("key/b", (enabled("b"),), 0),
                              Append(AUDIT_STREAM, (audit(1),))], at_ms=1_000)
    second = await log.append([Append("key/a", (described("a", "two"),), 2),
                               Append(AUDIT_STREAM, (audit(2),))], at_ms=2_000)
    assert [(e.seq, e.stream, e.version) for e in first + second] == [
        (1, "key/a", 1), (2, "key/a", 2), (3, "key/b", 1), (4, AUDIT_STREAM, 1),
        (5, "key/a", 3), (6, AUDIT_STREAM, 2)]
    state = [e for e in first + second if e.stream != AUDIT_STREAM]
    assert live.envelopes == state  # subscribers never see audit facts
    await log.close()

    replayed = Recorder()
    again = await backend.open(log, subscriber=replayed)
    assert replayed.calls == [state]  # one replay batch, equal envelope for envelope
    assert (again.last_seq, again.version("key/a"), again.version("key/b"),
            again.version(AUDIT_STREAM)) == (6, 3, 1, 2)


async def test_a_stale_expected_version_conflicts_and_writes_nothing(backend: Backend) -> None:
    seen = Recorder()
    log = await backend.open(subscriber=seen)
    await log.append([Append("key/a", (enabled("a"),), 0)], at_ms=1)
    rows_before = await log.read_rows(0, 100)

    with pytest.raises(ConflictingWrite):
        await log.append([Append("key/a", (described("a", "stale"),), 0)], at_ms=2)
    # atomic across streams: the fresh half of a conflicting append is not written either
    with pytest.raises(ConflictingWrite):
        await log.append([Append("key/b", (enabled("b"),), 0),
                          Append("key/a", (described("a", "stale"),), 0),
                          Append(AUDIT_STREAM, (audit(1),))], at_ms=3)

    assert await log.read_rows(0, 100) == rows_before
    assert (log.last_seq, log.version("key/a"), log.version("key/b")) == (1, 1, 0)
    assert len(seen.envelopes) == 1
    ok = await log.append([Append("key/a", (described("a", "fresh"),), 1)], at_ms=4)
    assert [(e.seq, e.version) for e in ok] == [(2, 2)]


async def test_concurrent_appends_are_group_committed(backend: Backend) -> None:
    log = await backend.open()
    n = 200
    before = log.batches
    results = await asyncio.gather(*(
        log.append([Append(f"key/{i}", (enabled(str(i)),), 0), Append(AUDIT_STREAM, (audit(i),))],
                   at_ms=i)
        for i in range(n)))
    commits = log.batches - before
    assert 1 <= commits < n, f"{n} appends took {commits} commits"
    seqs = sorted(e.seq for envs in results for e in envs)
    assert seqs == list(range(1, 2 * n + 1))
    assert all(envs[0].version == 1 for envs in results)
    assert chain_ok(await log.read_rows(0, 10 * n))


async def test_racing_decisions_on_one_stream_let_exactly_one_win(backend: Backend) -> None:
    log = await backend.open()
    outcomes = await asyncio.gather(
        *(log.append([Append("key/a", (described("a", str(i)),), 0)], at_ms=i)
          for i in range(20)),
        return_exceptions=True)
    wins = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(wins) == 1
    assert all(isinstance(o, ConflictingWrite) for o in outcomes if o not in wins)
    assert log.version("key/a") == 1 and log.last_seq == 1


async def test_hash_chain_continues_across_reopen(backend: Backend) -> None:
    log = await backend.open()
    for i in range(3):
        await log.append([Append(f"key/{i}", (enabled(str(i)),), 0)], at_ms=i)
    await log.close()
    log = await backend.open(log)
    for i in range(3):
        await log.append([Append(f"key/{i}", (described(str(i), "x"),), 1),
                          Append(AUDIT_STREAM, (audit(i),))], at_ms=10 + i)
    await log.close()
    log = await backend.open(log)  # open verifies the whole chain again
    rows = await log.read_rows(0, 100)
    assert len(rows) == 9 and chain_ok(rows)
    assert rows[3][8] == rows[2][9]  # the first row after a reopen links to the last before


async def test_a_flipped_byte_in_any_row_is_refused_at_open(backend: Backend) -> None:
    log = await backend.open()
    for i in range(4):
        await log.append([Append(f"key/{i}", (enabled(str(i)),), 0),
                          Append(AUDIT_STREAM, (audit(i),))], at_ms=i)
    await log.close()
    for seq in (1, 4, 8):  # the first row, an audit row in the middle, the last row
        backend.tamper(log, seq)
        seen = Recorder()
        with pytest.raises(LogCorrupted):
            await backend.open(log, subscriber=seen)
        assert seen.calls == []  # nothing was replayed from a corrupt log
        backend.tamper(log, seq)  # flip it back
    fine = await backend.open(log)
    assert fine.last_seq == 8


async def test_reset_wipes_and_tells_subscribers(backend: Backend) -> None:
    seen = Recorder()
    log = await backend.open(subscriber=seen)
    await log.append([Append("key/a", (enabled("a"),), 0), Append(AUDIT_STREAM, (audit(1),))],
                     at_ms=1)
    await log.reset()
    assert seen.calls[-1] is None
    assert (log.last_seq, log.version("key/a"), await log.read_rows(0, 100)) == (0, 0, [])
    after = await log.append([Append("key/a", (enabled("a"),), 0)], at_ms=2)
    assert [(e.seq, e.version) for e in after] == [(1, 1)]
    await log.close()

    replayed = Recorder()
    again = await backend.open(log, subscriber=replayed)
    assert replayed.calls == [after]
    assert chain_ok(await again.read_rows(0, 100))


async def test_a_closed_log_refuses_appends(backend: Backend) -> None:
    log = await backend.open()
    await log.close()
    with pytest.raises(KMSInternalException):
        await log.append([Append("key/a", (enabled("a"),), 0)], at_ms=1)


async def test_audit_subscribers_get_audit_facts_at_replay_after_commits_and_on_wipe(
        backend: Backend) -> None:
    state, facts = Recorder(), Recorder()
    log = await backend.open(subscriber=state, audit_subscriber=facts)
    assert facts.calls == [[]]  # an empty replay
    first = await log.append([Append("key/a", (enabled("a"),), 0),
                              Append(AUDIT_STREAM, (audit(1), audit(2)))], at_ms=1)
    await log.append([Append("key/a", (described("a", "x"),), 1)], at_ms=2)  # no audit fact
    results = await asyncio.gather(*(log.append([Append(AUDIT_STREAM, (audit(n),))], at_ms=n)
                                     for n in range(3, 8)))
    committed = [e for envs in [first, *results] for e in envs if e.stream == AUDIT_STREAM]
    assert facts.envelopes == committed
    assert all(call for call in facts.calls[1:])  # never called with an empty batch
    assert [e.event.request_id for e in facts.envelopes] == [f"r{n}" for n in range(1, 8)]
    assert all(isinstance(e.event, ev.ApiCallRecorded) for e in facts.envelopes)
    assert [e.seq for e in facts.envelopes] == sorted(e.seq for e in facts.envelopes)
    assert all(e.stream != AUDIT_STREAM for e in state.envelopes)  # plain ones: state only
    await log.close()

    replayed_state, replayed = Recorder(), Recorder()
    again = await backend.open(log, subscriber=replayed_state, audit_subscriber=replayed)
    assert replayed.calls == [committed]  # one replay batch, equal envelope for envelope
    assert replayed_state.calls == [state.envelopes]
    await again.reset()
    assert replayed.calls[-1] is None


async def test_an_audit_row_that_will_not_decode_is_refused_at_open(backend: Backend) -> None:
    log = await backend.open()
    await log.append([Append("key/a", (enabled("a"),), 0), Append(AUDIT_STREAM, (audit(1),))],
                     at_ms=1)
    rows = await log.read_rows(0, 100)
    await log.close()
    backend.replace_rows(log, rechained(rows, 2, b"\xc1not msgpack"))
    facts = Recorder()
    with pytest.raises(LogCorrupted, match="seq 2"):
        await backend.open(log, audit_subscriber=facts)
    assert facts.calls == []



def used(n: int, key_arn: str) -> ev.ApiCallRecorded:
    return ev.ApiCallRecorded(request_id=f"u{n}", operation="Encrypt", principal_arn="p",
                              account="111122223333", access_key_id="AK", source_ip="",
                              user_agent="", read_only=False, resources=(key_arn,))


class Both:
    """An audit subscriber that records what it is told and folds it into KeyUsage."""

    def __init__(self) -> None:
        self.recorder, self.usage = Recorder(), KeyUsage()

    def __call__(self, envelopes: Sequence[ev.Envelope] | None) -> None:
        self.recorder(envelopes)
        self.usage(envelopes)


async def test_a_long_audit_stream_is_replayed_in_chunks_that_fold_to_the_same_usage(
        backend: Backend) -> None:
    """Start-up hands the audit stream on as it is read, never as one list: a stream
    longer than REPLAY_CHUNK arrives in several calls, and KeyUsage folds them to what it
    had folded live (tracking still starts at the first fact)."""
    live = Both()
    log = await backend.open(audit_subscriber=live)
    n = REPLAY_CHUNK + 5
    arns = [f"arn:aws:kms:{REGION}:111122223333:key/k{i}" for i in range(7)]
    committed: list[ev.Envelope] = []
    for start in range(0, n, 1_000):
        facts = tuple(used(i, arns[i % len(arns)]) for i in range(start, min(n, start + 1_000)))
        envs = await log.append([Append(f"key/{start}", (enabled(str(start)),), 0),
                                 Append(AUDIT_STREAM, facts)], at_ms=1_000 + start)
        committed += [e for e in envs if e.stream == AUDIT_STREAM]
    await log.close()

    replayed, state = Both(), Recorder()
    again = await backend.open(log, subscriber=state, audit_subscriber=replayed)
    calls = replayed.recorder.calls
    assert len(calls) > 1, "the replay came as one list"
    assert all(call and len(call) <= REPLAY_CHUNK for call in calls)
    assert replayed.recorder.envelopes == committed  # all of them, in seq order, once
    assert len(state.calls) == 1 and len(state.envelopes) == len(range(0, n, 1_000))
    assert replayed.usage.last == live.usage.last and len(live.usage.last) == len(arns)
    assert replayed.usage.tracking_since_ms == live.usage.tracking_since_ms == 1_000
    assert again.last_seq == len(committed) + len(state.envelopes)


async def test_a_row_before_the_first_seq_is_refused_at_open(backend: Backend) -> None:
    """Replay reads the rows a page at a time from seq 0 on; a row stored below seq 1
    (outside every page) is still found, because the store's row count must match."""
    log = await backend.open()
    await log.append([Append("key/a", (enabled("a"),), 0), Append(AUDIT_STREAM, (audit(1),))],
                     at_ms=1)
    rows = await log.read_rows(0, 100)
    await log.close()
    first = rows[0]  # a copy of it at seq 0, on its own stream, hashed as a chain's start
    stray = rechained([(0, "key/z", 1, *first[3:5], 0, *first[6:])], 0, first[7])[0]
    backend.replace_rows(log, [stray, *rows])
    with pytest.raises(LogCorrupted, match="outside the hash chain"):
        await backend.open(log)


async def test_probe_says_whether_the_log_would_take_a_commit(backend: Backend) -> None:
    log = await backend.open()
    assert await log.probe()
    await log.append([Append("key/a", (enabled("a"),), 0)], at_ms=1)
    assert await log.probe() and not log.degraded
    await log.close()
    assert not await log.probe()
