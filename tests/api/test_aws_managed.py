"""AWS managed keys through a real node and boto3: ``alias/aws/<service>`` names a key
that exists from its first use, rotates yearly, and refuses customer management. Its
policy (AWS's) allows cryptographic use only through its service: these tests act as S3
with the --dev header X-Kms-Via-Service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

ACCOUNT = "111122223333"
ROOT = f"arn:aws:iam::{ACCOUNT}:root"
DAY = 86_400

def via(client: Any, service: str = "s3.us-east-1.amazonaws.com") -> Any:
    """The client, calling as an AWS service on the caller's behalf (kms:ViaService)."""
    def add(request: Any, **_: Any) -> None:
        request.headers["X-Kms-Via-Service"] = service
    client.meta.events.register("before-sign.kms.*", add)
    return client


FIRST_USE: dict[str, Callable[[Any, str], Any]] = {
    "DescribeKey": lambda kms, ref: kms.describe_key(KeyId=ref),
    "Encrypt": lambda kms, ref: via(kms).encrypt(KeyId=ref, Plaintext=b"first use"),
    "GenerateDataKey": lambda kms, ref: via(kms).generate_data_key(KeyId=ref,
                                                                   KeySpec="AES_256"),
}


def managed(kms: Any, alias: str = "alias/aws/s3") -> dict[str, Any]:
    md: dict[str, Any] = kms.describe_key(KeyId=alias)["KeyMetadata"]
    return md


def aliases(kms: Any) -> dict[str, str]:
    """Aliases that point at a key (predefined alias/aws/* names are listed without one)."""
    return {a["AliasName"]: a["TargetKeyId"] for a in kms.list_aliases()["Aliases"]
            if "TargetKeyId" in a}


def denied(call: Callable[[], Any], action: str, arn: str | None = None) -> None:
    with pytest.raises(ClientError) as info:
        call()
    error = info.value.response["Error"]
    assert error["Code"] == "AccessDeniedException", error
    if arn is not None:
        assert error["Message"].startswith(
            f"User: {ROOT} is not authorized to perform: kms:{action} on resource: {arn}"), \
            error["Message"]
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


# -- created on first use ---------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FIRST_USE))
def test_first_use_creates_the_aws_managed_key(kms: Any, name: str) -> None:
    assert "alias/aws/s3" not in aliases(kms)

    FIRST_USE[name](kms, "alias/aws/s3")

    md = managed(kms)
    assert md["KeyManager"] == "AWS"
    assert md["KeyState"] == "Enabled" and md["Enabled"] is True
    assert md["Origin"] == "AWS_KMS" and md["KeySpec"] == "SYMMETRIC_DEFAULT"
    assert md["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert md["Description"] == ("Default key that protects my S3 resources when no other "
                                 "key is defined")
    assert aliases(kms)["alias/aws/s3"] == md["KeyId"]
    assert md["KeyId"] in {k["KeyId"] for k in kms.list_keys()["Keys"]}
    # Later uses find the same key; nothing new is created.
    FIRST_USE[name](kms, "alias/aws/s3")
    assert managed(kms)["KeyId"] == md["KeyId"]
    assert len(kms.list_keys()["Keys"]) == 1


def test_each_service_gets_its_own_key(kms: Any) -> None:
    s3 = managed(kms, "alias/aws/s3")
    ebs = managed(kms, f"arn:aws:kms:us-east-1:{ACCOUNT}:alias/aws/ebs")

    assert s3["KeyId"] != ebs["KeyId"]
    assert ebs["Description"].startswith("Default key that protects my EBS resources")
    assert {"alias/aws/s3", "alias/aws/ebs"} <= set(aliases(kms))


def test_an_aws_managed_key_encrypts_and_decrypts(kms: Any) -> None:
    kms = via(kms)
    out = kms.encrypt(KeyId="alias/aws/s3", Plaintext=b"object")
    md = managed(kms)

    assert out["KeyId"] == md["Arn"]
    opened = kms.decrypt(CiphertextBlob=out["CiphertextBlob"])
    assert opened["Plaintext"] == b"object" and opened["KeyId"] == md["Arn"]
    data_key = kms.generate_data_key(KeyId="alias/aws/s3", KeySpec="AES_256")
    assert kms.decrypt(CiphertextBlob=data_key["CiphertextBlob"],
                       KeyId="alias/aws/s3")["Plaintext"] == data_key["Plaintext"]


def test_a_customer_alias_outside_aws_is_not_created_on_use(kms: Any) -> None:
    with pytest.raises(ClientError) as info:
        kms.describe_key(KeyId="alias/s3")
    assert info.value.response["Error"]["Code"] == "NotFoundException"
    assert aliases(kms) == {}


# -- rotation ---------------------------------------------------------------------------------
def test_an_aws_managed_key_rotates_every_year(kms: Any, server: Any) -> None:
    md = managed(kms)
    now = float(server.post("/_kms/clock", {"advance_seconds": 0})["now"])

    status = kms.get_key_rotation_status(KeyId=md["KeyId"])
    assert status["KeyRotationEnabled"] is True
    assert status["RotationPeriodInDays"] == 365
    assert status["NextRotationDate"].timestamp() == pytest.approx(now + 365 * DAY, abs=60)

    server.post("/_kms/clock", {"advance_seconds": 365 * DAY + 1})

    [entry] = kms.list_key_rotations(KeyId=md["KeyId"])["Rotations"]
    assert entry["RotationType"] == "AUTOMATIC"
    assert managed(kms)["CurrentKeyMaterialId"] == entry["KeyMaterialId"] \
        != md["CurrentKeyMaterialId"]


# -- customers may not manage it --------------------------------------------------------------
REFUSED: dict[str, Callable[[Any, str], Any]] = {
    "ScheduleKeyDeletion": lambda kms, k: kms.schedule_key_deletion(KeyId=k),
    "CancelKeyDeletion": lambda kms, k: kms.cancel_key_deletion(KeyId=k),
    "DisableKey": lambda kms, k: kms.disable_key(KeyId=k),
    "EnableKey": lambda kms, k: kms.enable_key(KeyId=k),
    "EnableKeyRotation": lambda kms, k: kms.enable_key_rotation(KeyId=k),
    "DisableKeyRotation": lambda kms, k: kms.disable_key_rotation(KeyId=k),
    "RotateKeyOnDemand": lambda kms, k: kms.rotate_key_on_demand(KeyId=k),
    "TagResource": lambda kms, k: kms.tag_resource(KeyId=k,
                                                   Tags=[{"TagKey": "t", "TagValue": "v"}]),
    "UntagResource": lambda kms, k: kms.untag_resource(KeyId=k, TagKeys=["t"]),
    "UpdateKeyDescription": lambda kms, k: kms.update_key_description(KeyId=k,
                                                                      Description="mine"),
    "CreateAlias": lambda kms, k: kms.create_alias(AliasName="alias/my-s3", TargetKeyId=k),
}


@pytest.mark.parametrize("action", list(REFUSED))
def test_customers_cannot_manage_an_aws_managed_key(kms: Any, action: str) -> None:
    md = managed(kms)

    denied(lambda: REFUSED[action](kms, md["KeyId"]), action, md["Arn"])

    after = managed(kms)
    assert after["KeyState"] == "Enabled"
    assert after["Description"] == md["Description"]
    assert kms.list_resource_tags(KeyId=md["KeyId"])["Tags"] == []
    assert kms.get_key_rotation_status(KeyId=md["KeyId"])["KeyRotationEnabled"] is True
    assert kms.list_key_rotations(KeyId=md["KeyId"])["Rotations"] == []
    assert aliases(kms) == {"alias/aws/s3": md["KeyId"]}


def test_an_alias_under_alias_aws_cannot_be_created(kms: Any) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]

    denied(lambda: kms.create_alias(AliasName="alias/aws/mine", TargetKeyId=key_id),
           "CreateAlias")

    assert "alias/aws/mine" not in aliases(kms)


def test_the_aws_managed_alias_cannot_be_moved_or_deleted(kms: Any) -> None:
    md = managed(kms)
    mine = kms.create_key()["KeyMetadata"]["KeyId"]

    denied(lambda: kms.update_alias(AliasName="alias/aws/s3", TargetKeyId=mine), "UpdateAlias")
    denied(lambda: kms.delete_alias(AliasName="alias/aws/s3"), "DeleteAlias")

    assert aliases(kms)["alias/aws/s3"] == md["KeyId"]
    assert managed(kms)["KeyId"] == md["KeyId"]
