"""Every ``kms region`` call leaves one audit fact, durable before its answer: a conflicts
read served (``ListMultiRegionConflicts``, readOnly, in the region it read), a conflicts
read refused, a promotion refused (``PromoteReplicaKey``); nothing else is appended."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import client_for
from tests.support.audit_stream import read_all
from tests.support.cluster import region_cli
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

US, EU = "us-east-1", "eu-west-1"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "data", region=US).start()
    try:
        yield server
    finally:
        server.stop()


def state_rows(data_dir: Path) -> int:
    with sqlite3.connect(f"file:{data_dir / 'events.sqlite3'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT COUNT(*) FROM events WHERE stream != 'audit'")
                   .fetchone()[0])


def region_calls(url: str, region: str | None = None) -> list[dict[str, Any]]:
    return [r for r in read_all(url, region=region)
            if r["eventName"] in ("ListMultiRegionConflicts", "PromoteReplicaKey")]


def test_each_kms_region_call_leaves_one_audit_record(node: ServerProcess) -> None:
    client_for(node.url, region=EU).create_key()  # opens eu-west-1 in this --dev node
    rows = state_rows(node.data_dir), state_rows(node.data_dir / "regions" / EU)

    listed = region_cli("conflicts", "--endpoint", node.url)
    assert (listed.returncode, listed.stdout, listed.stderr) == (
        0, f"no conflicts in {US}\n", "")
    in_eu = region_cli("conflicts", "--endpoint", node.url, "--region", EU)
    assert (in_eu.returncode, in_eu.stdout) == (0, f"no conflicts in {EU}\n")
    nowhere = region_cli("conflicts", "--endpoint", node.url, "--region", "ap-nowhere-1")
    assert nowhere.returncode == 1
    refusal = (f"This node serves region {US} and the regions it hosts, not "
               "'ap-nowhere-1'.")
    assert nowhere.stderr == f"kms region: error: ValidationException: {refusal}\n"
    missing = "mrk-00000000000000000000000000000000"
    promote = region_cli("promote", "--endpoint", node.url, missing)
    assert promote.returncode == 1 and promote.stderr.startswith(
        "kms region: error: NotFoundException: ")

    got = [(r["eventName"], r["readOnly"], r.get("errorCode"), r["requestParameters"])
           for r in region_calls(node.url)]
    assert got == [("ListMultiRegionConflicts", True, None, None),
                   ("ListMultiRegionConflicts", True, "ValidationException",
                    {"region": "ap-nowhere-1"}),
                   ("PromoteReplicaKey", False, "NotFoundException", {"keyId": missing})]
    served = region_calls(node.url)[0]
    assert served["userIdentity"]["arn"] == "arn:aws:iam::111122223333:root"
    assert served["additionalEventData"] == {"conflicts": 0, "orphans": 0}
    assert [(r["eventName"], r.get("errorCode"), r["requestParameters"])
            for r in region_calls(node.url, region=EU)] == [
        ("ListMultiRegionConflicts", None, {"region": EU})]
    # only the audit facts: no state event anywhere
    assert (state_rows(node.data_dir), state_rows(node.data_dir / "regions" / EU)) == rows
