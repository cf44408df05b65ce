"""Key rotation through a real node and boto3: EnableKeyRotation, DisableKeyRotation,
GetKeyRotationStatus, RotateKeyOnDemand, ListKeyRotations, and automatic rotation
driven by the dev clock (``POST /_kms/clock`` moves time and runs the scheduler)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.expect import advance
from tests.support.expect import refused_message as refused

ACCOUNT = "111122223333"
DAY = 86_400
MATERIAL_ID = re.compile(r"[0-9a-f]{64}")


def node_now(server: Any) -> float:
    return advance(server, 0)


def new_key(kms: Any, **params: Any) -> dict[str, Any]:
    md: dict[str, Any] = kms.create_key(**params)["KeyMetadata"]
    return md


def current_material(kms: Any, key_id: str) -> str:
    return str(kms.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"])


def rotations(kms: Any, key_id: str, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = kms.list_key_rotations(KeyId=key_id, **params)["Rotations"]
    return out


def material_of(kms: Any, blob: bytes) -> str:
    return str(kms.decrypt(CiphertextBlob=blob)["KeyMaterialId"])


# -- EnableKeyRotation / GetKeyRotationStatus / DisableKeyRotation ----------------------------
def test_rotation_is_off_until_enabled_and_then_defaults_to_365_days(kms: Any,
                                                                    server: Any) -> None:
    md = new_key(kms)

    status = kms.get_key_rotation_status(KeyId=md["KeyId"])
    assert status["KeyRotationEnabled"] is False
    assert status["KeyId"] == md["Arn"]
    assert "RotationPeriodInDays" not in status and "NextRotationDate" not in status

    kms.enable_key_rotation(KeyId=md["KeyId"])
    now = node_now(server)
    status = kms.get_key_rotation_status(KeyId=md["Arn"])
    assert status["KeyRotationEnabled"] is True
    assert status["RotationPeriodInDays"] == 365
    assert status["NextRotationDate"].timestamp() == pytest.approx(now + 365 * DAY, abs=60)
    assert "OnDemandRotationStartDate" not in status  # on-demand completes within the call


@pytest.mark.parametrize("days", [90, 180, 2560])
def test_rotation_period_can_be_chosen(kms: Any, server: Any, days: int) -> None:
    key_id = new_key(kms)["KeyId"]

    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=days)

    status = kms.get_key_rotation_status(KeyId=key_id)
    assert status["RotationPeriodInDays"] == days
    assert status["NextRotationDate"].timestamp() == pytest.approx(
        node_now(server) + days * DAY, abs=60)


def test_enabling_again_changes_the_period(kms: Any) -> None:
    key_id = new_key(kms)["KeyId"]
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=100)

    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=200)

    status = kms.get_key_rotation_status(KeyId=key_id)
    assert status["KeyRotationEnabled"] is True
    assert status["RotationPeriodInDays"] == 200


def test_enabling_again_with_the_same_period_keeps_the_schedule(kms: Any, server: Any) -> None:
    key_id = new_key(kms)["KeyId"]
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    scheduled = kms.get_key_rotation_status(KeyId=key_id)["NextRotationDate"]
    advance(server, 60 * DAY)

    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)  # idempotent re-apply

    assert kms.get_key_rotation_status(KeyId=key_id)["NextRotationDate"] == scheduled
    advance(server, 30 * DAY + 1)
    assert [e["RotationType"] for e in rotations(kms, key_id)] == ["AUTOMATIC"]


def test_a_new_period_counts_from_the_last_automatic_rotation_not_an_on_demand_one(
        kms: Any, server: Any) -> None:
    key_id = new_key(kms)["KeyId"]
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    enabled = kms.get_key_rotation_status(KeyId=key_id)["NextRotationDate"].timestamp() \
        - 90 * DAY
    advance(server, 30 * DAY)
    kms.rotate_key_on_demand(KeyId=key_id)

    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=180)

    status = kms.get_key_rotation_status(KeyId=key_id)
    assert status["RotationPeriodInDays"] == 180
    assert status["NextRotationDate"].timestamp() == pytest.approx(enabled + 180 * DAY, abs=1)
    now = advance(server, 100 * DAY)  # an automatic rotation at day 90 would have happened
    assert [e["RotationType"] for e in rotations(kms, key_id)] == ["ON_DEMAND"]
    advance(server, 50 * DAY + 1)
    assert [e["RotationType"] for e in rotations(kms, key_id)] == ["ON_DEMAND", "AUTOMATIC"]
    last = rotations(kms, key_id)[-1]["RotationDate"].timestamp()
    assert last == pytest.approx(now + 50 * DAY, abs=60)
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    assert kms.get_key_rotation_status(KeyId=key_id)["NextRotationDate"].timestamp() == \
        pytest.approx(last + 90 * DAY, abs=1)


@pytest.mark.parametrize(("days", "rule"), [
    (89, "greater than or equal to 90"),
    (0, "greater than or equal to 90"),
    (-5, "greater than or equal to 90"),
    (2561, "less than or equal to 2560"),
])
def test_rotation_period_outside_90_to_2560_is_a_validation_error(raw_kms: Any, days: int,
                                                                  rule: str) -> None:
    key_id = raw_kms.create_key()["KeyMetadata"]["KeyId"]

    refused(raw_kms.enable_key_rotation, "ValidationException",
            f"1 validation error detected: Value '{days}' at 'rotationPeriodInDays' failed to "
            f"satisfy constraint: Member must have value {rule}",
            KeyId=key_id, RotationPeriodInDays=days)

    assert raw_kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False


def test_disable_key_rotation_turns_it_off(kms: Any) -> None:
    key_id = new_key(kms)["KeyId"]
    kms.disable_key_rotation(KeyId=key_id)  # never enabled: fine, nothing changes
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)

    kms.disable_key_rotation(KeyId=key_id)

    status = kms.get_key_rotation_status(KeyId=key_id)
    assert status["KeyRotationEnabled"] is False
    assert "RotationPeriodInDays" not in status and "NextRotationDate" not in status


def test_a_disabled_rotation_does_not_happen(kms: Any, server: Any) -> None:
    key_id = new_key(kms)["KeyId"]
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    kms.disable_key_rotation(KeyId=key_id)

    advance(server, 91 * DAY)

    assert rotations(kms, key_id) == []


# -- automatic rotation -------------------------------------------------------------------------
def test_automatic_rotation_happens_once_the_period_has_passed(kms: Any, server: Any) -> None:
    md = new_key(kms)
    key_id, first = md["KeyId"], md["CurrentKeyMaterialId"]
    before = kms.encrypt(KeyId=key_id, Plaintext=b"before")["CiphertextBlob"]
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)

    advance(server, 90 * DAY - 3600)  # not yet due
    assert rotations(kms, key_id) == []
    assert current_material(kms, key_id) == first

    now = advance(server, 3601)

    entries = rotations(kms, key_id)
    assert len(entries) == 1
    entry = entries[0]
    assert entry["RotationType"] == "AUTOMATIC"
    assert entry["KeyId"] == md["Arn"]
    assert entry["KeyMaterialState"] == "CURRENT"
    assert entry["RotationDate"].timestamp() == pytest.approx(now, abs=60)
    second = current_material(kms, key_id)
    assert second != first and entry["KeyMaterialId"] == second
    # Encrypt uses the new material; the old ciphertext still opens with the old one.
    after = kms.encrypt(KeyId=key_id, Plaintext=b"after")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=after)["KeyMaterialId"] == second
    opened = kms.decrypt(CiphertextBlob=before)
    assert opened["Plaintext"] == b"before" and opened["KeyMaterialId"] == first
    # The schedule restarts from this rotation.
    status = kms.get_key_rotation_status(KeyId=key_id)
    assert status["NextRotationDate"].timestamp() == pytest.approx(now + 90 * DAY, abs=60)


def test_every_earlier_ciphertext_decrypts_with_its_own_material(kms: Any, server: Any) -> None:
    md = new_key(kms)
    key_id = md["KeyId"]
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    blobs: list[tuple[bytes, bytes, str]] = []

    def seal(n: int) -> None:
        plaintext = f"message {n}".encode()
        blob = kms.encrypt(KeyId=key_id, Plaintext=plaintext,
                           EncryptionContext={"n": str(n)})["CiphertextBlob"]
        blobs.append((blob, plaintext, current_material(kms, key_id)))

    seal(0)
    kms.rotate_key_on_demand(KeyId=key_id)      # 1: on demand
    seal(1)
    advance(server, 91 * DAY)                   # 2: automatic
    seal(2)
    kms.rotate_key_on_demand(KeyId=key_id)      # 3: on demand
    seal(3)
    advance(server, 91 * DAY)                   # 4: automatic
    seal(4)

    assert len({m for _, _, m in blobs}) == 5
    for n, (blob, plaintext, material) in enumerate(blobs):
        opened = kms.decrypt(CiphertextBlob=blob, EncryptionContext={"n": str(n)})
        assert opened["Plaintext"] == plaintext
        assert opened["KeyMaterialId"] == material
    # ReEncrypt under the same key moves old ciphertext onto the current material.
    moved = kms.re_encrypt(CiphertextBlob=blobs[0][0], SourceEncryptionContext={"n": "0"},
                           DestinationKeyId=key_id)
    assert moved["SourceKeyMaterialId"] == blobs[0][2]
    assert moved["DestinationKeyMaterialId"] == blobs[4][2]
    assert material_of(kms, moved["CiphertextBlob"]) == blobs[4][2]

    entries = rotations(kms, key_id)
    assert [e["RotationType"] for e in entries] == ["ON_DEMAND", "AUTOMATIC", "ON_DEMAND",
                                                     "AUTOMATIC"]
    assert [e["KeyMaterialId"] for e in entries] == [m for _, _, m in blobs[1:]]
    assert [e["KeyMaterialState"] for e in entries] == ["NON_CURRENT"] * 3 + ["CURRENT"]
    assert [e["RotationDate"] for e in entries] == sorted(e["RotationDate"] for e in entries)


def test_aliases_follow_the_key_across_rotations(kms: Any, server: Any) -> None:
    key_id = new_key(kms)["KeyId"]
    kms.create_alias(AliasName="alias/rotating", TargetKeyId=key_id)
    blob = kms.encrypt(KeyId="alias/rotating", Plaintext=b"x")["CiphertextBlob"]

    kms.rotate_key_on_demand(KeyId=key_id)

    fresh = kms.encrypt(KeyId="alias/rotating", Plaintext=b"y")["CiphertextBlob"]
    assert material_of(kms, fresh) == current_material(kms, key_id)
    assert kms.decrypt(CiphertextBlob=blob, KeyId="alias/rotating")["Plaintext"] == b"x"


# -- RotateKeyOnDemand ------------------------------------------------------------------------
def test_on_demand_rotation_does_not_move_the_schedule(kms: Any) -> None:
    md = new_key(kms)
    key_id = md["KeyId"]
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    scheduled = kms.get_key_rotation_status(KeyId=key_id)["NextRotationDate"]

    response = kms.rotate_key_on_demand(KeyId=key_id)

    assert response["KeyId"] == md["Arn"]
    entries = rotations(kms, key_id)
    assert len(entries) == 1 and entries[0]["RotationType"] == "ON_DEMAND"
    assert entries[0]["KeyMaterialId"] == current_material(kms, key_id) \
        != md["CurrentKeyMaterialId"]
    status = kms.get_key_rotation_status(KeyId=key_id)
    assert status["NextRotationDate"] == scheduled
    assert status["RotationPeriodInDays"] == 90


def test_on_demand_rotation_works_without_automatic_rotation(kms: Any) -> None:
    key_id = new_key(kms)["KeyId"]

    kms.rotate_key_on_demand(KeyId=key_id)

    assert [e["RotationType"] for e in rotations(kms, key_id)] == ["ON_DEMAND"]
    assert kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False


def test_on_demand_rotations_are_capped_at_25_per_key(kms: Any, server: Any) -> None:
    md = new_key(kms)
    key_id = md["KeyId"]
    for _ in range(25):
        kms.rotate_key_on_demand(KeyId=key_id)

    refused(kms.rotate_key_on_demand, "LimitExceededException",
            "The on-demand rotations limit has been reached for the given keyId. No more "
            f"on-demand rotations can be performed for this key: {md['Arn']}", KeyId=key_id)

    assert len(rotations(kms, key_id)) == 25
    # The cap is on on-demand rotations only: automatic rotation goes on.
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    advance(server, 91 * DAY)
    entries = rotations(kms, key_id)
    assert len(entries) == 26 and entries[-1]["RotationType"] == "AUTOMATIC"
    refused(kms.rotate_key_on_demand, "LimitExceededException", KeyId=key_id)


def test_on_demand_conflicts_with_an_automatic_rotation_due_within_20_minutes(
        kms: Any, server: Any) -> None:
    key_id = new_key(kms)["KeyId"]
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    advance(server, 90 * DAY - 30 * 60)  # due in 30 minutes: still allowed
    kms.rotate_key_on_demand(KeyId=key_id)

    advance(server, 15 * 60)  # due in 15 minutes
    message = refused(kms.rotate_key_on_demand, "ConflictException", KeyId=key_id)
    assert key_id in message

    advance(server, 16 * 60)  # the automatic rotation has happened
    assert [e["RotationType"] for e in rotations(kms, key_id)] == ["ON_DEMAND", "AUTOMATIC"]
    kms.rotate_key_on_demand(KeyId=key_id)
    assert len(rotations(kms, key_id)) == 3


# -- ListKeyRotations -------------------------------------------------------------------------
def test_list_key_rotations_pages_with_limit_and_marker(kms: Any) -> None:
    md = new_key(kms)
    key_id = md["KeyId"]
    for _ in range(5):
        kms.rotate_key_on_demand(KeyId=key_id)
    everything = rotations(kms, key_id)
    assert len(everything) == 5

    pages: list[list[dict[str, Any]]] = []
    marker: str | None = None
    while True:
        params: dict[str, Any] = {"KeyId": key_id, "Limit": 2}
        if marker is not None:
            params["Marker"] = marker
        page = kms.list_key_rotations(**params)
        pages.append(page["Rotations"])
        if not page["Truncated"]:
            assert "NextMarker" not in page
            break
        marker = page["NextMarker"]

    assert [len(p) for p in pages] == [2, 2, 1]
    assert [e for p in pages for e in p] == everything


def test_all_key_material_adds_the_first_material(kms: Any) -> None:
    md = new_key(kms)
    key_id = md["KeyId"]
    kms.rotate_key_on_demand(KeyId=key_id)
    kms.rotate_key_on_demand(KeyId=key_id)

    default = rotations(kms, key_id)
    only = rotations(kms, key_id, IncludeKeyMaterial="ROTATIONS_ONLY")
    everything = rotations(kms, key_id, IncludeKeyMaterial="ALL_KEY_MATERIAL")

    assert only == default and len(default) == 2
    assert len(everything) == 3
    first = everything[0]
    assert first["KeyMaterialId"] == md["CurrentKeyMaterialId"]
    assert first["KeyMaterialState"] == "NON_CURRENT"
    assert "RotationDate" not in first and "RotationType" not in first
    assert everything[1:] == default
    assert all(MATERIAL_ID.fullmatch(e["KeyMaterialId"]) for e in everything)


def test_a_key_never_rotated_lists_nothing_or_only_its_material(kms: Any) -> None:
    md = new_key(kms)

    assert rotations(kms, md["KeyId"]) == []
    everything = rotations(kms, md["KeyId"], IncludeKeyMaterial="ALL_KEY_MATERIAL")
    assert [(e["KeyMaterialId"], e["KeyMaterialState"]) for e in everything] == [
        (md["CurrentKeyMaterialId"], "CURRENT")]


def test_list_key_rotations_rejects_a_foreign_marker(kms: Any) -> None:
    key_id = new_key(kms)["KeyId"]
    kms.rotate_key_on_demand(KeyId=key_id)

    refused(kms.list_key_rotations, "InvalidMarkerException", KeyId=key_id, Marker="bogus")


# -- which keys rotate ------------------------------------------------------------------------
ROTATION_CALLS = {
    "EnableKeyRotation": lambda kms, k: kms.enable_key_rotation(KeyId=k),
    "DisableKeyRotation": lambda kms, k: kms.disable_key_rotation(KeyId=k),
    "GetKeyRotationStatus": lambda kms, k: kms.get_key_rotation_status(KeyId=k),
    "RotateKeyOnDemand": lambda kms, k: kms.rotate_key_on_demand(KeyId=k),
    "ListKeyRotations": lambda kms, k: kms.list_key_rotations(KeyId=k),
}


@pytest.mark.parametrize(("spec", "usage"), [
    ("RSA_2048", "ENCRYPT_DECRYPT"),
    ("ECC_NIST_P256", "SIGN_VERIFY"),
    ("HMAC_256", "GENERATE_VERIFY_MAC"),
])
def test_asymmetric_and_hmac_keys_do_not_rotate(kms: Any, spec: str, usage: str) -> None:
    md = new_key(kms, KeySpec=spec, KeyUsage=usage)

    for name, call in ROTATION_CALLS.items():
        with pytest.raises(ClientError) as info:
            call(kms, md["KeyId"])
        error = info.value.response["Error"]
        assert error["Code"] == "UnsupportedOperationException", (name, error)
        if name == "RotateKeyOnDemand":
            assert error["Message"] == "", error  # AWS sends no message for this one
        else:
            assert md["Arn"] in error["Message"], name


def test_imported_material_keys_do_not_rotate_automatically(kms: Any) -> None:
    """Appendix B [6]: ``<arn> origin is EXTERNAL which is not valid for this operation.``
    (on-demand rotation of imported material: tests/api/test_import.py)."""
    md = new_key(kms, Origin="EXTERNAL")
    message = f"{md['Arn']} origin is EXTERNAL which is not valid for this operation."

    for name in ("EnableKeyRotation", "DisableKeyRotation", "GetKeyRotationStatus"):
        with pytest.raises(ClientError) as info:
            ROTATION_CALLS[name](kms, md["KeyId"])
        error = info.value.response["Error"]
        assert (error["Code"], error["Message"]) == ("UnsupportedOperationException", message), \
            name


# -- rotation and key state -------------------------------------------------------------------
def test_a_disabled_key_is_not_rotated_until_it_is_enabled_again(kms: Any, server: Any) -> None:
    md = new_key(kms)
    key_id = md["KeyId"]
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    kms.disable_key(KeyId=key_id)

    advance(server, 100 * DAY)  # well past the due date
    assert rotations(kms, key_id) == []
    assert kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is True

    kms.enable_key(KeyId=key_id)
    now = advance(server, 1)  # the scheduler's next pass

    entries = rotations(kms, key_id)
    assert [e["RotationType"] for e in entries] == ["AUTOMATIC"]
    assert current_material(kms, key_id) != md["CurrentKeyMaterialId"]
    status = kms.get_key_rotation_status(KeyId=key_id)
    assert status["NextRotationDate"].timestamp() == pytest.approx(now + 90 * DAY, abs=60)
    advance(server, DAY)
    assert len(rotations(kms, key_id)) == 1  # caught up once, not once per missed period


@pytest.mark.parametrize("name", ["EnableKeyRotation", "DisableKeyRotation",
                                  "RotateKeyOnDemand"])
def test_rotation_changes_on_a_disabled_key_are_refused(kms: Any, name: str) -> None:
    md = new_key(kms)
    kms.disable_key(KeyId=md["KeyId"])

    with pytest.raises(ClientError) as info:
        ROTATION_CALLS[name](kms, md["KeyId"])

    error = info.value.response["Error"]
    assert (error["Code"], error["Message"]) == ("DisabledException", f"{md['Arn']} is disabled.")


def test_rotation_reads_work_on_a_disabled_key(kms: Any) -> None:
    md = new_key(kms)
    kms.enable_key_rotation(KeyId=md["KeyId"], RotationPeriodInDays=120)
    kms.rotate_key_on_demand(KeyId=md["KeyId"])
    kms.disable_key(KeyId=md["KeyId"])

    status = kms.get_key_rotation_status(KeyId=md["KeyId"])
    assert status["KeyRotationEnabled"] is True and status["RotationPeriodInDays"] == 120
    assert len(rotations(kms, md["KeyId"])) == 1


def test_rotation_ops_on_an_unknown_key_are_not_found(kms: Any) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    for name, call in ROTATION_CALLS.items():
        with pytest.raises(ClientError) as info:
            call(kms, missing)
        error = info.value.response["Error"]
        assert error["Code"] == "NotFoundException", (name, error)
        assert error["Message"] == (
            f"Key 'arn:aws:kms:us-east-1:{ACCOUNT}:key/{missing}' does not exist")


# -- RotateKeyOnDemand checks the key state first (AWS's recorded answers) ---------------------
@pytest.mark.parametrize(("spec", "usage"), [
    ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),
    ("RSA_2048", "ENCRYPT_DECRYPT"),
    ("HMAC_256", "GENERATE_VERIFY_MAC"),
])
def test_on_demand_rotation_of_a_disabled_key_is_disabled_whatever_its_spec(
        kms: Any, spec: str, usage: str) -> None:
    md = new_key(kms, KeySpec=spec, KeyUsage=usage)
    kms.disable_key(KeyId=md["KeyId"])

    refused(kms.rotate_key_on_demand, "DisabledException", f"{md['Arn']} is disabled.",
            KeyId=md["KeyId"])


@pytest.mark.parametrize(("spec", "usage"), [
    ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),
    ("RSA_4096", "ENCRYPT_DECRYPT"),
])
def test_on_demand_rotation_of_a_key_pending_import_is_an_invalid_state(
        kms: Any, spec: str, usage: str) -> None:
    md = new_key(kms, Origin="EXTERNAL", KeySpec=spec, KeyUsage=usage)

    refused(kms.rotate_key_on_demand, "KMSInvalidStateException",
            f"{md['Arn']} is pending import.", KeyId=md["KeyId"])
    assert kms.describe_key(KeyId=md["KeyId"])["KeyMetadata"]["KeyState"] == "PendingImport"


def test_on_demand_rotation_of_an_enabled_asymmetric_key_has_an_empty_message(
        kms: Any) -> None:
    """AWS's error body has no message: boto3 shows an empty one."""
    md = new_key(kms, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")

    refused(kms.rotate_key_on_demand, "UnsupportedOperationException", "", KeyId=md["KeyId"])
