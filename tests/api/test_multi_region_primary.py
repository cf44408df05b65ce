"""What a multi-region primary decides for every member, on one ``kms serve --dev``: the
rotation settings and dates every replica shows, a primary with replicas waiting in
PendingReplicaDeletion, UpdatePrimaryRegion handing the primary over, its refusals, and a
handover to a replica that is not Enabled declined and rolled back in every member."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from botocore.exceptions import ClientError

from tests.support.expect import eventually
from tests.support.multi_region_dev import (
    DAY,
    FOURTH,
    LATE,
    PRIMARY,
    REPLICA,
    clients,
    config_in,
    dev_node,
    error_of,
    region_dir,
    replicate,
    state_in,
    types_in,
)
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from dev_node(tmp_path_factory)


@pytest.fixture(scope="module")
def kms(node: ServerProcess) -> dict[str, Any]:
    return clients(node)


# -- shared rotation settings, deletion of replicas and primaries, UpdatePrimaryRegion ---------
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
        types = types_in(node, region, key_id)
        assert types.count("KeyUpdateStarted") == types.count("KeyUpdateFinished") == 1
    assert "PrimaryRegionAccepted" in types_in(node, LATE, key_id)
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
        types = types_in(node, region, key_id)
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
        assert "PrimaryRegionDeclined" in types_in(node, region, key_id)
    types = types_in(node, PRIMARY, key_id)
    assert types.count("KeyUpdateStarted") == types.count("KeyUpdateFinished") == 1
    assert "KeyUpdateStarted" not in types_in(node, REPLICA, key_id)
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
