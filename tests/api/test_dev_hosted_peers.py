"""Regions a ``--dev`` node hosts in-process replicate with its ``--peer`` nodes: A (us-east-1,
--dev, peer eu-west-1 = B) hosts ap-southeast-2 in-process; B names both of A's regions as its
peers at A's URL, so ap-southeast-2's multi-region keys replicate to eu-west-1 and eu-west-1's
to ap-southeast-2, each region signing its reads with its own identity key. A peer that does
not name the in-process region does not follow it, and ReplicateKey into it says so."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import client_for
from tests.support.expect import eventually
from tests.support.server import ServerProcess, free_port

pytestmark = pytest.mark.slow

US, EU, AP = "us-east-1", "eu-west-1", "ap-southeast-2"


def nodes(tmp_path: Path, b_names_ap: bool) -> tuple[ServerProcess, ServerProcess]:
    a_port, b_port = free_port(), free_port()
    a = ServerProcess(tmp_path / "a", region=US, port=a_port,
                      extra=["--peer", f"{EU}=http://127.0.0.1:{b_port}"])
    b_peers = ["--peer", f"{US}=http://127.0.0.1:{a_port}"]
    if b_names_ap:
        b_peers += ["--peer", f"{AP}=http://127.0.0.1:{a_port}"]
    b = ServerProcess(tmp_path / "b", region=EU, port=b_port, extra=b_peers)
    return a, b


@pytest.fixture
def pair(tmp_path: Path, request: pytest.FixtureRequest,
         ) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    a, b = nodes(tmp_path, b_names_ap=request.param)
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        b.stop()
        a.stop()


def state_in(client: Any, key_id: str) -> str:
    return str(client.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"])


def members(client: Any, key_id: str) -> tuple[str, list[str]]:
    conf = client.describe_key(KeyId=key_id)["KeyMetadata"]["MultiRegionConfiguration"]
    return conf["PrimaryKey"]["Region"], sorted(r["Region"] for r in conf["ReplicaKeys"])


def hosted_link(a: ServerProcess) -> dict[str, Any]:
    """How A's in-process ap-southeast-2 follows B (A's health)."""
    peers: Any = a.health()["peers"]
    return dict(peers[EU].get("hosted", {}).get(AP, {}))


def rows_of(node: ServerProcess, key_id: str, region_dir: str = "") -> list[str]:
    db = node.data_dir / region_dir / "events.sqlite3"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        found = conn.execute("SELECT type FROM events WHERE stream IN (?, ?) ORDER BY seq",
                             (f"key/{key_id}", f"mrk/{key_id}"))
        return [t for (t,) in found.fetchall()]


@pytest.mark.parametrize("pair", [True], indirect=True)
def test_an_in_process_regions_keys_replicate_with_a_peer_both_ways(
        pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    ap, eu = client_for(a.url, region=AP), client_for(b.url, region=EU)

    # ap-southeast-2 (in-process on A) is the primary; eu-west-1 (B) the replica.
    key_id = ap.create_key(MultiRegion=True, Description="made in ap-southeast-2")[
        "KeyMetadata"]["KeyId"]
    out = ap.replicate_key(KeyId=key_id, ReplicaRegion=EU)
    assert out["ReplicaKeyMetadata"]["KeyState"] == "Creating"
    eventually(lambda: state_in(eu, key_id) == "Enabled", "the replica in eu-west-1")
    assert members(eu, key_id) == (AP, [EU])
    blob = ap.encrypt(KeyId=key_id, Plaintext=b"from ap")["CiphertextBlob"]
    assert eu.decrypt(CiphertextBlob=blob)["Plaintext"] == b"from ap"
    back = eu.encrypt(KeyId=key_id, Plaintext=b"from eu")["CiphertextBlob"]
    assert ap.decrypt(CiphertextBlob=back)["Plaintext"] == b"from eu"

    # A rotation in the in-process primary reaches the peer's replica.
    ap.rotate_key_on_demand(KeyId=key_id)
    rotated = ap.encrypt(KeyId=key_id, Plaintext=b"after rotation")["CiphertextBlob"]
    eventually(lambda: eu.decrypt(CiphertextBlob=rotated)["Plaintext"] == b"after rotation",
               "the rotated version in eu-west-1")

    # The other way: eu-west-1 (B) is the primary; the replica is in A's ap-southeast-2,
    # also reached through B, which forwards requests signed for ap-southeast-2 to A.
    theirs = eu.create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    eu.replicate_key(KeyId=theirs, ReplicaRegion=AP)
    eventually(lambda: state_in(ap, theirs) == "Enabled", "the replica in ap-southeast-2")
    assert members(ap, theirs) == (EU, [AP])
    via_b = client_for(b.url, region=AP)
    sealed = eu.encrypt(KeyId=theirs, Plaintext=b"to ap")["CiphertextBlob"]
    assert via_b.decrypt(CiphertextBlob=sealed)["Plaintext"] == b"to ap"

    # A's own region is untouched by either key; A's health shows the in-process link.
    us = client_for(a.url, region=US)
    assert {k["KeyId"] for k in us.list_keys()["Keys"]} & {key_id, theirs} == set()
    link = hosted_link(a)
    assert link["reachable"] is True and link["followed_by_peer"] is True


@pytest.mark.parametrize("pair", [False], indirect=True)
def test_replicate_key_into_a_peer_that_does_not_name_the_region_is_refused(
        pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    ap, eu = client_for(a.url, region=AP), client_for(b.url, region=EU)
    key_id = ap.create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    link = eventually(lambda: "followed_by_peer" in hosted_link(a) and hosted_link(a),
                      "ap-southeast-2's follower to have contacted B")
    assert link["followed_by_peer"] is False
    before = rows_of(a, key_id, f"regions/{AP}")

    with pytest.raises(ClientError) as info:
        ap.replicate_key(KeyId=key_id, ReplicaRegion=EU)
    err = info.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert err["Error"]["Code"] == "UnsupportedOperationException"
    message = err["Error"]["Message"]
    assert message == (f"Unable to replicate key {key_id} to region {EU}: {AP} is hosted "
                       f"in-process by this --dev node ({US}), and the {EU} node at {b.url} "
                       f"does not follow {AP} (its peers: {US}). Start the {EU} node with "
                       f"--peer {AP}=<this node's URL>, as it names {US}, or replicate to a "
                       "region hosted in this process.")

    # Nothing changed: no replica anywhere, no shared event in ap-southeast-2's log.
    assert members(ap, key_id) == (AP, [])
    assert rows_of(a, key_id, f"regions/{AP}") == before
    with pytest.raises(ClientError) as missing:
        eu.describe_key(KeyId=key_id)
    assert missing.value.response["Error"]["Code"] == "NotFoundException"
