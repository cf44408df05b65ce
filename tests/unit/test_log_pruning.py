"""A prune through the log's writer (``EventLog.append(..., pruned=)``), on both backends.

Only audit facts before the cut and older than the age go, in the transaction of the fact
appended with them; state events stay; ``pruned_floor`` names the last fact dropped from the
commit on (and, for SQLite, after a reopen, which accepts the gaps below the cut); a reset
clears it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kms.domain import events as ev
from kms.store.log import AUDIT_STREAM, Append, EventLog, MemoryLog
from kms.store.pruning import AuditPruned
from kms.store.sqlite import SqliteLog

REGION = "us-east-1"


def fact(n: int) -> ev.ApiCallRecorded:
    return ev.ApiCallRecorded(request_id=f"r{n}", operation="Encrypt", principal_arn="p",
                              account="111122223333", access_key_id="AK", source_ip="",
                              user_agent="", read_only=True)


async def history(log: EventLog) -> None:
    """seq 1..8: a key's two state events, then six facts at 1000, 2000, ... 6000 ms."""
    await log.append([Append("key/k", (ev.KeyEnabled(key_id="k"), ev.KeyDisabled(key_id="k")),
                             0)], 500)
    for n in range(1, 7):
        await log.append([Append(AUDIT_STREAM, (fact(n),))], n * 1000)


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_a_prune_drops_only_old_facts_before_the_cut_with_its_own_fact(
        kind: str, tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    log: EventLog = SqliteLog(path, REGION) if kind == "sqlite" else MemoryLog(REGION)
    await log.open()
    try:
        await history(log)
        assert await log.pruned_floor() == 0
        # cut at seq 7 (the fact at 5000 ms), facts before 4500 ms: seq 3, 4, 5, 6
        assert await log.prune_plan(7, 4500) == (4, 6)
        seen: list[int] = []
        log.subscribe_audit(lambda envs: seen.extend(e.seq for e in envs or ()))
        await log.append([Append(AUDIT_STREAM, (fact(99),))], 9000,
                         pruned=AuditPruned(7, 4500, 6))
        assert seen == [9]
        assert [r[0] for r in await log.read_rows(0, 100)] == [1, 2, 7, 8, 9]
        assert await log.pruned_floor() == 6
        assert await log.chain_hash(6) is None  # a cursor there names nothing now
    finally:
        await log.close()
    if kind == "sqlite":
        again = SqliteLog(path, REGION)
        await again.open()  # the gaps lie below the cut
        try:
            assert await again.pruned_floor() == 6
            assert again.last_seq == 9 and again.version(AUDIT_STREAM) == 7
            await again.reset()
            assert await again.pruned_floor() == 0
        finally:
            await again.close()
