"""The audit stream a consumer follows: ``GET /_kms/audit`` cursors and delivery.

Each call made through boto3 appears once, in order, while a long-poll follower runs, across
a node restart; a reset or a restored data dir expires the cursors of the history it lost;
bad reads answer AWS errors and change nothing; reading the stream is audited without
feeding a loop of reads, once per consumer per interval and then summarized.
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import client_for
from tests.support.audit_stream import (
    READ,
    audit,
    calls,
    read_all,
    rid,
)
from tests.support.expect import eventually
from tests.support.server import ServerProcess


class Follower:
    """A consumer long-polling the stream in a thread, resuming from its cursor when the
    node is away (connection refused while it restarts)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.records: list[dict[str, Any]] = []
        self.refusals: list[dict[str, Any]] = []
        self.cursor = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = audit(self.url, after=self.cursor, wait=2)
            except OSError:  # the node is restarting: ask again
                self._stop.wait(0.05)
                continue
            if status != 200:
                self.refusals.append(body)
                return
            self.records += body["Records"]
            self.cursor = body["NextCursor"]

    def request_ids(self) -> list[str]:
        return [r["requestID"] for r in calls(self.records)]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "d", log_path=tmp_path / "node.log").start()
    yield server
    server.stop()


# -- following ----------------------------------------------------------------------------
def test_a_follower_sees_each_call_once_in_order_across_a_restart(node: ServerProcess) -> None:
    kms = client_for(node.url)
    follower = Follower(node.url)
    try:
        made: list[str] = []
        key = kms.create_key(Description="followed")
        made.append(rid(key))
        key_id = key["KeyMetadata"]["KeyId"]
        for i in range(5):
            made.append(rid(kms.encrypt(KeyId=key_id, Plaintext=b"p%d" % i)))
        with pytest.raises(ClientError) as failed:
            kms.describe_key(KeyId="alias/missing")
        made.append(rid(failed.value))
        eventually(lambda: follower.request_ids() == made, "the follower to see every call")

        node.stop()
        node.start()
        kms = client_for(node.url)
        for _ in range(3):
            made.append(rid(kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")))
        made.append(rid(kms.disable_key(KeyId=key_id)))
        eventually(lambda: follower.request_ids() == made, "the calls made after the restart")
    finally:
        follower.stop()
    assert follower.refusals == []
    ids = [r["eventID"] for r in follower.records]
    assert len(ids) == len(set(ids))  # nothing shown twice, reads included
    # A consumer starting again from the beginning sees exactly the same records.
    assert read_all(node.url)[:len(follower.records)] == follower.records


def test_a_reset_expires_old_cursors_and_new_ones_work(server: ServerProcess, kms: Any) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    status, first = audit(server.url)
    assert status == 200 and [r["eventName"] for r in calls(first["Records"])] == ["CreateKey"]
    old = first["NextCursor"]

    held: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
    status, caught_up = audit(server.url, after=old)  # past its own read's record
    waiting = threading.Thread(target=lambda: held.put(audit(server.url,
                                                             after=caught_up["NextCursor"],
                                                             wait=15)))
    waiting.start()
    server.reset()
    waiting.join()
    status, body = held.get()
    assert status == 410 and body["__type"] == "ExpiredCursorException"

    for cursor in (old, caught_up["NextCursor"]):
        status, body = audit(server.url, after=cursor)
        assert status == 410, body
        assert body["__type"] == "ExpiredCursorException"
        assert "reset" in body["message"] and "without 'after'" in body["message"]

    new_key = kms.create_key()["KeyMetadata"]["KeyId"]
    status, fresh = audit(server.url)
    assert status == 200
    names = [(r["eventName"], r.get("errorCode")) for r in fresh["Records"]]
    # after the reset: the refused reads (audited), then the new key; the old key is gone
    assert names == [(READ, "ExpiredCursorException")] * 3 + [("CreateKey", None)]
    assert key_id not in json.dumps(fresh) and new_key in json.dumps(fresh)
    status, after_fresh = audit(server.url, after=fresh["NextCursor"])
    assert status == 200 and calls(after_fresh["Records"]) == []


def test_a_restored_data_dir_refuses_cursors_of_the_history_it_lost(node: ServerProcess,
                                                                    tmp_path: Path) -> None:
    import shutil

    kms = client_for(node.url)
    kms.create_key(Description="before the backup")
    node.stop()
    shutil.copytree(node.data_dir, tmp_path / "backup")
    node.start()
    kms = client_for(node.url)
    lost = kms.create_key(Description="lost by the restore")
    status, seen = audit(node.url)
    assert status == 200 and rid(lost) in json.dumps(seen)
    node.stop()
    shutil.rmtree(node.data_dir)
    shutil.copytree(tmp_path / "backup", node.data_dir)
    node.start()
    kms = client_for(node.url)
    for _ in range(4):  # the same seqs again, holding other rows
        kms.create_key(Description="after the restore")
    status, body = audit(node.url, after=seen["NextCursor"])
    assert (status, body["__type"]) == (410, "ExpiredCursorException")
    assert "restored" in body["message"]
    assert rid(lost) not in json.dumps(read_all(node.url))


def test_reading_the_stream_never_feeds_a_loop_of_reads(server: ServerProcess, kms: Any) -> None:
    made = kms.create_key()
    status, first = audit(server.url)  # returns a call: this read is audited
    assert [r["requestID"] for r in first["Records"]] == [rid(made)]
    status, second = audit(server.url, after=first["NextCursor"])  # only that read's record
    assert [(r["eventName"], r["requestParameters"]) for r in second["Records"]] == \
        [(READ, {"limit": "1000"})]
    assert second["Records"][0]["readOnly"] is True
    status, third = audit(server.url, after=second["NextCursor"], wait=0.2)
    assert (status, third["Records"]) == (200, [])  # the read of a read left no record
    assert third["NextCursor"] == second["NextCursor"]


def test_bad_reads_answer_aws_errors_and_change_nothing(server: ServerProcess, kms: Any) -> None:
    for query, message in (({"after": "nonsense"}, "at 'after' failed to satisfy constraint"),
                           ({"limit": "0"}, "at 'limit' failed to satisfy constraint"),
                           ({"wait": "99"}, "at 'wait' failed to satisfy constraint"),
                           ({"region": "xx-nowhere-1"}, "is not hosted by this node")):
        url = f"{server.url}/_kms/audit?{urllib.parse.urlencode(query)}"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=10)
        body = json.loads(err.value.read())
        assert err.value.code == 400
        assert body["__type"] == "ValidationException" and message in body["message"]
    records = read_all(server.url)
    assert [(r["eventName"], r["errorCode"]) for r in records[:4]] == \
        [(READ, "ValidationException")] * 4
    assert kms.list_keys()["Keys"] == []
