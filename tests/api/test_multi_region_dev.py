"""Multi-region keys between the regions one ``kms serve --dev`` hosts: ReplicateKey, the
replica's life (Creating, then Enabled), cross-region Decrypt both ways, rotation reaching
replicas (also one created after three rotations, and automatic rotation across a restart),
regional independence, AWS's refusals, material that never sits in clear in either region's
log, and HMAC, signing, RSA and ECDH keys in every member.
Shared rotation settings, deletion and UpdatePrimaryRegion: test_multi_region_primary.py;
races and material in the hard cases: test_multi_region_material.py."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
)

from kms.crypto import transport
from kms.crypto.sealing import RootKey
from kms.domain import multi_region as mr
from regions.identity import RegionIdentity
from tests.conftest import client_for
from tests.support.expect import eventually
from tests.support.multi_region_dev import (
    LATE,
    PRIMARY,
    REPLICA,
    clients,
    dev_node,
    error_of,
    region_dir,
    replicate,
    shared_rows,
    state_in,
)
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from dev_node(tmp_path_factory)


@pytest.fixture(scope="module")
def kms(node: ServerProcess) -> dict[str, Any]:
    return clients(node)


def test_a_replica_starts_creating_then_decrypts_what_the_primary_encrypted(
        kms: dict[str, Any]) -> None:
    md = kms[PRIMARY].create_key(MultiRegion=True, Description="primary")["KeyMetadata"]
    key_id = md["KeyId"]
    assert key_id.startswith("mrk-") and len(key_id) == 36
    assert md["MultiRegionConfiguration"] == {
        "MultiRegionKeyType": "PRIMARY",
        "PrimaryKey": {"Arn": md["Arn"], "Region": PRIMARY}, "ReplicaKeys": []}
    blob = kms[PRIMARY].encrypt(KeyId=key_id, Plaintext=b"from us-east-1",
                                EncryptionContext={"a": "b"})["CiphertextBlob"]

    out = kms[PRIMARY].replicate_key(KeyId=key_id, ReplicaRegion=REPLICA,
                                     Description="replica",
                                     Tags=[{"TagKey": "where", "TagValue": "eu"}])

    replica_md = out["ReplicaKeyMetadata"]
    replica_arn = f"arn:aws:kms:{REPLICA}:{md['AWSAccountId']}:key/{key_id}"
    assert (replica_md["KeyId"], replica_md["Arn"]) == (key_id, replica_arn)
    assert (replica_md["KeyState"], replica_md["Enabled"]) == ("Creating", False)
    assert replica_md["MultiRegionConfiguration"]["MultiRegionKeyType"] == "REPLICA"
    assert out["ReplicaTags"] == [{"TagKey": "where", "TagValue": "eu"}]
    assert '"kms:*"' in out["ReplicaPolicy"]
    eventually(lambda: state_in(kms[REPLICA], key_id) == "Enabled", "the replica to be Enabled")

    seen = kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"]
    assert (seen["Arn"], seen["Description"], seen["Enabled"]) == (replica_arn, "replica", True)
    members = {"PrimaryKey": {"Arn": md["Arn"], "Region": PRIMARY},
               "ReplicaKeys": [{"Arn": replica_arn, "Region": REPLICA}]}
    assert seen["MultiRegionConfiguration"] == {"MultiRegionKeyType": "REPLICA", **members}
    assert kms[PRIMARY].describe_key(KeyId=key_id)["KeyMetadata"][
        "MultiRegionConfiguration"] == {"MultiRegionKeyType": "PRIMARY", **members}
    got = kms[REPLICA].decrypt(CiphertextBlob=blob, EncryptionContext={"a": "b"})
    assert (got["Plaintext"], got["KeyId"]) == (b"from us-east-1", replica_arn)
    back = kms[REPLICA].encrypt(KeyId=key_id, Plaintext=b"from eu")["CiphertextBlob"]
    assert kms[PRIMARY].decrypt(CiphertextBlob=back)["Plaintext"] == b"from eu"
    assert kms[REPLICA].list_resource_tags(KeyId=key_id)["Tags"] == [
        {"TagKey": "where", "TagValue": "eu"}]
    assert kms[PRIMARY].list_resource_tags(KeyId=key_id)["Tags"] == []


def test_rotation_on_the_primary_reaches_replicas_even_one_made_after_three(
        kms: dict[str, Any]) -> None:
    key_id = kms[PRIMARY].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    replicate(kms, key_id, REPLICA)
    blobs = [kms[PRIMARY].encrypt(KeyId=key_id, Plaintext=b"v0")["CiphertextBlob"]]
    for n in range(1, 4):
        kms[PRIMARY].rotate_key_on_demand(KeyId=key_id)
        blobs.append(kms[PRIMARY].encrypt(KeyId=key_id, Plaintext=b"v%d" % n)["CiphertextBlob"])
    current = kms[PRIMARY].describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"]

    eventually(lambda: kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"][
        "CurrentKeyMaterialId"] == current, "the rotation to reach the replica")
    replicate(kms, key_id, LATE)

    for region in (REPLICA, LATE):
        plain = [kms[region].decrypt(CiphertextBlob=b)["Plaintext"] for b in blobs]
        assert plain == [b"v0", b"v1", b"v2", b"v3"]
        md = kms[region].describe_key(KeyId=key_id)["KeyMetadata"]
        assert md["CurrentKeyMaterialId"] == current
        assert len(md["MultiRegionConfiguration"]["ReplicaKeys"]) == 2
        rotations = kms[region].list_key_rotations(KeyId=key_id)["Rotations"]
        assert [r["RotationType"] for r in rotations] == ["ON_DEMAND"] * 3
    fresh = kms[LATE].encrypt(KeyId=key_id, Plaintext=b"late")["CiphertextBlob"]
    assert kms[REPLICA].decrypt(CiphertextBlob=fresh)["Plaintext"] == b"late"
    arn = kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    for call in (kms[REPLICA].rotate_key_on_demand, kms[REPLICA].enable_key_rotation):
        code, message = error_of(call, KeyId=key_id)
        assert code == "UnsupportedOperationException" and message.startswith(
            f"{arn} is not a multi-Region primary key.")


def test_each_region_keeps_its_own_enabled_state_description_and_tags(
        kms: dict[str, Any]) -> None:
    key_id = kms[PRIMARY].create_key(MultiRegion=True, Description="p")["KeyMetadata"]["KeyId"]
    replicate(kms, key_id, REPLICA, Description="r")

    kms[REPLICA].disable_key(KeyId=key_id)
    kms[PRIMARY].tag_resource(KeyId=key_id, Tags=[{"TagKey": "only", "TagValue": "primary"}])

    assert kms[PRIMARY].encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]
    assert state_in(kms[REPLICA], key_id) == "Disabled"
    assert kms[PRIMARY].describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == "p"
    assert kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == "r"
    assert kms[REPLICA].list_resource_tags(KeyId=key_id)["Tags"] == []


def test_aws_refusals(kms: dict[str, Any]) -> None:
    single = kms[PRIMARY].create_key()["KeyMetadata"]["KeyId"]
    key_id = kms[PRIMARY].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    replicate(kms, key_id, REPLICA)
    replica_arn = kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]

    assert error_of(kms[PRIMARY].replicate_key, KeyId=single, ReplicaRegion=REPLICA) == (
        "UnsupportedOperationException", f"Unable to replicate a non-MultiRegion key {single}")
    code, message = error_of(kms[REPLICA].replicate_key, KeyId=key_id, ReplicaRegion=LATE)
    assert code == "UnsupportedOperationException"
    assert message.startswith(f"{replica_arn} is not a multi-Region primary key.")
    for region in (REPLICA, PRIMARY):
        assert error_of(kms[PRIMARY].replicate_key, KeyId=key_id, ReplicaRegion=region) == (
            "AlreadyExistsException", f"Unable to replicate key {key_id} to region {region}, "
                                      "as the key already exist there")
    code, _ = error_of(client_for(kms[PRIMARY].meta.endpoint_url, validate=False,
                                  region=PRIMARY).replicate_key,
                       KeyId=key_id, ReplicaRegion="not_a_region")
    assert code == "ValidationException"
    kms[PRIMARY].disable_key(KeyId=key_id)
    primary_arn = kms[PRIMARY].describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    assert error_of(kms[PRIMARY].replicate_key, KeyId=key_id, ReplicaRegion=LATE) == (
        "DisabledException", f"{primary_arn} is disabled.")
    # Nothing reached the third region from the refused calls.
    with pytest.raises(ClientError) as info:
        kms[LATE].describe_key(KeyId=key_id)
    assert info.value.response["Error"]["Code"] == "NotFoundException"


def _identity(node: ServerProcess, region: str) -> RegionIdentity:
    path = region_dir(node, region)
    return RegionIdentity.load_or_create(path, RootKey.load_or_create(path, create=False))


def test_material_crosses_only_sealed_to_its_region(node: ServerProcess,
                                                    kms: dict[str, Any]) -> None:
    key_id = kms[PRIMARY].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    replicate(kms, key_id, REPLICA)
    kms[PRIMARY].rotate_key_on_demand(KeyId=key_id)
    eventually(lambda: len([r for r in shared_rows(
        region_dir(node, REPLICA) / "events.sqlite3") if r[0] == mr.mrk_stream(key_id)]) == 2,
        "both versions in the replica's log")

    ids = {r: _identity(node, r) for r in (PRIMARY, REPLICA, LATE)}
    for region in (PRIMARY, REPLICA):
        rows = [r for r in shared_rows(region_dir(node, region) / "events.sqlite3")
                if r[0] == mr.mrk_stream(key_id)]
        assert {origin for _, origin, _ in rows} == {PRIMARY}
        for _, _, body in rows:
            (to, sealed), = body["sealed_for"]
            assert to == REPLICA
            context = mr.transport_context(key_id, body["material_id"], PRIMARY, REPLICA)
            raw = ids[REPLICA].reseal(sealed, context, lambda b: b"\x00" + bytes(
                x ^ 0xFF for x in b))  # a stand-in sealer: the clear bytes stay in here
            assert len(raw) == 33
            for other in (ids[PRIMARY], ids[LATE]):
                with pytest.raises(transport.PeerMaterialUnreadable):
                    other.reseal(sealed, context, lambda b: b"")
            with pytest.raises(transport.PeerMaterialUnreadable):
                ids[REPLICA].reseal(sealed, mr.transport_context(
                    key_id, body["material_id"], PRIMARY, LATE), lambda b: b"")
            clear = bytes(x ^ 0xFF for x in raw[1:])
            for db_region in (PRIMARY, REPLICA):
                db = region_dir(node, db_region) / "events.sqlite3"
                for blob in (clear, base64.b64encode(clear)):
                    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                        hits = conn.execute("SELECT count(*) FROM events WHERE instr(body, ?)",
                                            (blob,)).fetchone()[0]
                    assert hits == 0


def test_hmac_and_signing_keys_verify_in_every_member(kms: dict[str, Any]) -> None:
    mac_key = kms[PRIMARY].create_key(MultiRegion=True, KeySpec="HMAC_256",
                                      KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["KeyId"]
    sign_key = kms[PRIMARY].create_key(MultiRegion=True, KeySpec="ECC_NIST_P256",
                                       KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    for key_id in (mac_key, sign_key):
        replicate(kms, key_id, REPLICA)

    mac = kms[PRIMARY].generate_mac(KeyId=mac_key, Message=b"m",
                                    MacAlgorithm="HMAC_SHA_256")["Mac"]
    assert kms[REPLICA].verify_mac(KeyId=mac_key, Message=b"m", Mac=mac,
                                   MacAlgorithm="HMAC_SHA_256")["MacValid"]
    signature = kms[REPLICA].sign(KeyId=sign_key, Message=b"m",
                                  SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    assert kms[PRIMARY].verify(KeyId=sign_key, Message=b"m", Signature=signature,
                               SigningAlgorithm="ECDSA_SHA_256")["SignatureValid"]
    assert (kms[REPLICA].get_public_key(KeyId=sign_key)["PublicKey"]
            == kms[PRIMARY].get_public_key(KeyId=sign_key)["PublicKey"])


def test_automatic_rotation_reaches_the_replica_and_replicas_survive_a_restart(
        tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", region=PRIMARY).start()
    try:
        kms = {r: client_for(server.url, region=r) for r in (PRIMARY, REPLICA)}
        key_id = kms[PRIMARY].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
        replicate(kms, key_id, REPLICA)
        kms[PRIMARY].enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
        old = kms[PRIMARY].encrypt(KeyId=key_id, Plaintext=b"old")["CiphertextBlob"]

        server.post("/_kms/clock", {"advance_seconds": 91 * 86_400})

        rotations = kms[PRIMARY].list_key_rotations(KeyId=key_id)["Rotations"]
        assert [r["RotationType"] for r in rotations] == ["AUTOMATIC"]
        current = kms[PRIMARY].describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"]
        eventually(lambda: kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"][
            "CurrentKeyMaterialId"] == current, "the automatic rotation in the replica")
        new = kms[PRIMARY].encrypt(KeyId=key_id, Plaintext=b"new")["CiphertextBlob"]
        server.stop()
        server.start()
        kms = {r: client_for(server.url, region=r) for r in (PRIMARY, REPLICA)}
        assert state_in(kms[REPLICA], key_id) == "Enabled"
        assert [kms[REPLICA].decrypt(CiphertextBlob=b)["Plaintext"] for b in (old, new)] == [
            b"old", b"new"]
        # The restarted replica resumed at its cursor: the next rotation still arrives.
        kms[PRIMARY].rotate_key_on_demand(KeyId=key_id)
        latest = kms[PRIMARY].describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"]
        eventually(lambda: kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"][
            "CurrentKeyMaterialId"] == latest, "a rotation after the restart")
        assert len(kms[REPLICA].list_key_rotations(KeyId=key_id)["Rotations"]) == 2
    finally:
        server.stop()


def test_the_replicas_creation_date_is_the_one_replicate_key_answered(
        kms: dict[str, Any]) -> None:
    key_id = kms[PRIMARY].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    out = replicate(kms, key_id, REPLICA)
    assert (kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"]["CreationDate"]
            == out["ReplicaKeyMetadata"]["CreationDate"])


# -- asymmetric keys in every member: RSA encrypt, ECDH, RSA sign ------------------------------
def _public_key_in(client: Any, key_id: str) -> Any:
    return load_der_public_key(client.get_public_key(KeyId=key_id)["PublicKey"])


def test_rsa_decrypt_in_every_member_of_what_a_replicas_public_key_encrypted(
        kms: dict[str, Any]) -> None:
    key_id = kms[PRIMARY].create_key(MultiRegion=True, KeySpec="RSA_2048",
                                     KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]
    replicate(kms, key_id, REPLICA)
    alg = "RSAES_OAEP_SHA_256"

    assert (kms[REPLICA].get_public_key(KeyId=key_id)["PublicKey"]
            == kms[PRIMARY].get_public_key(KeyId=key_id)["PublicKey"])
    offline = _public_key_in(kms[REPLICA], key_id).encrypt(b"made offline", padding.OAEP(
        mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    for region in (PRIMARY, REPLICA):
        got = kms[region].decrypt(KeyId=key_id, CiphertextBlob=offline, EncryptionAlgorithm=alg)
        assert got["Plaintext"] == b"made offline"
        assert got["KeyId"] == kms[region].describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    blob = kms[REPLICA].encrypt(KeyId=key_id, Plaintext=b"from eu",
                                EncryptionAlgorithm=alg)["CiphertextBlob"]
    assert kms[PRIMARY].decrypt(KeyId=key_id, CiphertextBlob=blob,
                                EncryptionAlgorithm=alg)["Plaintext"] == b"from eu"


def test_ecdh_gives_the_same_shared_secret_in_every_member(kms: dict[str, Any]) -> None:
    key_id = kms[PRIMARY].create_key(MultiRegion=True, KeySpec="ECC_NIST_P256",
                                     KeyUsage="KEY_AGREEMENT")["KeyMetadata"]["KeyId"]
    replicate(kms, key_id, REPLICA)
    peer = ec.generate_private_key(ec.SECP256R1())
    peer_der = peer.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

    secrets = [kms[region].derive_shared_secret(
        KeyId=key_id, KeyAgreementAlgorithm="ECDH", PublicKey=peer_der)["SharedSecret"]
        for region in (PRIMARY, REPLICA)]

    offline = peer.exchange(ec.ECDH(), _public_key_in(kms[REPLICA], key_id))
    assert secrets == [offline, offline]


def test_rsa_signature_from_a_replica_verifies_in_the_primary_and_offline(
        kms: dict[str, Any]) -> None:
    key_id = kms[PRIMARY].create_key(MultiRegion=True, KeySpec="RSA_2048",
                                     KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    replicate(kms, key_id, REPLICA)
    alg = "RSASSA_PSS_SHA_256"

    signature = kms[REPLICA].sign(KeyId=key_id, Message=b"m",
                                  SigningAlgorithm=alg)["Signature"]

    assert kms[PRIMARY].verify(KeyId=key_id, Message=b"m", Signature=signature,
                               SigningAlgorithm=alg)["SignatureValid"]
    _public_key_in(kms[PRIMARY], key_id).verify(  # raises InvalidSignature if not
        signature, b"m", padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                     salt_length=hashes.SHA256.digest_size), hashes.SHA256())
