"""Scheduled key deletion through a real node and boto3: ScheduleKeyDeletion,
CancelKeyDeletion, what a PendingDeletion key refuses and allows (reference Appendix B),
the deletion itself when the dev clock passes the window, crypto-shredding of the
key's vault row, and a deletion that fell due while the node was down."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import client_for
from tests.support.expect import advance
from tests.support.expect import refused_message as refused
from tests.support.server import ServerProcess

ACCOUNT = "111122223333"
DAY = 86_400


def new_key(kms: Any, **params: Any) -> dict[str, Any]:
    md: dict[str, Any] = kms.create_key(**params)["KeyMetadata"]
    return md


def state_of(kms: Any, key_id: str) -> str:
    return str(kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"])


def not_found(key_id: str) -> str:
    return f"Key 'arn:aws:kms:us-east-1:{ACCOUNT}:key/{key_id}' does not exist"


def vault_rows(data_dir: Path) -> set[str]:
    """The key ids with a wrapped key-encryption key in the node's SQLite vault."""
    uri = f"file:{data_dir / 'events.sqlite3'}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as db:
        return {row[0] for row in db.execute("SELECT key_id FROM vault")}


# -- ScheduleKeyDeletion ----------------------------------------------------------------------
def test_schedule_key_deletion_defaults_to_30_days(kms: Any, server: Any) -> None:
    md = new_key(kms)

    response = kms.schedule_key_deletion(KeyId=md["KeyId"])
    now = advance(server, 0)

    assert response["KeyId"] == md["Arn"]
    assert response["KeyState"] == "PendingDeletion"
    assert response["PendingWindowInDays"] == 30
    assert response["DeletionDate"].timestamp() == pytest.approx(now + 30 * DAY, abs=60)
    described = kms.describe_key(KeyId=md["KeyId"])["KeyMetadata"]
    assert described["KeyState"] == "PendingDeletion"
    assert described["Enabled"] is False


def test_describe_key_shows_the_deletion_date_while_pending(kms: Any) -> None:
    md = new_key(kms)
    response = kms.schedule_key_deletion(KeyId=md["KeyId"], PendingWindowInDays=9)

    described = kms.describe_key(KeyId=md["KeyId"])["KeyMetadata"]

    assert described["DeletionDate"] == response["DeletionDate"]
    # PendingDeletionWindowInDays belongs to PendingReplicaDeletion only (reference 4.3).
    assert "PendingDeletionWindowInDays" not in described


@pytest.mark.parametrize("days", [7, 19, 30])
def test_the_window_may_be_7_to_30_days(kms: Any, server: Any, days: int) -> None:
    md = new_key(kms)

    response = kms.schedule_key_deletion(KeyId=md["Arn"], PendingWindowInDays=days)

    assert response["PendingWindowInDays"] == days
    assert response["DeletionDate"].timestamp() == pytest.approx(
        advance(server, 0) + days * DAY, abs=60)


@pytest.mark.parametrize(("days", "rule"), [
    (6, "greater than or equal to 7"),
    (1, "greater than or equal to 7"),
    (31, "less than or equal to 30"),
    (365, "less than or equal to 30"),
])
def test_a_window_outside_7_to_30_days_is_a_validation_error(kms: Any, days: int,
                                                             rule: str) -> None:
    md = new_key(kms)

    refused(kms.schedule_key_deletion, "ValidationException",
            f"1 validation error detected: Value '{days}' at 'pendingWindowInDays' failed to "
            f"satisfy constraint: Member must have value {rule}",
            KeyId=md["KeyId"], PendingWindowInDays=days)

    assert state_of(kms, md["KeyId"]) == "Enabled"


@pytest.mark.parametrize(("days", "rule"), [
    (0, "greater than or equal to 1"),
    (366, "less than or equal to 365"),
])
def test_a_window_outside_the_model_range_is_refused_by_the_model(raw_kms: Any, days: int,
                                                                  rule: str) -> None:
    md = raw_kms.create_key()["KeyMetadata"]

    refused(raw_kms.schedule_key_deletion, "ValidationException",
            f"1 validation error detected: Value '{days}' at 'pendingWindowInDays' failed to "
            f"satisfy constraint: Member must have value {rule}",
            KeyId=md["KeyId"], PendingWindowInDays=days)


def test_disabled_and_pending_import_keys_can_be_scheduled(kms: Any) -> None:
    disabled = new_key(kms)["KeyId"]
    kms.disable_key(KeyId=disabled)
    pending_import = new_key(kms, Origin="EXTERNAL")["KeyId"]

    for key_id in (disabled, pending_import):
        assert kms.schedule_key_deletion(KeyId=key_id,
                                         PendingWindowInDays=7)["KeyState"] == "PendingDeletion"
        assert state_of(kms, key_id) == "PendingDeletion"


# -- CancelKeyDeletion ------------------------------------------------------------------------
def test_cancel_key_deletion_leaves_the_key_disabled(kms: Any, server: Any) -> None:
    md = new_key(kms)
    blob = kms.encrypt(KeyId=md["KeyId"], Plaintext=b"kept")["CiphertextBlob"]
    kms.schedule_key_deletion(KeyId=md["KeyId"], PendingWindowInDays=7)

    assert kms.cancel_key_deletion(KeyId=md["KeyId"])["KeyId"] == md["Arn"]

    described = kms.describe_key(KeyId=md["KeyId"])["KeyMetadata"]
    assert described["KeyState"] == "Disabled" and described["Enabled"] is False
    assert "DeletionDate" not in described
    refused(kms.encrypt, "DisabledException", f"{md['Arn']} is disabled.",
            KeyId=md["KeyId"], Plaintext=b"x")
    kms.enable_key(KeyId=md["KeyId"])
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"kept"
    # The original deletion date passes without effect.
    advance(server, 8 * DAY)
    assert state_of(kms, md["KeyId"]) == "Enabled"


@pytest.mark.parametrize("setup", ["enabled", "disabled", "pending_import"])
def test_cancel_needs_a_key_pending_deletion(kms: Any, setup: str) -> None:
    md = new_key(kms, Origin="EXTERNAL") if setup == "pending_import" else new_key(kms)
    if setup == "disabled":
        kms.disable_key(KeyId=md["KeyId"])

    refused(kms.cancel_key_deletion, "KMSInvalidStateException",
            f"{md['Arn']} is not pending deletion (or pending replica deletion).",
            KeyId=md["KeyId"])


def test_cancelling_a_key_without_material_returns_it_to_pending_import(kms: Any) -> None:
    """Regression: it used to come back Disabled; EnableKey then made an Enabled key with
    no material, and Encrypt answered KMSInternalException."""
    md = new_key(kms, Origin="EXTERNAL")
    kms.schedule_key_deletion(KeyId=md["KeyId"], PendingWindowInDays=7)

    kms.cancel_key_deletion(KeyId=md["KeyId"])

    assert state_of(kms, md["KeyId"]) == "PendingImport"
    refused(kms.enable_key, "KMSInvalidStateException", f"{md['Arn']} is pending import.",
            KeyId=md["KeyId"])
    refused(kms.encrypt, "KMSInvalidStateException", f"{md['Arn']} is pending import.",
            KeyId=md["KeyId"], Plaintext=b"x")


# -- what a PendingDeletion key refuses -------------------------------------------------------
class Pending:
    """A symmetric key with an alias, a tag and a ciphertext, an ECC signing key and an
    HMAC key, all scheduled for deletion, plus an enabled symmetric key beside them."""

    def __init__(self, kms: Any) -> None:
        self.kms = kms
        sym = new_key(kms, Tags=[{"TagKey": "team", "TagValue": "a"}])
        self.key_id, self.arn = sym["KeyId"], sym["Arn"]
        kms.create_alias(AliasName="alias/doomed", TargetKeyId=self.key_id)
        self.blob = kms.encrypt(KeyId=self.key_id, Plaintext=b"secret")["CiphertextBlob"]
        sign = new_key(kms, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
        self.sign_id, self.sign_arn = sign["KeyId"], sign["Arn"]
        self.signature = kms.sign(KeyId=self.sign_id, Message=b"m",
                                  SigningAlgorithm="ECDSA_SHA_256")["Signature"]
        mac = new_key(kms, KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
        self.mac_id, self.mac_arn = mac["KeyId"], mac["Arn"]
        self.mac = kms.generate_mac(KeyId=self.mac_id, Message=b"m",
                                    MacAlgorithm="HMAC_SHA_256")["Mac"]
        other = new_key(kms)
        self.other_id = other["KeyId"]
        kms.create_alias(AliasName="alias/other", TargetKeyId=self.other_id)
        for key_id in (self.key_id, self.sign_id, self.mac_id):
            kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)


# name -> (which key the call names, the call)
REFUSED: dict[str, tuple[str, Callable[[Any, Pending], Any]]] = {
    "Encrypt": ("sym", lambda kms, p: kms.encrypt(KeyId=p.key_id, Plaintext=b"x")),
    "Encrypt(alias)": ("sym", lambda kms, p: kms.encrypt(KeyId="alias/doomed", Plaintext=b"x")),
    "Decrypt": ("sym", lambda kms, p: kms.decrypt(CiphertextBlob=p.blob)),
    "GenerateDataKey": ("sym", lambda kms, p: kms.generate_data_key(KeyId=p.key_id,
                                                                     KeySpec="AES_256")),
    "GenerateDataKeyWithoutPlaintext": ("sym", lambda kms, p:
                                        kms.generate_data_key_without_plaintext(
                                            KeyId=p.key_id, NumberOfBytes=16)),
    "GenerateDataKeyPair": ("sym", lambda kms, p: kms.generate_data_key_pair(
        KeyId=p.key_id, KeyPairSpec="ECC_NIST_P256")),
    "ReEncrypt(source)": ("sym", lambda kms, p: kms.re_encrypt(CiphertextBlob=p.blob,
                                                                DestinationKeyId=p.other_id)),
    "ReEncrypt(destination)": ("sym", lambda kms, p: kms.re_encrypt(
        CiphertextBlob=kms.encrypt(KeyId=p.other_id, Plaintext=b"x")["CiphertextBlob"],
        DestinationKeyId=p.key_id)),
    "Sign": ("sign", lambda kms, p: kms.sign(KeyId=p.sign_id, Message=b"m",
                                             SigningAlgorithm="ECDSA_SHA_256")),
    "Verify": ("sign", lambda kms, p: kms.verify(KeyId=p.sign_id, Message=b"m",
                                                 Signature=p.signature,
                                                 SigningAlgorithm="ECDSA_SHA_256")),
    "GetPublicKey": ("sign", lambda kms, p: kms.get_public_key(KeyId=p.sign_id)),
    "GenerateMac": ("mac", lambda kms, p: kms.generate_mac(KeyId=p.mac_id, Message=b"m",
                                                           MacAlgorithm="HMAC_SHA_256")),
    "VerifyMac": ("mac", lambda kms, p: kms.verify_mac(KeyId=p.mac_id, Message=b"m", Mac=p.mac,
                                                       MacAlgorithm="HMAC_SHA_256")),
    "CreateAlias": ("sym", lambda kms, p: kms.create_alias(AliasName="alias/new",
                                                           TargetKeyId=p.key_id)),
    "UpdateAlias(target)": ("sym", lambda kms, p: kms.update_alias(AliasName="alias/other",
                                                                   TargetKeyId=p.key_id)),
    "TagResource": ("sym", lambda kms, p: kms.tag_resource(
        KeyId=p.key_id, Tags=[{"TagKey": "k", "TagValue": "v"}])),
    "UntagResource": ("sym", lambda kms, p: kms.untag_resource(KeyId=p.key_id,
                                                               TagKeys=["team"])),
    "UpdateKeyDescription": ("sym", lambda kms, p: kms.update_key_description(
        KeyId=p.key_id, Description="d")),
    "EnableKey": ("sym", lambda kms, p: kms.enable_key(KeyId=p.key_id)),
    "DisableKey": ("sym", lambda kms, p: kms.disable_key(KeyId=p.key_id)),
    "ScheduleKeyDeletion": ("sym", lambda kms, p: kms.schedule_key_deletion(KeyId=p.key_id)),
    "EnableKeyRotation": ("sym", lambda kms, p: kms.enable_key_rotation(KeyId=p.key_id)),
    "DisableKeyRotation": ("sym", lambda kms, p: kms.disable_key_rotation(KeyId=p.key_id)),
    "RotateKeyOnDemand": ("sym", lambda kms, p: kms.rotate_key_on_demand(KeyId=p.key_id)),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_key_pending_deletion_refuses(kms: Any, name: str) -> None:
    pending = Pending(kms)
    which, call = REFUSED[name]
    arn = {"sym": pending.arn, "sign": pending.sign_arn, "mac": pending.mac_arn}[which]

    with pytest.raises(ClientError) as info:
        call(kms, pending)

    error = info.value.response["Error"]
    assert (error["Code"], error["Message"]) == ("KMSInvalidStateException",
                                                 f"{arn} is pending deletion.")
    assert state_of(kms, pending.key_id) == "PendingDeletion"


def test_a_key_pending_deletion_allows_reads_and_alias_removal(kms: Any) -> None:
    p = Pending(kms)

    md = kms.describe_key(KeyId="alias/doomed")["KeyMetadata"]
    assert md["KeyId"] == p.key_id and md["KeyState"] == "PendingDeletion"
    assert kms.list_resource_tags(KeyId=p.key_id)["Tags"] == [{"TagKey": "team",
                                                               "TagValue": "a"}]
    assert [a["AliasName"] for a in kms.list_aliases(KeyId=p.key_id)["Aliases"]] == [
        "alias/doomed"]
    assert kms.list_key_rotations(KeyId=p.key_id)["Rotations"] == []
    kms.delete_alias(AliasName="alias/doomed")
    assert kms.list_aliases(KeyId=p.key_id)["Aliases"] == []


def test_an_alias_may_move_away_from_a_key_pending_deletion(kms: Any) -> None:
    """Appendix B [10]: UpdateAlias succeeds when the *source* key is pending deletion."""
    p = Pending(kms)

    kms.update_alias(AliasName="alias/doomed", TargetKeyId=p.other_id)

    assert kms.describe_key(KeyId="alias/doomed")["KeyMetadata"]["KeyId"] == p.other_id


def test_rotation_status_reads_false_while_pending_and_returns_after_cancel(
        kms: Any) -> None:
    md = new_key(kms)
    kms.enable_key_rotation(KeyId=md["KeyId"], RotationPeriodInDays=180)
    before = kms.get_key_rotation_status(KeyId=md["KeyId"])
    kms.schedule_key_deletion(KeyId=md["KeyId"], PendingWindowInDays=7)

    pending = kms.get_key_rotation_status(KeyId=md["KeyId"])
    assert pending["KeyRotationEnabled"] is False and pending["KeyId"] == md["Arn"]

    kms.cancel_key_deletion(KeyId=md["KeyId"])
    after = kms.get_key_rotation_status(KeyId=md["KeyId"])
    assert after["KeyRotationEnabled"] is True
    assert after["RotationPeriodInDays"] == 180
    assert after["NextRotationDate"] == before["NextRotationDate"]


def test_a_key_pending_deletion_is_not_rotated(kms: Any, server: Any) -> None:
    md = new_key(kms)
    kms.enable_key_rotation(KeyId=md["KeyId"], RotationPeriodInDays=90)
    advance(server, 90 * DAY - 3600)
    kms.schedule_key_deletion(KeyId=md["KeyId"], PendingWindowInDays=7)

    advance(server, 2 * DAY)  # the rotation falls due while the key is pending deletion

    assert kms.list_key_rotations(KeyId=md["KeyId"])["Rotations"] == []


# -- the deletion -----------------------------------------------------------------------------
def test_the_key_and_its_aliases_are_deleted_when_the_window_ends(kms: Any,
                                                                  server: Any) -> None:
    md = new_key(kms)
    key_id = md["KeyId"]
    kms.create_alias(AliasName="alias/gone-1", TargetKeyId=key_id)
    kms.create_alias(AliasName="alias/gone-2", TargetKeyId=key_id)
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"lost")["CiphertextBlob"]
    survivor = new_key(kms)["KeyId"]
    kms.create_alias(AliasName="alias/stays", TargetKeyId=survivor)
    kept = kms.encrypt(KeyId=survivor, Plaintext=b"kept")["CiphertextBlob"]
    kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)

    advance(server, 7 * DAY - 60)
    assert state_of(kms, key_id) == "PendingDeletion"

    advance(server, 120)

    refused(kms.describe_key, "NotFoundException", not_found(key_id), KeyId=key_id)
    names = {a["AliasName"] for a in kms.list_aliases()["Aliases"]}
    assert "alias/stays" in names
    assert not names & {"alias/gone-1", "alias/gone-2"}
    refused(kms.describe_key, "NotFoundException", KeyId="alias/gone-1")
    listed = {k["KeyId"] for k in kms.list_keys()["Keys"]}
    assert survivor in listed and key_id not in listed
    # Its ciphertexts are lost: without a KeyId the blob names no key that exists.
    refused(kms.decrypt, "InvalidCiphertextException", CiphertextBlob=blob)
    refused(kms.decrypt, "NotFoundException", not_found(key_id), CiphertextBlob=blob,
            KeyId=key_id)
    refused(kms.cancel_key_deletion, "NotFoundException", not_found(key_id), KeyId=key_id)
    assert kms.decrypt(CiphertextBlob=kept)["Plaintext"] == b"kept"


def test_a_cancel_that_lands_while_the_scheduler_is_busy_keeps_the_key(kms: Any,
                                                                     server: Any) -> None:
    """Regression: the scheduler decided from a snapshot taken before its earlier actions
    awaited, so a CancelKeyDeletion committed meanwhile was answered 200 and the key was
    deleted (and shredded) anyway. Whatever the interleaving, a successful cancel keeps it."""
    for _ in range(60):  # rotations due in the same pass, ahead of the doomed key
        kms.enable_key_rotation(KeyId=new_key(kms)["KeyId"], RotationPeriodInDays=90)
    doomed = new_key(kms)["KeyId"]
    kms.schedule_key_deletion(KeyId=doomed, PendingWindowInDays=7)

    mover = threading.Thread(target=advance, args=(server, 91 * DAY))
    mover.start()
    try:
        kms.cancel_key_deletion(KeyId=doomed)
        cancelled = True
    except ClientError as exc:  # the deletion won the race: then the key must be gone
        assert exc.response["Error"]["Code"] in ("NotFoundException", "KMSInternalException")
        cancelled = False
    finally:
        mover.join()

    if cancelled:
        assert state_of(kms, doomed) == "Disabled"
        assert doomed in vault_rows(server.data_dir)
    else:
        refused(kms.describe_key, "NotFoundException", KeyId=doomed)


def test_deletion_shreds_the_keys_vault_entry(kms: Any, server: Any) -> None:
    doomed = new_key(kms)["KeyId"]
    survivor = new_key(kms)["KeyId"]
    assert {doomed, survivor} <= vault_rows(server.data_dir)
    kms.schedule_key_deletion(KeyId=doomed, PendingWindowInDays=7)
    assert doomed in vault_rows(server.data_dir)  # pending deletion is still recoverable

    advance(server, 7 * DAY + 1)

    rows = vault_rows(server.data_dir)
    assert doomed not in rows
    assert survivor in rows


def test_a_deletion_due_while_the_node_was_down_happens_at_start(tmp_path: Path) -> None:
    """The dev clock's offset lives in ``dev-clock.json`` (kms/clock.py), and edits to it
    while the node is down move time as it starts."""
    node = ServerProcess(tmp_path / "d").start()
    try:
        kms = client_for(node.url)
        doomed = new_key(kms)["KeyId"]
        survivor = new_key(kms)["KeyId"]
        kms.schedule_key_deletion(KeyId=doomed, PendingWindowInDays=7)
        node.stop()

        (tmp_path / "d" / "dev-clock.json").write_text(json.dumps({"offset_seconds": 8 * DAY}))
        node.start()

        kms = client_for(node.url)
        refused(kms.describe_key, "NotFoundException", not_found(doomed), KeyId=doomed)
        assert state_of(kms, survivor) == "Enabled"
        assert doomed not in vault_rows(tmp_path / "d")
    finally:
        node.stop()
