"""Multi-region keys between separate region processes (the local cluster from compose.yaml,
peers over HTTP): ReplicateKey from us-east-1 reaches eu-west-1 and ap-southeast-2 through
each node's own endpoint; ciphertexts decrypt and signatures verify across regions; rotation
reaches replicas; a stopped region catches up after it restarts; health shows each peer;
what a peer serves holds material only sealed to its region; replication reads are open
only to peers."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import msgpack
import pytest
from botocore.exceptions import ClientError

from kms.crypto import transport
from kms.crypto.sealing import RootKey
from kms.domain import multi_region as mr
from ops.cluster import Cluster
from regions.identity import RegionIdentity
from tests.conftest import client_for
from tests.support.cluster import AP, EU, ROOT, US, clients_fixture, cluster_fixture
from tests.support.expect import eventually
from tests.support.server import ServerProcess, free_port

pytestmark = pytest.mark.slow

cluster = cluster_fixture("replication")
kms = clients_fixture()



def state_in(client: Any, key_id: str) -> str:
    return str(client.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"])


def replicate(kms: dict[str, Any], key_id: str, region: str) -> None:
    out = kms[US].replicate_key(KeyId=key_id, ReplicaRegion=region)
    assert out["ReplicaKeyMetadata"]["KeyState"] == "Creating"
    eventually(lambda: state_in(kms[region], key_id) == "Enabled", f"the replica in {region}")


def get_json(url: str, headers: dict[str, str] | None = None,
             timeout: float = 30) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def decrypts(client: Any, blob: bytes, plaintext: bytes) -> bool:
    return bool(client.decrypt(CiphertextBlob=blob)["Plaintext"] == plaintext)


@pytest.fixture(scope="module")
def symmetric(kms: dict[str, Any]) -> str:
    key_id = str(kms[US].create_key(MultiRegion=True, Description="made in us-east-1")
                 ["KeyMetadata"]["KeyId"])
    for region in (EU, AP):
        replicate(kms, key_id, region)
    return key_id


def test_replicas_in_separate_processes_become_enabled_and_see_the_whole_set(
        kms: dict[str, Any], symmetric: str) -> None:
    account = kms[US].describe_key(KeyId=symmetric)["KeyMetadata"]["AWSAccountId"]
    arn = {r: f"arn:aws:kms:{r}:{account}:key/{symmetric}" for r in (US, EU, AP)}
    members = {"PrimaryKey": {"Arn": arn[US], "Region": US},
               "ReplicaKeys": [{"Arn": arn[EU], "Region": EU}, {"Arn": arn[AP], "Region": AP}]}

    def config_in(region: str) -> Any:
        md = kms[region].describe_key(KeyId=symmetric)["KeyMetadata"]
        got = md["MultiRegionConfiguration"]
        got["ReplicaKeys"] = sorted(got["ReplicaKeys"], key=lambda r: r["Region"] != EU)
        return md["Arn"], md["KeyState"], got

    # ap-southeast-2 learns of the eu-west-1 replica from the primary's shared stream
    eventually(lambda: config_in(AP)[2]["ReplicaKeys"] == members["ReplicaKeys"],
             "the whole set in ap-southeast-2")
    assert config_in(US) == (arn[US], "Enabled", {"MultiRegionKeyType": "PRIMARY", **members})
    for region in (EU, AP):
        assert config_in(region) == (arn[region], "Enabled",
                                     {"MultiRegionKeyType": "REPLICA", **members})
    # each region lists the key under its own ARN, in its own node's log
    assert kms[EU].describe_key(KeyId=symmetric)["KeyMetadata"]["Description"] == ""


def test_a_ciphertext_made_in_us_east_1_decrypts_in_each_replica_region(
        kms: dict[str, Any], symmetric: str) -> None:
    blob = kms[US].encrypt(KeyId=symmetric, Plaintext=b"made in us-east-1",
                           EncryptionContext={"k": "v"})["CiphertextBlob"]
    for region in (EU, AP):
        got = kms[region].decrypt(CiphertextBlob=blob, EncryptionContext={"k": "v"})
        assert got["Plaintext"] == b"made in us-east-1"
        assert got["KeyId"] == f"arn:aws:kms:{region}:{got['KeyId'].split(':')[4]}:key/{symmetric}"
    back = kms[EU].encrypt(KeyId=symmetric, Plaintext=b"made in eu")["CiphertextBlob"]
    assert decrypts(kms[US], back, b"made in eu")


def test_an_ecc_signature_from_us_east_1_verifies_in_ap_southeast_2(
        kms: dict[str, Any]) -> None:
    key_id = kms[US].create_key(MultiRegion=True, KeySpec="ECC_NIST_P256",
                                KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    replicate(kms, key_id, AP)
    signature = kms[US].sign(KeyId=key_id, Message=b"signed in us-east-1",
                             SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    assert kms[AP].verify(KeyId=key_id, Message=b"signed in us-east-1", Signature=signature,
                          SigningAlgorithm="ECDSA_SHA_256")["SignatureValid"]
    assert (kms[AP].get_public_key(KeyId=key_id)["PublicKey"]
            == kms[US].get_public_key(KeyId=key_id)["PublicKey"])


def test_rotation_on_demand_reaches_both_replicas(kms: dict[str, Any], symmetric: str) -> None:
    kms[US].rotate_key_on_demand(KeyId=symmetric)
    blob = kms[US].encrypt(KeyId=symmetric, Plaintext=b"after rotation")["CiphertextBlob"]
    for region in (EU, AP):
        client = kms[region]
        eventually(lambda: decrypts(client, blob, b"after rotation"),  # noqa: B023
                 f"the new version in {region}")
    with pytest.raises(ClientError) as info:
        kms[EU].rotate_key_on_demand(KeyId=symmetric)
    assert info.value.response["Error"]["Code"] == "UnsupportedOperationException"


def test_a_stopped_region_catches_up_after_it_restarts(cluster: Cluster, kms: dict[str, Any],
                                                       symmetric: str) -> None:
    us_log = cluster.state_dir / US / "serve.log"
    logged_before = len(us_log.read_text().splitlines())
    assert cluster.stop(EU) == "stopped"
    kms[US].rotate_key_on_demand(KeyId=symmetric)  # sealed to eu-west-1's pinned identity
    blob = kms[US].encrypt(KeyId=symmetric, Plaintext=b"while eu was down")["CiphertextBlob"]
    eventually(lambda: decrypts(kms[AP], blob, b"while eu was down"), "ap-southeast-2")

    def eu_seen_from_us() -> dict[str, Any]:
        return cluster.health()[US]["peers"][EU]  # type: ignore[index,no-any-return]

    def eu_down() -> dict[str, Any] | None:
        seen = eu_seen_from_us()
        return seen if seen["reachable"] is False else None

    down = eventually(eu_down, "us-east-1 to see eu-west-1 down")
    assert down["url"] == cluster.urls[EU] and "Cannot connect" in down["error"]

    cluster.start(EU, ROOT)
    assert eventually(lambda: decrypts(kms[EU], blob, b"while eu was down"),
                    "eu-west-1 to catch up")
    eventually(lambda: eu_seen_from_us()["reachable"], "us-east-1 to reach eu-west-1 again")
    lines = [json.loads(line) for line in us_log.read_text().splitlines()[logged_before:]]
    about_eu = [line["event"] for line in lines
                if line.get("region") == EU and line["event"].startswith("peer_")]
    assert about_eu == ["peer_unreachable", "peer_reachable"]  # once per outage


def test_health_shows_each_peer_cursor_lag_and_reachability(cluster: Cluster,
                                                            kms: dict[str, Any],
                                                            symmetric: str) -> None:
    def settled() -> dict[str, Any] | None:
        health = cluster.health()
        for doc in health.values():
            for figures in doc["peers"].values():  # type: ignore[attr-defined]
                if not figures["reachable"] or figures.get("lag_events") != 0:
                    return None
        return health

    health = eventually(settled, "every peer reachable and caught up")
    for region, doc in health.items():
        peers = doc["peers"]
        assert sorted(peers) == sorted(r for r in (US, EU, AP) if r != region)
        for peer, figures in peers.items():
            assert figures["url"] == cluster.urls[peer]
            assert figures["cursor"] > 0  # every region has its own rows by now
            assert figures["seconds_since_pull"] >= 0
            assert len(figures["identity_fingerprint"]) == 16
    fingerprints = {peer: f["identity_fingerprint"] for doc in health.values()
                    for peer, f in doc["peers"].items()}  # type: ignore[attr-defined]
    for region, url in cluster.urls.items():
        status, info = get_json(url + "/_kms/region")
        assert status == 200 and info["region"] == region
        assert info["fingerprint"] == fingerprints[region] == transport.fingerprint(
            base64.b64decode(info["identity_public_key"]))


def _identity(cluster: Cluster, region: str) -> RegionIdentity:
    path = cluster.state_dir / region
    return RegionIdentity.load_or_create(path, RootKey.load_or_create(path, create=False))


def test_a_peer_is_served_material_only_sealed_to_its_region(cluster: Cluster,
                                                             kms: dict[str, Any],
                                                             symmetric: str) -> None:
    status, page = get_json(cluster.urls[US] + f"/_kms/replication?origin={US}&after=0&limit=1000")
    assert status == 200 and page["origin"] == US
    rows = [r for r in page["rows"] if r["stream"] == mr.mrk_stream(symmetric)]
    assert {r["stream"][:4] for r in page["rows"]} == {"mrk/"}  # no key/, alias/ or audit rows
    shared = [msgpack.unpackb(base64.b64decode(r["body"]), raw=False) for r in rows
              if r["type_name"] == "MaterialShared"]
    assert sum(len(b["sealed_for"]) for b in shared) == 6  # three versions, to two regions
    ids = {r: _identity(cluster, r) for r in (US, EU, AP)}
    for body in shared:
        for to, sealed in body["sealed_for"]:
            context = mr.transport_context(symmetric, body["material_id"], US, to)
            raw = ids[to].reseal(sealed, context, lambda b: b"\x00" + bytes(
                x ^ 0xFF for x in b))  # a stand-in sealer: the clear bytes stay in here
            clear = bytes(x ^ 0xFF for x in raw[1:])
            assert len(clear) == 32
            for other in (r for r in ids if r != to):
                with pytest.raises(transport.PeerMaterialUnreadable):
                    ids[other].reseal(sealed, context, lambda b: b"")
            assert base64.b64encode(clear).decode() not in json.dumps(page)
            assert not [r for r in page["rows"] if clear in base64.b64decode(r["body"])]


def test_a_held_replication_read_answers_when_the_origin_commits(cluster: Cluster,
                                                                 kms: dict[str, Any]) -> None:
    url = cluster.urls[US]
    _, head = get_json(url + f"/_kms/replication?origin={US}&after=0&limit=1000")
    cursor = head["next_cursor"]
    got: dict[str, Any] = {}
    reader = threading.Thread(target=lambda: got.update(page=get_json(
        url + f"/_kms/replication?origin={US}&after={cursor}&wait=20")[1]))
    reader.start()
    key_id = eventually(lambda: kms[US].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"],
                      "a new key")
    reader.join(timeout=30)
    page = got["page"]
    assert [r["stream"] for r in page["rows"]] == [mr.mrk_stream(key_id)]
    assert page["next_cursor"] > cursor


def test_replication_reads_are_refused_to_callers_that_are_not_peers(
        tmp_path: Path) -> None:
    eu_port = free_port()
    node = ServerProcess(tmp_path / "data", dev=False, region=US, extra=[
        "--peer", f"{EU}=http://127.0.0.1:{eu_port}", "--peer", f"{AP}=http://192.0.2.1:8080",
    ]).start()
    try:
        base = node.url + f"/_kms/replication?origin={US}&after=0"
        status, doc = get_json(base)
        assert (status, doc["__type"]) == (403, "AccessDeniedException")
        assert "X-Kms-Peer-Region" in doc["message"]
        status, doc = get_json(base, {"X-Kms-Peer-Region": "sa-east-1"})
        assert (status, doc["__type"]) == (403, "AccessDeniedException")
        for claimed in (AP, EU):  # a peer's name without its signature (test_peer_auth.py)
            status, doc = get_json(base, {"X-Kms-Peer-Region": claimed})
            assert (status, doc["__type"]) == (403, "AccessDeniedException")
            assert doc["message"].startswith(f"The request names region {claimed} in "
                                             "X-Kms-Peer-Region but is not signed.")
        peers: Any = node.health()["peers"]
        assert peers[EU]["reachable"] is False  # nothing listens there
    finally:
        node.stop()


def test_a_peer_whose_identity_key_changed_is_refused_and_reported(tmp_path: Path) -> None:
    eu_port = free_port()
    eu = ServerProcess(tmp_path / "eu", region=EU, port=eu_port).start()
    us_log = tmp_path / "us.log"
    us = ServerProcess(tmp_path / "us", region=US,
                       extra=["--peer", f"{EU}=http://127.0.0.1:{eu_port}"])
    with open(us_log, "w") as err:  # the node logs to stderr
        us.proc = subprocess.Popen(us.command(), stdout=subprocess.DEVNULL, stderr=err,
                                   text=True)
    try:
        pinned = eventually(lambda: _peers_of(us)[EU].get("identity_fingerprint"),
                          "us-east-1 to pin eu-west-1")
        eu.stop()
        (tmp_path / "eu" / "region-identity.key").unlink()  # a new identity at restart
        eu.start()
        _, info = get_json(eu.url + "/_kms/region")
        assert info["fingerprint"] != pinned

        def refused() -> Any:
            return _peers_of(us)[EU].get("identity_refused")

        why = eventually(refused, "us-east-1 to refuse the new key")
        assert why == (f"peer region {EU} presented identity key {info['fingerprint']}, but its "
                       f"pinned key is {pinned}; refusing it (if the peer's key was replaced "
                       "on purpose, give the new key in its peer config)")
        client: Any = client_for(us.url, region=US)
        key_id = client.create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
        with pytest.raises(ClientError) as exc:
            client.replicate_key(KeyId=key_id, ReplicaRegion=EU)
        assert exc.value.response["Error"]["Code"] == "UnsupportedOperationException"
        kept = json.loads((tmp_path / "us" / "peers.json").read_text())
        assert transport.fingerprint(base64.b64decode(kept[EU])) == pinned  # the pin stays
    finally:
        us.stop()
        eu.stop()
    refusals = [line for line in us_log.read_text().splitlines()
                if '"peer_identity_refused"' in line]
    assert len(refusals) == 1 and json.loads(refusals[0])["reason"] == why  # once, not per retry


def _peers_of(node: ServerProcess) -> Any:
    try:
        return node.health()["peers"]
    except OSError:  # not listening yet
        return {EU: {}}
