"""Every answered read of ``GET /_kms/audit`` has its ``ReadAuditStream`` record in the log first.

A read that returns records other than reads' records is answered only once a durable fact
covers it (its own record, or a summary naming its request id), so a node SIGKILLed right
after an answer still holds that read's record when it comes back. A read that returns only
reads' records is never audited (no loop), and a follower is not woken by the record of its
own read (its reads are bounded by the commits of real records, not twice their number).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import client_for
from tests.support.expect import eventually
from tests.support.server import ServerProcess

READ = "ReadAuditStream"


def read(url: str, *, after: str = "", wait: float = 0, limit: int | None = None,
         ) -> tuple[int, dict[str, Any], str]:
    """(HTTP status, body, x-amzn-RequestId) of one unsigned read (a --dev node)."""
    query = {k: v for k, v in (("after", after), ("wait", str(wait) if wait else ""),
                               ("limit", "" if limit is None else str(limit))) if v}
    full = f"{url}/_kms/audit?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(full, timeout=60) as r:
            return r.status, json.load(r), r.headers["x-amzn-RequestId"]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers["x-amzn-RequestId"]


def read_all(url: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = ""
    while True:
        status, body, _ = read(url, after=cursor)
        assert status == 200, body
        out += body["Records"]
        cursor = body["NextCursor"]
        if not body["Records"]:
            return out


def returned_calls(body: dict[str, Any]) -> bool:
    return any(r["eventName"] != READ for r in body["Records"])


def read_facts(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each audited read's request id -> the ReadAuditStream record that covers it."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["eventName"] == READ:
            ids = r.get("additionalEventData", {}).get("summarizedRequestIDs")
            for request_id in ids or [r["requestID"]]:
                assert request_id not in out, f"read {request_id} covered twice"
                out[request_id] = r
    return out


@pytest.fixture
def node(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "d").start()
    yield server
    server.stop()


def test_every_answered_read_is_in_the_log_when_the_node_is_killed_after_it(
        node: ServerProcess) -> None:
    kms = client_for(node.url)
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    answered: list[tuple[str, dict[str, Any]]] = []  # (request id, body) of each read
    cursor = ""
    for _ in range(6):  # a follower's sequential reads: each returns a new call
        kms.encrypt(KeyId=key, Plaintext=b"x")
        status, body, request_id = read(node.url, after=cursor)
        assert status == 200 and returned_calls(body), body
        answered.append((request_id, body))
        cursor = body["NextCursor"]
    status, failed, failed_id = read(node.url, after="c1_notacursor")
    assert status == 400 and failed["__type"] == "ValidationException"

    results: list[tuple[str, dict[str, Any]]] = []  # concurrent reads of the same consumer
    def reader() -> None:
        status, body, request_id = read(node.url)
        assert status == 200
        results.append((request_id, body))
    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(returned_calls(body) for _, body in results)
    node.kill()  # SIGKILL right after the last answer: nothing more is written

    node.start()
    records = read_all(node.url)
    facts = read_facts(records)
    for request_id, _ in answered:
        fact = facts[request_id]  # each read left its record before it was answered
        assert fact["readOnly"] is True and "errorCode" not in fact
        if "additionalEventData" not in fact:  # a read alone in its fact: its own record
            after = _after_of(answered, request_id)
            assert fact["requestID"] == request_id
            assert fact["requestParameters"] == ({"after": after} if after else None)
    assert (facts[failed_id]["errorCode"], facts[failed_id]["requestID"]) == \
        ("ValidationException", failed_id)  # a failed read: its own record
    assert "additionalEventData" not in facts[failed_id]
    covering = {id(facts[request_id]): facts[request_id] for request_id, _ in results}
    assert sum(f.get("additionalEventData", {}).get("summarizedReads", 1)
               for f in covering.values()) == 8  # every concurrent read counted once
    for f in covering.values():
        extra = f.get("additionalEventData")
        if extra is not None:  # a summary: its counts and the reads it covers
            assert extra["summarizedReads"] == len(extra["summarizedRequestIDs"]) > 1
            assert extra["summarizedRecords"] == sum(
                len(body["Records"]) for request_id, body in results
                if request_id in extra["summarizedRequestIDs"])
            assert f["requestParameters"] is None
    print(f"\nreads answered {len(answered) + 8 + 1}; records of them after SIGKILL "
          f"{len(answered) + 8 + 1}; concurrent reads 8 in {len(covering)} facts")


def _after_of(answered: list[tuple[str, dict[str, Any]]], request_id: str) -> str:
    """The cursor a read of ``answered`` was made after ("" for the first)."""
    ids = [r for r, _ in answered]
    i = ids.index(request_id)
    return "" if i == 0 else str(answered[i - 1][1]["NextCursor"])


def test_a_read_of_reads_records_only_is_never_audited_and_a_long_poll_waits_past_them(
        node: ServerProcess) -> None:
    kms = client_for(node.url)
    kms.create_key()
    status, one, one_id = read(node.url)
    assert [r["eventName"] for r in one["Records"]] == ["CreateKey"]
    kms.create_key()
    status, two, two_id = read(node.url, after=one["NextCursor"])
    assert [(r["eventName"], r["requestID"]) for r in two["Records"]][0] == (READ, one_id)
    status, three, _ = read(node.url, after=two["NextCursor"])  # only read two's record
    assert [(r["eventName"], r["requestID"]) for r in three["Records"]] == [(READ, two_id)]
    status, four, _ = read(node.url, after=three["NextCursor"])
    assert (status, four["Records"]) == (200, [])  # read three (of a read only): no record

    got: list[dict[str, Any]] = []
    poll = threading.Thread(target=lambda: got.append(
        read(node.url, after=two["NextCursor"], wait=20)[1]))
    poll.start()  # finds only read two's record: waits on for a call's record
    made = kms.create_key()
    poll.join()
    assert [(r["eventName"], r["requestID"]) for r in got[0]["Records"]] == \
        [(READ, two_id), ("CreateKey", made["ResponseMetadata"]["RequestId"])]
    reads = [r for r in read_all(node.url) if r["eventName"] == READ]
    assert [r["requestID"] for r in reads][:2] == [one_id, two_id]
    assert len(reads) == 4  # reads one, two, the long poll, and read_all's first page


class Follower:
    """``kms audit tail --follow`` in a thread: long-polls, keeps what each read returned."""

    def __init__(self, url: str, wait: float = 20) -> None:
        self.url, self.wait = url, wait
        self.reads: list[tuple[str, dict[str, Any]]] = []
        self.cursor = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            status, body, request_id = read(self.url, after=self.cursor, wait=self.wait)
            assert status == 200, body
            self.reads.append((request_id, body))
            self.cursor = body["NextCursor"]

    def seen(self) -> set[str]:
        return {r["requestID"] for _, body in self.reads for r in body["Records"]}

    def stop(self, wake: Any) -> None:
        self._stop.set()
        wake()  # a call whose record ends the read in flight
        self._thread.join()


def test_a_follower_is_not_woken_by_its_own_reads_records(node: ServerProcess) -> None:
    kms = client_for(node.url)
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    follower = Follower(node.url)
    eventually(lambda: follower.reads, "the follower's first read")
    n = 20
    for _ in range(n):  # one commit each: the follower sees each before the next is made
        made = kms.encrypt(KeyId=key, Plaintext=b"x")["ResponseMetadata"]["RequestId"]
        eventually(lambda made=made: made in follower.seen(), "the follower seeing it")
    follower.stop(lambda: kms.create_key())
    reads = len(follower.reads)
    print(f"\nfollower reads {reads} for {n} Encrypts awaited one by one "
          f"(a ping-pong would be about {2 * n})")
    assert reads <= n + 3  # the first read, one per Encrypt, the one the stop ended
    node.kill()
    node.start()
    facts = read_facts(read_all(node.url))
    missing = [r for r, body in follower.reads if returned_calls(body) and r not in facts]
    assert missing == []  # every read that returned a call has its record


def test_a_stopping_node_answers_a_held_read_at_once_and_stops_cleanly(tmp_path: Path) -> None:
    """SIGTERM with a follower's long poll held: the read is answered (with what it has) when
    the node begins to stop instead of after its wait, so the node writes its final
    checkpoint and exits 0 rather than being killed by a supervisor's stop timeout."""
    log_path = tmp_path / "node.log"
    node = ServerProcess(tmp_path / "d", log_path=log_path).start()
    kms: Any = client_for(node.url)
    kms.create_key()
    status, body, _ = read(node.url)
    assert status == 200
    got: list[tuple[int, dict[str, Any], str]] = []
    held = threading.Thread(target=lambda: got.append(read(
        node.url, after=body["NextCursor"], wait=20)), daemon=True)
    held.start()
    eventually(lambda: node.health()["audit_reads_held"] == 1, "the follower's read is held")
    proc = node.proc
    assert proc is not None
    node.stop()
    held.join(timeout=60)
    assert proc.returncode == 0
    assert got and got[0][0] == 200  # answered with what it had: the first read's record
    assert {r["eventName"] for r in got[0][1]["Records"]} <= {READ}
    closing = [line for line in node.log_lines() if line.get("event") == "audit_stream_closing"]
    assert [line["held_reads_woken"] for line in closing] == [1]
    assert any(line.get("event") == "node_stopped" for line in node.log_lines())
