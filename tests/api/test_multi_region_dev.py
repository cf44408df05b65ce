"""Multi-region keys between the regions one ``kms serve --dev`` hosts: ReplicateKey, the
replica's life (Creating, then Enabled), cross-region Decrypt both ways, rotation reaching
replicas (also one created after three rotations), regional independence, AWS's refusals,
and material that never sits in clear in either region's log."""

from __future__ import annotations

import base64
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
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
from tests.api.test_import import import_material
from tests.conftest import client_for
from tests.support.expect import eventually
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

PRIMARY, REPLICA, LATE, FOURTH = "us-east-1", "eu-west-1", "ap-southeast-2", "ap-northeast-1"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("mrk") / "data", region=PRIMARY).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def kms(node: ServerProcess) -> dict[str, Any]:
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


def _shared_rows(db: Path) -> list[tuple[str, str, dict[str, Any]]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT stream, type, origin_region, body FROM events "
                            "WHERE type = 'MaterialShared'").fetchall()
    return [(s, origin, msgpack.unpackb(body, raw=False)) for s, _, origin, body in rows]


def _identity(node: ServerProcess, region: str) -> RegionIdentity:
    path = region_dir(node, region)
    return RegionIdentity.load_or_create(path, RootKey.load_or_create(path, create=False))


def test_material_crosses_only_sealed_to_its_region(node: ServerProcess,
                                                    kms: dict[str, Any]) -> None:
    key_id = kms[PRIMARY].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    replicate(kms, key_id, REPLICA)
    kms[PRIMARY].rotate_key_on_demand(KeyId=key_id)
    eventually(lambda: len([r for r in _shared_rows(
        region_dir(node, REPLICA) / "events.sqlite3") if r[0] == mr.mrk_stream(key_id)]) == 2,
        "both versions in the replica's log")

    ids = {r: _identity(node, r) for r in (PRIMARY, REPLICA, LATE)}
    for region in (PRIMARY, REPLICA):
        rows = [r for r in _shared_rows(region_dir(node, region) / "events.sqlite3")
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


# -- shared rotation settings, deletion of replicas and primaries, UpdatePrimaryRegion ---------
DAY = 86_400


def config_in(client: Any, key_id: str) -> dict[str, Any]:
    md = client.describe_key(KeyId=key_id)["KeyMetadata"]
    return {"type": md["MultiRegionConfiguration"]["MultiRegionKeyType"],
            "primary": md["MultiRegionConfiguration"]["PrimaryKey"]["Region"],
            "replicas": sorted(r["Region"] for r in md["MultiRegionConfiguration"]["ReplicaKeys"]),
            "state": md["KeyState"]}


def _types_in(node: ServerProcess, region: str, key_id: str) -> list[str]:
    db = region_dir(node, region) / "events.sqlite3"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT type FROM events WHERE stream IN (?, ?) ORDER BY seq",
                            (f"key/{key_id}", mr.mrk_stream(key_id))).fetchall()
    return [t for t, in rows]


def test_rotation_settings_and_dates_are_the_primarys_in_every_replica(
        node: ServerProcess, kms: dict[str, Any]) -> None:
    key_id = kms[PRIMARY].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    replicate(kms, key_id, REPLICA)

    kms[PRIMARY].enable_key_rotation(KeyId=key_id, RotationPeriodInDays=180)

    primary = kms[PRIMARY].get_key_rotation_status(KeyId=key_id)
    eventually(lambda: kms[REPLICA].get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"],
             "the setting in the replica")
    seen = kms[REPLICA].get_key_rotation_status(KeyId=key_id)
    assert (seen["RotationPeriodInDays"], seen["NextRotationDate"]) == (
        180, primary["NextRotationDate"])
    assert seen["KeyId"].startswith(f"arn:aws:kms:{REPLICA}:")

    kms[PRIMARY].rotate_key_on_demand(KeyId=key_id)
    node.post("/_kms/clock", {"advance_seconds": DAY})  # a late replica syncs a day later
    replicate(kms, key_id, LATE)
    dates = {r: [(x["KeyMaterialId"], x["RotationDate"]) for x in kms[r].list_key_rotations(
        KeyId=key_id)["Rotations"]] for r in (PRIMARY, LATE)}
    assert dates[LATE] == dates[PRIMARY] and len(dates[PRIMARY]) == 1
    assert kms[LATE].get_key_rotation_status(KeyId=key_id)["NextRotationDate"] == primary[
        "NextRotationDate"]

    kms[PRIMARY].disable_key_rotation(KeyId=key_id)
    for region in (REPLICA, LATE):
        eventually(lambda r=region: not kms[r].get_key_rotation_status(KeyId=key_id)[
            "KeyRotationEnabled"], f"rotation off in {region}")
        code, _ = error_of(kms[region].disable_key_rotation, KeyId=key_id)
        assert code == "UnsupportedOperationException"


def test_a_primary_with_replicas_waits_in_pending_replica_deletion(
        node: ServerProcess, kms: dict[str, Any]) -> None:
    key_id = kms[PRIMARY].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    for region in (REPLICA, LATE):
        replicate(kms, key_id, region)
    arn = kms[PRIMARY].describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]

    out = kms[PRIMARY].schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)

    assert (out["KeyId"], out["KeyState"], out["PendingWindowInDays"]) == (
        arn, "PendingReplicaDeletion", 7)
    assert "DeletionDate" not in out
    md = kms[PRIMARY].describe_key(KeyId=key_id)["KeyMetadata"]
    assert (md["KeyState"], md["PendingDeletionWindowInDays"], md["Enabled"]) == (
        "PendingReplicaDeletion", 7, False)
    assert "DeletionDate" not in md
    assert error_of(kms[PRIMARY].encrypt, KeyId=key_id, Plaintext=b"x")[0] == (
        "KMSInvalidStateException")
    # CancelKeyDeletion works on it as on PendingDeletion: the key comes back Disabled.
    assert kms[PRIMARY].cancel_key_deletion(KeyId=key_id)["KeyId"] == arn
    assert state_in(kms[PRIMARY], key_id) == "Disabled"
    kms[PRIMARY].schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)

    # Replicas can be deleted at any time; each leaves the set in every member.
    kms[REPLICA].schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    kms[LATE].schedule_key_deletion(KeyId=key_id, PendingWindowInDays=30)
    node.post("/_kms/clock", {"advance_seconds": 8 * DAY})
    with pytest.raises(ClientError) as info:
        kms[REPLICA].describe_key(KeyId=key_id)
    assert info.value.response["Error"]["Code"] == "NotFoundException"
    for region in (PRIMARY, LATE):
        eventually(lambda r=region: config_in(kms[r], key_id)["replicas"] == [LATE],
                 f"the deleted replica gone from {region}'s set")
    assert state_in(kms[PRIMARY], key_id) == "PendingReplicaDeletion"

    now = float(node.post("/_kms/clock", {"advance_seconds": 23 * DAY})["now"])  # type: ignore[arg-type]
    eventually(lambda: state_in(kms[PRIMARY], key_id) == "PendingDeletion",
             "the primary's waiting period to start")
    md = kms[PRIMARY].describe_key(KeyId=key_id)["KeyMetadata"]
    assert md["MultiRegionConfiguration"]["ReplicaKeys"] == []
    assert "PendingDeletionWindowInDays" not in md
    deletion = md["DeletionDate"].timestamp()
    assert now + 7 * DAY - 60 <= deletion <= now + 7 * DAY + 60
    node.post("/_kms/clock", {"advance_seconds": 8 * DAY})
    with pytest.raises(ClientError) as info:
        kms[PRIMARY].describe_key(KeyId=key_id)
    assert info.value.response["Error"]["Code"] == "NotFoundException"


def test_update_primary_region_hands_the_primary_over(node: ServerProcess,
                                                      kms: dict[str, Any]) -> None:
    key_id = kms[PRIMARY].create_key(MultiRegion=True, Description="p")["KeyMetadata"]["KeyId"]
    kms[PRIMARY].enable_key_rotation(KeyId=key_id, RotationPeriodInDays=100)
    for region in (REPLICA, LATE):
        replicate(kms, key_id, region)
    blob = kms[PRIMARY].encrypt(KeyId=key_id, Plaintext=b"before")["CiphertextBlob"]

    assert kms[PRIMARY].update_primary_region(KeyId=key_id, PrimaryRegion=REPLICA)[
        "ResponseMetadata"]["HTTPStatusCode"] == 200

    want = {PRIMARY: "REPLICA", REPLICA: "PRIMARY", LATE: "REPLICA"}
    for region, kind in want.items():
        eventually(lambda r=region, k=kind: config_in(kms[r], key_id) == {
            "type": k, "primary": REPLICA, "replicas": [LATE, PRIMARY], "state": "Enabled"},
            f"the new set in {region}")
    for region in (PRIMARY, REPLICA):  # both passed through Updating
        types = _types_in(node, region, key_id)
        assert types.count("KeyUpdateStarted") == types.count("KeyUpdateFinished") == 1
    assert "PrimaryRegionAccepted" in _types_in(node, LATE, key_id)
    assert kms[PRIMARY].describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == "p"
    assert kms[REPLICA].decrypt(CiphertextBlob=blob)["Plaintext"] == b"before"
    assert kms[REPLICA].get_key_rotation_status(KeyId=key_id)["RotationPeriodInDays"] == 100

    # Rotation and replication now belong to the new primary.
    old_arn = kms[PRIMARY].describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    code, message = error_of(kms[PRIMARY].rotate_key_on_demand, KeyId=key_id)
    assert code == "UnsupportedOperationException"
    assert message.startswith(f"{old_arn} is not a multi-Region primary key.")
    assert error_of(kms[PRIMARY].replicate_key, KeyId=key_id, ReplicaRegion=FOURTH)[0] == (
        "UnsupportedOperationException")
    kms[REPLICA].rotate_key_on_demand(KeyId=key_id)
    current = kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"]
    for region in (PRIMARY, LATE):
        eventually(lambda r=region: kms[r].describe_key(KeyId=key_id)["KeyMetadata"][
            "CurrentKeyMaterialId"] == current, f"the new primary's rotation in {region}")
    out = kms[REPLICA].replicate_key(KeyId=key_id, ReplicaRegion=FOURTH)
    assert out["ReplicaKeyMetadata"]["MultiRegionConfiguration"]["PrimaryKey"]["Region"] == (
        REPLICA)
    eventually(lambda: state_in(kms[FOURTH], key_id) == "Enabled", "the new primary's replica")
    assert kms[FOURTH].decrypt(CiphertextBlob=blob)["Plaintext"] == b"before"
    for region in (PRIMARY, REPLICA, LATE, FOURTH):
        eventually(lambda r=region: config_in(kms[r], key_id)["replicas"] == sorted(
            [PRIMARY, LATE, FOURTH]), f"the fourth member known in {region}")

    # And the primary can move back, under a further epoch.
    kms[REPLICA].update_primary_region(KeyId=key_id, PrimaryRegion=PRIMARY)
    for region in (PRIMARY, REPLICA, LATE, FOURTH):
        eventually(lambda r=region: config_in(kms[r], key_id)["primary"] == PRIMARY
                 and config_in(kms[r], key_id)["state"] == "Enabled", f"back in {region}")
    kms[PRIMARY].rotate_key_on_demand(KeyId=key_id)


def test_update_primary_region_refusals(node: ServerProcess, kms: dict[str, Any]) -> None:
    single = kms[PRIMARY].create_key()["KeyMetadata"]
    key_id = kms[PRIMARY].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    replicate(kms, key_id, REPLICA)
    arn = kms[PRIMARY].describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    replica_arn = kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    before = {r: config_in(kms[r], key_id) for r in (PRIMARY, REPLICA)}
    account = arn.split(":")[4]

    code, message = error_of(kms[PRIMARY].update_primary_region, KeyId=single["KeyId"],
                             PrimaryRegion=REPLICA)
    assert (code, message.split(" is ")[0]) == ("UnsupportedOperationException", single["Arn"])
    assert "not a multi-Region key" in message
    code, message = error_of(kms[REPLICA].update_primary_region, KeyId=key_id,
                             PrimaryRegion=PRIMARY)
    assert code == "UnsupportedOperationException"
    assert message.startswith(f"{replica_arn} is not a multi-Region primary key.")
    assert error_of(kms[PRIMARY].update_primary_region, KeyId=key_id,
                    PrimaryRegion=LATE) == (
        "NotFoundException", f"Key 'arn:aws:kms:{LATE}:{account}:key/{key_id}' does not exist")
    code, message = error_of(kms[PRIMARY].update_primary_region, KeyId=key_id,
                             PrimaryRegion=PRIMARY)
    assert (code, message) == ("UnsupportedOperationException",
                               f"{arn} is already the primary key in {PRIMARY}.")
    kms[PRIMARY].disable_key(KeyId=key_id)
    assert error_of(kms[PRIMARY].update_primary_region, KeyId=key_id,
                    PrimaryRegion=REPLICA) == ("DisabledException", f"{arn} is disabled.")
    kms[PRIMARY].enable_key(KeyId=key_id)
    kms[PRIMARY].schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert error_of(kms[PRIMARY].update_primary_region, KeyId=key_id,
                    PrimaryRegion=REPLICA)[0] == "KMSInvalidStateException"
    kms[PRIMARY].cancel_key_deletion(KeyId=key_id)
    kms[PRIMARY].enable_key(KeyId=key_id)

    assert {r: config_in(kms[r], key_id) for r in (PRIMARY, REPLICA)} == before
    for region in (PRIMARY, REPLICA):
        types = _types_in(node, region, key_id)
        assert "PrimaryRegionUpdated" not in types and "KeyUpdateStarted" not in types


def _facts(node: ServerProcess, region: str, operation: str) -> list[dict[str, Any]]:
    db = region_dir(node, region) / "events.sqlite3"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT body FROM events WHERE type = 'ApiCallRecorded'").fetchall()
    facts = [msgpack.unpackb(body, raw=False) for body, in rows]
    return [f for f in facts if f["operation"] == operation]


def test_a_handover_to_a_replica_that_is_not_enabled_is_declined_and_rolled_back(
        node: ServerProcess, kms: dict[str, Any]) -> None:
    key_id = kms[PRIMARY].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    for region in (REPLICA, LATE):
        replicate(kms, key_id, region)
    replica_arn = kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    kms[REPLICA].disable_key(KeyId=key_id)  # only eu-west-1 knows its key is Disabled

    kms[PRIMARY].update_primary_region(KeyId=key_id, PrimaryRegion=REPLICA)

    want = {PRIMARY: ("PRIMARY", "Enabled"), REPLICA: ("REPLICA", "Disabled"),
            LATE: ("REPLICA", "Enabled")}
    for region, (kind, state) in want.items():
        eventually(lambda r=region, k=kind, s=state: config_in(kms[r], key_id) == {
            "type": k, "primary": PRIMARY, "replicas": [LATE, REPLICA], "state": s},
            f"the handover rolled back in {region}")
        assert "PrimaryRegionDeclined" in _types_in(node, region, key_id)
    types = _types_in(node, PRIMARY, key_id)
    assert types.count("KeyUpdateStarted") == types.count("KeyUpdateFinished") == 1
    assert "KeyUpdateStarted" not in _types_in(node, REPLICA, key_id)
    reason = f"{replica_arn} is disabled."
    declined = [f for f in _facts(node, REPLICA, "UpdatePrimaryRegion")
                if f["additional"].get("primaryRegionDeclined") == reason]
    assert len(declined) == 1 and declined[0]["event_type"] == "AwsServiceEvent"
    finished = [f for f in _facts(node, PRIMARY, "UpdatePrimaryRegion")
                if f["additional"].get("declineReason") == reason]
    assert len(finished) == 1 and finished[0]["additional"]["primaryRegionDeclinedBy"] == (
        REPLICA)

    # The old primary is still the primary: it rotates, and every member follows.
    kms[PRIMARY].rotate_key_on_demand(KeyId=key_id)
    now = kms[PRIMARY].describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"]
    for region in (REPLICA, LATE):
        eventually(lambda r=region: kms[r].describe_key(KeyId=key_id)["KeyMetadata"][
            "CurrentKeyMaterialId"] == now, f"the rotation in {region}")
    # Once the replica is Enabled, the handover goes through (under a later epoch).
    kms[REPLICA].enable_key(KeyId=key_id)
    kms[PRIMARY].update_primary_region(KeyId=key_id, PrimaryRegion=REPLICA)
    for region in (PRIMARY, REPLICA, LATE):
        eventually(lambda r=region: config_in(kms[r], key_id)["primary"] == REPLICA
                   and config_in(kms[r], key_id)["state"] == "Enabled", f"moved in {region}")


# -- races, imported material, creation dates, unreadable material, replicating again ---------
def test_a_rotation_racing_replicate_key_still_reaches_the_new_replica(
        node: ServerProcess, kms: dict[str, Any]) -> None:
    rotator = client_for(node.url, region=PRIMARY)  # a second client, in its own thread
    key_ids = [kms[PRIMARY].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
               for _ in range(15)]
    with ThreadPoolExecutor(2) as pool:
        for key_id in key_ids:
            both = threading.Barrier(2)

            def replicate_now(k: str = key_id, b: threading.Barrier = both) -> Any:
                b.wait()
                return kms[PRIMARY].replicate_key(KeyId=k, ReplicaRegion=REPLICA)

            def rotate_now(k: str = key_id, b: threading.Barrier = both) -> Any:
                b.wait()
                return rotator.rotate_key_on_demand(KeyId=k)

            for done in [pool.submit(replicate_now), pool.submit(rotate_now)]:
                done.result()

    for key_id in key_ids:
        blob = kms[PRIMARY].encrypt(KeyId=key_id, Plaintext=b"after")["CiphertextBlob"]
        eventually(lambda k=key_id, b=blob: kms[REPLICA].decrypt(
            KeyId=k, CiphertextBlob=b)["Plaintext"] == b"after",
            f"the replica of {key_id} to decrypt with the rotated version")
        current = kms[PRIMARY].describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"]
        md = kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"]
        assert (md["KeyState"], md["CurrentKeyMaterialId"]) == ("Enabled", current)


def test_a_replica_of_an_imported_primary_takes_the_same_material_by_import(
        node: ServerProcess, kms: dict[str, Any]) -> None:
    key_id = kms[PRIMARY].create_key(MultiRegion=True, Origin="EXTERNAL")["KeyMetadata"][
        "KeyId"]
    material = os.urandom(32)
    material_id = import_material(kms[PRIMARY], key_id, material)["KeyMaterialId"]
    blob = kms[PRIMARY].encrypt(KeyId=key_id, Plaintext=b"imported")["CiphertextBlob"]

    kms[PRIMARY].replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)

    eventually(lambda: state_in(kms[REPLICA], key_id) == "PendingImport", "the replica")
    md = kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"]
    assert md["Origin"] == "EXTERNAL" and "CurrentKeyMaterialId" not in md
    assert error_of(kms[REPLICA].decrypt, CiphertextBlob=blob)[0] == "KMSInvalidStateException"
    assert not [r for r in _shared_rows(region_dir(node, REPLICA) / "events.sqlite3")
                if r[0] == mr.mrk_stream(key_id)]  # no material of it ever left the primary

    code, message = error_of(lambda: import_material(kms[REPLICA], key_id, os.urandom(32)))
    assert code == "IncorrectKeyMaterialException"
    assert message.startswith("The key material you are importing is not the same")
    assert state_in(kms[REPLICA], key_id) == "PendingImport"
    assert "KeyMaterialImported" not in _types_in(node, REPLICA, key_id)

    assert import_material(kms[REPLICA], key_id, material)["KeyMaterialId"] == material_id
    md = kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"]
    assert (md["KeyState"], md["CurrentKeyMaterialId"]) == ("Enabled", material_id)
    assert kms[REPLICA].decrypt(CiphertextBlob=blob)["Plaintext"] == b"imported"
    back = kms[REPLICA].encrypt(KeyId=key_id, Plaintext=b"from eu")["CiphertextBlob"]
    assert kms[PRIMARY].decrypt(CiphertextBlob=back)["Plaintext"] == b"from eu"

    # Each region's copy is its own: deleting it in the primary leaves the replica's.
    kms[PRIMARY].delete_imported_key_material(KeyId=key_id)
    assert state_in(kms[PRIMARY], key_id) == "PendingImport"
    assert kms[REPLICA].decrypt(CiphertextBlob=blob)["Plaintext"] == b"imported"
    assert state_in(kms[REPLICA], key_id) == "Enabled"


def test_the_replicas_creation_date_is_the_one_replicate_key_answered(
        kms: dict[str, Any]) -> None:
    key_id = kms[PRIMARY].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    out = replicate(kms, key_id, REPLICA)
    assert (kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"]["CreationDate"]
            == out["ReplicaKeyMetadata"]["CreationDate"])


def _audited(node: ServerProcess, region: str, operation: str, arn: str) -> int:
    db = region_dir(node, region) / "events.sqlite3"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT body FROM events WHERE type = 'ApiCallRecorded'").fetchall()
    facts = [msgpack.unpackb(body, raw=False) for body, in rows]
    return sum(1 for f in facts if f["operation"] == operation and arn in f["resources"])


def test_material_that_does_not_open_records_no_synchronization(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", region=PRIMARY).start()
    try:
        kms = {r: client_for(server.url, region=r) for r in (PRIMARY, REPLICA)}
        key_id = kms[PRIMARY].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
        replicate(kms, key_id, REPLICA)
        # The replica region loses its data (and with it its identity): the primary's log
        # still holds the versions sealed to the identity it had.
        server.stop()
        shutil.rmtree(region_dir(server, REPLICA))
        server.start()
        kms = {r: client_for(server.url, region=r) for r in (PRIMARY, REPLICA)}
        eventually(lambda: state_in(kms[REPLICA], key_id) == "Creating", "the replica again")
        # More wakes of the replica region's reactor: another key replicated there.
        other = kms[PRIMARY].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
        replicate(kms, other, REPLICA)
        kms[PRIMARY].rotate_key_on_demand(KeyId=other)
        current = kms[PRIMARY].describe_key(KeyId=other)["KeyMetadata"]["CurrentKeyMaterialId"]
        eventually(lambda: kms[REPLICA].describe_key(KeyId=other)["KeyMetadata"][
            "CurrentKeyMaterialId"] == current, "the other key's rotation")

        arn = kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
        assert state_in(kms[REPLICA], key_id) == "Creating"
        assert _audited(server, REPLICA, "CreateKey", arn) == 1
        assert _audited(server, REPLICA, "SynchronizeMultiRegionKey", arn) == 0
    finally:
        server.stop()


def test_replicating_again_into_a_region_whose_replica_was_deleted(
        node: ServerProcess, kms: dict[str, Any]) -> None:
    key_id = kms[PRIMARY].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    replicate(kms, key_id, REPLICA, Description="first")
    blob = kms[PRIMARY].encrypt(KeyId=key_id, Plaintext=b"kept")["CiphertextBlob"]
    kms[REPLICA].schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    node.post("/_kms/clock", {"advance_seconds": 8 * DAY})
    eventually(lambda: config_in(kms[PRIMARY], key_id)["replicas"] == [], "the replica gone")
    kms[PRIMARY].rotate_key_on_demand(KeyId=key_id)  # a version the first replica never had
    after = kms[PRIMARY].encrypt(KeyId=key_id, Plaintext=b"after")["CiphertextBlob"]

    out = kms[PRIMARY].replicate_key(KeyId=key_id, ReplicaRegion=REPLICA, Description="second")

    assert out["ReplicaKeyMetadata"]["KeyState"] == "Creating"
    eventually(lambda: state_in(kms[REPLICA], key_id) == "Enabled", "the new replica")
    md = kms[REPLICA].describe_key(KeyId=key_id)["KeyMetadata"]
    assert md["Description"] == "second"
    assert md["CreationDate"] == out["ReplicaKeyMetadata"]["CreationDate"]
    assert [kms[REPLICA].decrypt(CiphertextBlob=b)["Plaintext"] for b in (blob, after)] == [
        b"kept", b"after"]
    for region in (PRIMARY, REPLICA):
        eventually(lambda r=region: config_in(kms[r], key_id)["replicas"] == [REPLICA],
                 f"the new replica in {region}'s set")


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
