"""Multi-region keys between separate region processes (the local cluster from compose.yaml,
peers over HTTP): ReplicateKey from us-east-1 reaches eu-west-1 and ap-southeast-2 through
each node's own endpoint; ciphertexts decrypt and signatures verify across regions; rotation
reaches replicas (and a replica made after three rotations decrypts every older
ciphertext); an RSA ciphertext made offline with a replica's public key decrypts in every
member and an HMAC from one region verifies in the others; ReplicateKey's refusals change
nothing; a client at one node signing for another region reaches that region; a stopped
region catches up after it restarts; health shows each peer; what a peer serves holds
material only sealed to its region; replication reads are open only to peers."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import msgpack
import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import load_der_public_key

from kms.crypto import transport
from kms.crypto.sealing import RootKey
from kms.domain import multi_region as mr
from ops.cluster import Cluster
from regions.identity import RegionIdentity
from tests.conftest import client_for
from tests.support.audit_stream import by_request, read_all
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


def test_an_rsa_ciphertext_made_offline_with_eu_west_1s_public_key_decrypts_elsewhere(
        kms: dict[str, Any]) -> None:
    key_id = kms[US].create_key(MultiRegion=True, KeySpec="RSA_2048",
                                KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]
    for region in (EU, AP):
        replicate(kms, key_id, region)
    alg = "RSAES_OAEP_SHA_256"
    der = kms[EU].get_public_key(KeyId=key_id)["PublicKey"]
    assert {kms[r].get_public_key(KeyId=key_id)["PublicKey"] for r in (US, AP)} == {der}
    offline = load_der_public_key(der).encrypt(  # type: ignore[union-attr]
        b"made offline", padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                      algorithm=hashes.SHA256(), label=None))
    for region in (US, AP):
        got = kms[region].decrypt(KeyId=key_id, CiphertextBlob=offline, EncryptionAlgorithm=alg)
        assert got["Plaintext"] == b"made offline" and got["EncryptionAlgorithm"] == alg
        assert got["KeyId"] == kms[region].describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
        assert f":{region}:" in got["KeyId"]


def test_an_hmac_made_in_one_region_verifies_in_every_other(kms: dict[str, Any]) -> None:
    key_id = kms[US].create_key(MultiRegion=True, KeySpec="HMAC_256",
                                KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["KeyId"]
    for region in (EU, AP):
        replicate(kms, key_id, region)
    for made_in in (US, EU, AP):
        message = f"mac made in {made_in}".encode()
        mac = kms[made_in].generate_mac(KeyId=key_id, Message=message,
                                        MacAlgorithm="HMAC_SHA_256")["Mac"]
        for region in (r for r in (US, EU, AP) if r != made_in):
            assert kms[region].verify_mac(KeyId=key_id, Message=message, Mac=mac,
                                          MacAlgorithm="HMAC_SHA_256")["MacValid"] is True
    with pytest.raises(ClientError) as info:
        kms[AP].verify_mac(KeyId=key_id, Message=b"another message", Mac=mac,
                           MacAlgorithm="HMAC_SHA_256")
    assert info.value.response["Error"]["Code"] == "KMSInvalidMacException"


def test_a_replica_made_after_three_rotations_decrypts_every_older_ciphertext(
        kms: dict[str, Any]) -> None:
    key_id = kms[US].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    blobs = []
    for n in range(3):
        blobs.append(kms[US].encrypt(KeyId=key_id, Plaintext=b"v%d" % n)["CiphertextBlob"])
        kms[US].rotate_key_on_demand(KeyId=key_id)
    blobs.append(kms[US].encrypt(KeyId=key_id, Plaintext=b"v3")["CiphertextBlob"])
    current = kms[US].describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"]

    for region in (EU, AP):
        replicate(kms, key_id, region)
        assert [kms[region].decrypt(CiphertextBlob=b)["Plaintext"] for b in blobs] == [
            b"v0", b"v1", b"v2", b"v3"]
        assert kms[region].describe_key(KeyId=key_id)["KeyMetadata"][
            "CurrentKeyMaterialId"] == current
        rotations = kms[region].list_key_rotations(KeyId=key_id)["Rotations"]
        assert [r["RotationType"] for r in rotations] == ["ON_DEMAND"] * 3
    fresh = kms[AP].encrypt(KeyId=key_id, Plaintext=b"from ap")["CiphertextBlob"]
    assert decrypts(kms[US], fresh, b"from ap") and decrypts(kms[EU], fresh, b"from ap")


def _state_rows(cluster: Cluster, region: str, key_id: str) -> int:
    """Rows other than audit facts that name the key in a region's own log (read-only)."""
    db = cluster.state_dir / region / "events.sqlite3"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM events WHERE stream != 'audit' "
                                "AND instr(stream, ?)", (key_id,)).fetchone()[0])


def _settled(cluster: Cluster) -> bool:
    return all(f["reachable"] and f.get("lag_events") == 0 for doc in cluster.health().values()
               for f in doc["peers"].values())  # type: ignore[attr-defined]


def test_replicate_key_refusals_carry_aws_codes_and_change_nothing(
        cluster: Cluster, kms: dict[str, Any]) -> None:
    single = kms[US].create_key()["KeyMetadata"]["KeyId"]
    key_id = kms[US].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    replicate(kms, key_id, EU)
    replica_arn = kms[EU].describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    eventually(lambda: _settled(cluster), "every peer caught up")
    before = {(r, k): _state_rows(cluster, r, k) for r in (US, EU, AP) for k in (single, key_id)}

    def refusal(region: str, **params: Any) -> tuple[str, str, ClientError]:
        with pytest.raises(ClientError) as info:
            kms[region].replicate_key(**params)
        error = info.value.response["Error"]
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        return error["Code"], error["Message"], info.value

    code, message, err_replica = refusal(EU, KeyId=key_id, ReplicaRegion=AP)
    assert code == "UnsupportedOperationException"
    assert message.startswith(f"{replica_arn} is not a multi-Region primary key.")
    errors = {EU: [(code, err_replica)], US: []}
    for region in (EU, US):  # where it already is, and the primary's own region
        code, message, err = refusal(US, KeyId=key_id, ReplicaRegion=region)
        assert (code, message) == ("AlreadyExistsException", f"Unable to replicate key {key_id} "
                                   f"to region {region}, as the key already exist there")
        errors[US].append((code, err))
    code, message, err = refusal(US, KeyId=single, ReplicaRegion=EU)
    assert (code, message) == ("UnsupportedOperationException",
                               f"Unable to replicate a non-MultiRegion key {single}")
    errors[US].append((code, err))

    assert {(r, k): _state_rows(cluster, r, k) for r, k in before} == before
    for region, found in errors.items():  # each refusal is audited where it was answered
        records = read_all(cluster.urls[region])
        for code, err in found:
            record = by_request(records, err.response)
            assert (record["eventName"], record["errorCode"]) == ("ReplicateKey", code)
    with pytest.raises(ClientError) as info:
        kms[AP].describe_key(KeyId=key_id)
    assert info.value.response["Error"]["Code"] == "NotFoundException"
    config = kms[US].describe_key(KeyId=key_id)["KeyMetadata"]["MultiRegionConfiguration"]
    assert [r["Region"] for r in config["ReplicaKeys"]] == [EU]


def test_a_client_at_us_east_1_signing_for_eu_west_1_reaches_eu_west_1(
        cluster: Cluster, kms: dict[str, Any]) -> None:
    only_eu = kms[EU].create_key(Description="only in eu-west-1")["KeyMetadata"]
    via_us: Any = client_for(cluster.urls[US], region=EU)
    assert via_us.meta.endpoint_url == cluster.urls[US]

    got = via_us.describe_key(KeyId=only_eu["KeyId"])
    assert got["KeyMetadata"] == only_eu | {"Description": "only in eu-west-1"}
    with pytest.raises(ClientError) as info:
        kms[US].describe_key(KeyId=only_eu["KeyId"])
    assert info.value.response["Error"]["Code"] == "NotFoundException"
    made = via_us.create_key(Description="made through us-east-1")["KeyMetadata"]
    assert made["Arn"].startswith(f"arn:aws:kms:{EU}:")
    assert kms[EU].describe_key(KeyId=made["KeyId"])["KeyMetadata"]["Description"] == (
        "made through us-east-1")
    # eu-west-1 audits the forwarded call; us-east-1 only forwarded it
    assert by_request(read_all(cluster.urls[EU]), got)["awsRegion"] == EU
    assert not [r for r in read_all(cluster.urls[US])
                if r["requestID"] == got["ResponseMetadata"]["RequestId"]]


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
