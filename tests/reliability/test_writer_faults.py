"""The event-log writer survives transient failures: a locked database, a full disk.

Rules: a commit that fails for such a reason fails only the calls in its batch
(KMSInternalException, HTTP 500), stores nothing of them, logs one error line naming
the SQLite error (never an event body), and the next batch is tried anew, so writes
resume when the cause goes away; ``/_kms/health`` says "degraded" (503) meanwhile,
says "ok" again as soon as the store would take a commit (asked by health itself, no
write needed), and keeps counting failed commits after. An I/O error, or a failure that
leaves the store unlike the in-memory heads, stops the writer for good (fail closed).
"""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from structlog.testing import capture_logs

from kms.domain import events as ev
from kms.domain.errors import KMSInternalException
from kms.store.log import AUDIT_STREAM, Append
from kms.store.sqlite import SqliteLog
from tests.reliability.test_log_integrity import chain_ok
from tests.support.expect import refused
from tests.support.server import ServerProcess

REGION = "us-east-1"
COMMIT_FAILED = "The event log could not commit; try again."
SECRET_TEXT = "description-that-must-not-be-logged"


class LoggedServer(ServerProcess):
    """A node whose log lines (stderr, JSON) are kept in a file the test reads."""

    def __init__(self, data_dir: Path, log_file: Path) -> None:
        super().__init__(data_dir, log_path=log_file)


def client(url: str) -> Any:
    """boto3 retries a 500 by default; one attempt per call keeps the count exact."""
    return boto3.client("kms", endpoint_url=url, region_name=REGION,
                        aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
                        config=Config(retries={"total_max_attempts": 1}))


def health(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url + "/_kms/health", timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_a_locked_database_fails_the_blocked_call_and_writes_resume_once_released(
        tmp_path: Path) -> None:
    node = LoggedServer(tmp_path / "data", tmp_path / "node.log").start()
    try:
        kms = client(node.url)
        first = kms.create_key(Description="before")["KeyMetadata"]["KeyId"]

        # Another process holds the write lock longer than the node's busy timeout.
        with closing(sqlite3.connect(tmp_path / "data" / "events.sqlite3",
                                     isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")
            refused(kms.create_key, "KMSInternalException", COMMIT_FAILED, status=500,
                    Description=SECRET_TEXT)
            status, doc = health(node.url)
            assert status == 503
            assert doc["status"] == "degraded"
            assert doc["last_error"] == "database is locked"
            assert doc["region"] == REGION
            failed_commits, seq_while_locked = doc["failed_commits"], doc["log_seq"]
            assert failed_commits >= 1  # the call's commit (and any retry of its audit fact)
            other.execute("ROLLBACK")

        second = kms.create_key(Description="after")["KeyMetadata"]["KeyId"]
        status, doc = health(node.url)
        assert status == 200
        assert doc["status"] == "ok"
        assert doc["failed_commits"] == failed_commits  # cumulative: an operator sees it happened
        assert doc["log_seq"] > seq_while_locked
        listed = {k["KeyId"] for k in kms.list_keys()["Keys"]}
        assert listed == {first, second}  # the refused call left no key
        descriptions = {kms.describe_key(KeyId=k)["KeyMetadata"]["Description"] for k in listed}
        assert descriptions == {"before", "after"}
    finally:
        node.stop()

    failures = [line for line in node.log_lines() if line.get("event") == "event_log_commit_failed"]
    assert len(failures) == failed_commits
    assert all((f["level"], f["error"], f["batch_calls"], f["writer"]) ==
               ("error", "database is locked", 1, "serving") for f in failures)
    assert SECRET_TEXT not in node.log_path.read_text()


def test_health_is_ok_again_once_the_lock_goes_even_with_no_write_since(
        tmp_path: Path) -> None:
    """A load balancer stops sending traffic to a node that answers 503, so no commit may
    come to clear "degraded": health asks the store whether it would take one now."""
    node = LoggedServer(tmp_path / "data", tmp_path / "node.log").start()
    try:
        kms = client(node.url)
        kms.create_key(Description="before")
        with closing(sqlite3.connect(tmp_path / "data" / "events.sqlite3",
                                     isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")
            refused(kms.create_key, "KMSInternalException", COMMIT_FAILED, status=500)
            status, doc = health(node.url)
            assert (status, doc["status"]) == (503, "degraded")
            status, again = health(node.url)  # asking again does not clear it while locked
            assert (status, again["status"]) == (503, "degraded")
            failed_commits, seq_while_locked = doc["failed_commits"], doc["log_seq"]
            other.execute("ROLLBACK")

        status, doc = health(node.url)  # no call since the lock went
        assert (status, doc["status"]) == (200, "ok")
        assert doc["log_seq"] == seq_while_locked  # nothing was written to clear it
        assert doc["failed_commits"] == failed_commits  # what happened is still reported
        assert doc["last_error"] == "database is locked"
        assert health(node.url)[0] == 200
        kms.create_key(Description="after")  # and writes are taken
        assert health(node.url)[1]["log_seq"] > seq_while_locked
    finally:
        node.stop()


# -- in process: a real SQLITE_FULL, and a failure that must stop the writer ------------------
def described(key_id: str, text: str) -> ev.KeyDescriptionUpdated:
    return ev.KeyDescriptionUpdated(key_id=key_id, description=text)


def stored_rows(path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute("SELECT seq, stream, version, type, origin_region, origin_seq, "
                          "at_ms, body, prev_hash, hash FROM events ORDER BY seq").fetchall()


async def test_a_full_disk_fails_the_batch_and_writes_resume_when_space_frees(
        tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    log = SqliteLog(path, REGION)
    await log.open()
    try:
        for n in range(3):
            await log.append([Append("key/a", (described("a", f"ok {n}"),), n)], at_ms=n)
        async with log.db.execute("PRAGMA page_count") as cur:
            row = await cur.fetchone()
        assert row is not None
        await log.db.execute(f"PRAGMA max_page_count={row[0]}")  # the disk is now full

        with capture_logs() as logs:
            with pytest.raises(KMSInternalException, match="^The event log could not commit"):
                for n in range(3, 200):  # until a row needs a page the file may not grow by
                    await log.append([Append("key/a", (described("a", SECRET_TEXT * 100),), n)],
                                     at_ms=n)
        acknowledged = log.last_seq
        assert (log.degraded, log.failed_commits, log.last_error) == (
            True, 1, "database or disk is full")
        assert log.writable
        assert len(stored_rows(path)) == acknowledged == log.version("key/a")
        failed = [e for e in logs if e["event"] == "event_log_commit_failed"]
        assert [(e["log_level"], e["error"], e["batch_rows"]) for e in failed] == [
            ("error", "database or disk is full", 1)]
        assert SECRET_TEXT not in repr(logs)

        await log.db.execute("PRAGMA max_page_count=1073741823")  # space frees up
        after = await log.append([Append("key/a", (described("a", "resumed"),), acknowledged),
                                  Append(AUDIT_STREAM, (audit(),))], at_ms=1_000)
        assert [e.seq for e in after] == [acknowledged + 1, acknowledged + 2]
        assert (log.degraded, log.failed_commits) == (False, 1)
    finally:
        await log.close()

    again = SqliteLog(path, REGION)
    await again.open()  # the chain verifies on reopen
    try:
        assert again.last_seq == acknowledged + 2
        assert chain_ok(stored_rows(path))
    finally:
        await again.close()


def audit() -> ev.ApiCallRecorded:
    return ev.ApiCallRecorded(request_id="r-resumed", operation="UpdateKeyDescription",
                              principal_arn="p", account="111122223333", access_key_id="AK",
                              source_ip="", user_agent="", read_only=False)


async def test_a_store_that_moved_under_the_writer_stops_it_and_health_says_why(
        tmp_path: Path) -> None:
    """A row the writer did not write (another process wrote into the log) makes the next
    commit collide on its seq: not transient, so the writer stops rather than fork the
    chain, and says why."""
    path = tmp_path / "events.sqlite3"
    log = SqliteLog(path, REGION)
    await log.open()
    try:
        await log.append([Append("key/a", (described("a", "one"),), 0)], at_ms=1)
        with closing(sqlite3.connect(path)) as other, other:
            row = stored_rows(path)[0]
            other.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)",
                          (2, "key/b", 1, *row[3:5], 2, *row[6:]))
        with pytest.raises(KMSInternalException):
            await log.append([Append("key/a", (described("a", "two"),), 1)], at_ms=2)
        assert not log.writable
        assert log.last_error is not None and "UNIQUE constraint failed" in log.last_error
        assert log.failed_commits == 1
        with pytest.raises(KMSInternalException, match="not accepting writes"):
            await log.append([Append("key/a", (described("a", "three"),), 1)], at_ms=3)
    finally:
        await log.close()


class FsyncFails(SqliteLog):
    """A log whose next commit gets the error SQLite raises when an fsync fails. That
    fault cannot be made on demand here, so the error is raised where SQLite would."""

    fail = False

    def _write_batch(self, rows: list[Any], vault: list[Any]) -> None:
        if self.fail:
            exc = sqlite3.OperationalError("disk I/O error")
            exc.sqlite_errorcode = 1034  # type: ignore[attr-defined]  # SQLITE_IOERR_FSYNC
            exc.sqlite_errorname = "SQLITE_IOERR_FSYNC"  # type: ignore[attr-defined]
            raise exc
        super()._write_batch(rows, vault)


async def test_an_io_error_on_commit_stops_the_writer(tmp_path: Path) -> None:
    """After a failed fsync the commit frame may be on disk with valid checksums, and a
    crash could bring back a batch whose calls were answered 500: not transient."""
    log = FsyncFails(tmp_path / "events.sqlite3", REGION)
    await log.open()
    try:
        await log.append([Append("key/a", (described("a", "one"),), 0)], at_ms=1)
        log.fail = True
        with capture_logs() as logs:
            with pytest.raises(KMSInternalException, match=f"^{COMMIT_FAILED}$"):
                await log.append([Append("key/a", (described("a", "two"),), 1)], at_ms=2)
        assert not log.writable
        assert (log.failed_commits, log.last_error) == (1, "disk I/O error")
        assert not await log.probe()
        failed = [e for e in logs if e["event"] == "event_log_commit_failed"]
        assert [(e["transient"], e["writer"]) for e in failed] == [(False, "stopped")]
        with pytest.raises(KMSInternalException, match="not accepting writes"):
            await log.append([Append("key/a", (described("a", "three"),), 1)], at_ms=3)
    finally:
        await log.close()
