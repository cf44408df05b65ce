"""The multi-region API tests' side of one ``kms serve --dev`` hosting several regions: the
node and a client per region as module fixtures' bodies, where each region keeps its data, and
the reads those tests share (a key's state and multi-region configuration in a region, waiting
for a replica, an AWS error's code and message, the shared rows and event types in a region's
log, read-only).

Rules: every wait is a condition (``eventually``); a region's log is opened read-only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from botocore.exceptions import ClientError

from kms.domain import multi_region as mr
from tests.conftest import client_for
from tests.support.expect import eventually
from tests.support.server import ServerProcess

PRIMARY, REPLICA, LATE, FOURTH = "us-east-1", "eu-west-1", "ap-southeast-2", "ap-northeast-1"
DAY = 86_400


def dev_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One --dev node whose own region is PRIMARY, for a module; stopped at its end."""
    server = ServerProcess(tmp_path_factory.mktemp("mrk") / "data", region=PRIMARY).start()
    try:
        yield server
    finally:
        server.stop()


def clients(node: ServerProcess) -> dict[str, Any]:
    """A boto3 client per region the tests use."""
    return {r: client_for(node.url, region=r) for r in (PRIMARY, REPLICA, LATE, FOURTH)}


def region_dir(node: ServerProcess, region: str) -> Path:
    return node.data_dir if region == node.region else node.data_dir / "regions" / region


def state_in(client: Any, key_id: str) -> str:
    return str(client.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"])


def replicate(kms: dict[str, Any], key_id: str, region: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = kms[PRIMARY].replicate_key(KeyId=key_id, ReplicaRegion=region, **extra)
    eventually(lambda: state_in(kms[region], key_id) == "Enabled", f"the replica in {region}")
    return out


def error_of(call: Callable[..., Any], **params: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as info:
        call(**params)
    return info.value.response["Error"]["Code"], info.value.response["Error"]["Message"]


def shared_rows(db: Path) -> list[tuple[str, str, dict[str, Any]]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT stream, type, origin_region, body FROM events "
                            "WHERE type = 'MaterialShared'").fetchall()
    return [(s, origin, msgpack.unpackb(body, raw=False)) for s, _, origin, body in rows]


def config_in(client: Any, key_id: str) -> dict[str, Any]:
    md = client.describe_key(KeyId=key_id)["KeyMetadata"]
    return {"type": md["MultiRegionConfiguration"]["MultiRegionKeyType"],
            "primary": md["MultiRegionConfiguration"]["PrimaryKey"]["Region"],
            "replicas": sorted(r["Region"] for r in md["MultiRegionConfiguration"]["ReplicaKeys"]),
            "state": md["KeyState"]}


def types_in(node: ServerProcess, region: str, key_id: str) -> list[str]:
    db = region_dir(node, region) / "events.sqlite3"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT type FROM events WHERE stream IN (?, ?) ORDER BY seq",
                            (f"key/{key_id}", mr.mrk_stream(key_id))).fetchall()
    return [t for t, in rows]
