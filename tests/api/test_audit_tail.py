"""``kms audit tail``: prints one line per record, filters by errors, key, time, region and
event name, and follows the stream.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import ACCOUNT, REGION, client_for
from tests.support.audit_stream import (
    EVENT_TIME,
    READ,
    rid,
    tail,
)
from tests.support.server import ServerProcess


def test_kms_audit_tail_prints_filters_and_follows(server: ServerProcess, kms: Any) -> None:
    key = kms.create_key(Description="tailed")["KeyMetadata"]
    kms.encrypt(KeyId=key["KeyId"], Plaintext=b"x")
    with pytest.raises(ClientError):
        kms.describe_key(KeyId="alias/absent")
    other = client_for(server.url, region="eu-west-1")
    other.create_key()

    out = tail(server.url)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if READ not in line]
    assert [line.split()[1:3] for line in lines] == [
        [REGION, "CreateKey"], [REGION, "Encrypt"], [REGION, "DescribeKey"]]
    assert all(EVENT_TIME.match(line.split()[0]) for line in lines)
    assert lines[1].split()[3:5] == [f"arn:aws:iam::{ACCOUNT}:root", key["KeyId"]]
    assert lines[2].endswith("NotFoundException: Alias arn:aws:kms:us-east-1:"
                             f"{ACCOUNT}:alias/absent is not found.")

    errors = tail(server.url, "--errors").stdout.splitlines()
    assert len(errors) == 1 and "DescribeKey" in errors[0]
    keyed = tail(server.url, "--key", key["Arn"], "--json").stdout.splitlines()
    assert [json.loads(line)["eventName"] for line in keyed] == ["CreateKey", "Encrypt"]
    assert tail(server.url, "--since", "2999-01-01T00:00:00Z").stdout == ""

    both = tail(server.url, "--region", REGION, "--region", "eu-west-1", "--event-name",
                "CreateKey").stdout.splitlines()
    assert sorted(line.split()[1] for line in both) == ["eu-west-1", REGION]



def test_kms_audit_tail_follows_the_stream(tmp_path: Path) -> None:
    """On its own node: the follower's last long poll outlives the terminated tail, and
    must not end (and be audited) in the shared node's log after the next test's reset."""
    node = ServerProcess(tmp_path / "follow").start()
    follow: subprocess.Popen[str] | None = None
    try:
        kms = client_for(node.url)
        key = kms.create_key(Description="tailed")["KeyMetadata"]
        follow = subprocess.Popen([sys.executable, "-m", "regions.cli", "audit", "tail",
                                   "--endpoint", node.url, "--follow", "--json",
                                   "--event-name", "TagResource"],
                                  stdout=subprocess.PIPE, text=True)
        seen: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(
            target=lambda: [seen.put(line) for line in follow.stdout or ()], daemon=True)
        reader.start()
        tagged = kms.tag_resource(KeyId=key["KeyId"], Tags=[{"TagKey": "a", "TagValue": "b"}])
        line = seen.get(timeout=60)  # a bound for a stuck follower, not a timing assertion
        assert json.loads(line)["requestID"] == rid(tagged)
    finally:
        if follow is not None:
            follow.terminate()
            follow.wait(timeout=60)
        node.stop()


def test_kms_audit_tail_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """``kms audit tail --follow | head -1``: once the reader has gone, the next record ends
    the tail with status 0 and no traceback."""
    node = ServerProcess(tmp_path / "pipe").start()
    try:
        kms = client_for(node.url)
        kms.create_key()
        follow = subprocess.Popen([sys.executable, "-m", "regions.cli", "audit", "tail",
                                   "--endpoint", node.url, "--follow"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert follow.stdout is not None and follow.stdout.readline()  # `head -1` reads one
        follow.stdout.close()  # and goes away
        for _ in range(3):  # records to write into the closed pipe
            kms.list_keys()
        _, err = follow.communicate(timeout=60)
        assert (follow.returncode, err) == (0, "")
    finally:
        node.stop()


def test_kms_audit_tail_reads_a_cluster_by_naming_each_regions_endpoint(
        tmp_path: Path) -> None:
    """Two region nodes, each its own process: one `kms audit tail` names both endpoints and
    prints both regions' records (each endpoint read for its own region)."""
    us = ServerProcess(tmp_path / "us", region="us-east-1").start()
    eu = ServerProcess(tmp_path / "eu", region="eu-west-1").start()
    try:
        made = {region: client_for(node.url, region=region).create_key()["ResponseMetadata"][
            "RequestId"] for region, node in (("us-east-1", us), ("eu-west-1", eu))}
        out = tail(us.url, "--endpoint", eu.url, "--event-name", "CreateKey", "--json")
        assert out.returncode == 0, out.stderr
        got = [json.loads(line) for line in out.stdout.splitlines()]
        assert {r["awsRegion"]: r["requestID"] for r in got} == made
        assert len(got) == 2
    finally:
        us.stop()
        eu.stop()
