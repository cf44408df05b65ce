"""Key lifecycle through a real node and boto3: CreateKey, DescribeKey, ListKeys,
EnableKey, DisableKey, UpdateKeyDescription, with AWS's error codes and messages."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from tests.support.expect import refused

REGION = "us-east-1"
ACCOUNT = "111122223333"
KEY_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MRK_ID = re.compile(r"mrk-[0-9a-f]{32}")
MATERIAL_ID = re.compile(r"[0-9a-f]{64}")


def arn_of(key_id: str, region: str = REGION) -> str:
    return f"arn:aws:kms:{region}:{ACCOUNT}:key/{key_id}"


def new_key(kms: Any, **params: Any) -> dict[str, Any]:
    md: dict[str, Any] = kms.create_key(**params)["KeyMetadata"]
    return md


# -- CreateKey ------------------------------------------------------------------------------
SYMMETRIC_FIELDS = {
    "AWSAccountId", "KeyId", "Arn", "CreationDate", "Enabled", "Description", "KeyUsage",
    "KeyState", "Origin", "KeyManager", "CustomerMasterKeySpec", "KeySpec",
    "EncryptionAlgorithms", "MultiRegion", "CurrentKeyMaterialId",
}


def test_create_key_defaults_to_an_enabled_symmetric_customer_key(kms: Any) -> None:
    md = new_key(kms)

    assert set(md) == SYMMETRIC_FIELDS  # nothing that does not apply (DeletionDate, ...)
    assert KEY_ID.fullmatch(md["KeyId"])
    assert md["Arn"] == arn_of(md["KeyId"])
    assert md["AWSAccountId"] == ACCOUNT
    assert md["Enabled"] is True
    assert md["KeyState"] == "Enabled"
    assert md["Description"] == ""
    assert md["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert md["KeySpec"] == md["CustomerMasterKeySpec"] == "SYMMETRIC_DEFAULT"
    assert md["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"]
    assert md["Origin"] == "AWS_KMS"
    assert md["KeyManager"] == "CUSTOMER"
    assert md["MultiRegion"] is False
    assert MATERIAL_ID.fullmatch(md["CurrentKeyMaterialId"])
    assert md["CreationDate"].tzinfo is not None


def test_create_key_returns_what_describe_key_shows(kms: Any) -> None:
    created = new_key(kms, Description="payments")
    described = kms.describe_key(KeyId=created["KeyId"])["KeyMetadata"]
    assert described == created


def test_each_key_gets_its_own_id_and_material(kms: Any) -> None:
    a, b = new_key(kms), new_key(kms)
    assert a["KeyId"] != b["KeyId"]
    assert a["CurrentKeyMaterialId"] != b["CurrentKeyMaterialId"]
    assert b["CreationDate"] >= a["CreationDate"]


def test_create_key_keeps_description_and_tags(kms: Any) -> None:
    md = new_key(kms, Description="orders db", Tags=[
        {"TagKey": "team", "TagValue": "core"}, {"TagKey": "env", "TagValue": ""},
    ])
    assert md["Description"] == "orders db"
    tags = kms.list_resource_tags(KeyId=md["KeyId"])["Tags"]
    assert sorted((t["TagKey"], t["TagValue"]) for t in tags) == [("env", ""), ("team", "core")]


def test_create_key_accepts_explicit_symmetric_spec_and_usage(kms: Any) -> None:
    md = new_key(kms, KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")
    assert md["KeySpec"] == "SYMMETRIC_DEFAULT"
    md = new_key(kms, CustomerMasterKeySpec="SYMMETRIC_DEFAULT")
    assert md["KeySpec"] == md["CustomerMasterKeySpec"] == "SYMMETRIC_DEFAULT"


def test_create_multi_region_key_has_mrk_id_and_primary_configuration(kms: Any) -> None:
    md = new_key(kms, MultiRegion=True, Description="global")

    assert MRK_ID.fullmatch(md["KeyId"])
    assert md["Arn"] == arn_of(md["KeyId"])
    assert md["MultiRegion"] is True
    assert md["MultiRegionConfiguration"] == {
        "MultiRegionKeyType": "PRIMARY",
        "PrimaryKey": {"Arn": md["Arn"], "Region": REGION},
        "ReplicaKeys": [],
    }
    assert set(md) == SYMMETRIC_FIELDS | {"MultiRegionConfiguration"}
    assert kms.describe_key(KeyId=md["KeyId"])["KeyMetadata"] == md


def test_single_region_key_has_no_multi_region_configuration(kms: Any) -> None:
    md = new_key(kms, MultiRegion=False)
    assert KEY_ID.fullmatch(md["KeyId"])
    assert "MultiRegionConfiguration" not in md


@pytest.mark.parametrize("usage", ["ENCRYPT_DECRYPT", "SIGN_VERIFY"])
def test_sm2_key_spec_is_refused(kms: Any, usage: str) -> None:
    # SM2 is for the China Regions only; this service does not offer it.
    refused(kms.create_key, "UnsupportedOperationException",
            "KeySpec SM2 is offered only in the AWS China Regions; this service does not "
            "support it.", KeySpec="SM2", KeyUsage=usage)
    assert kms.list_keys()["Keys"] == []


def test_non_symmetric_spec_without_key_usage_is_a_validation_error(kms: Any) -> None:
    refused(kms.create_key, "ValidationException",
            "You must specify a KeyUsage value for all KMS keys except for symmetric "
            "encryption keys.", KeySpec="RSA_2048")


def test_external_origin_creates_a_key_pending_import(kms: Any) -> None:
    md = new_key(kms, Origin="EXTERNAL")
    assert md["Origin"] == "EXTERNAL"
    assert (md["KeyState"], md["Enabled"]) == ("PendingImport", False)
    assert "CurrentKeyMaterialId" not in md  # no material yet
    refused(kms.encrypt, "KMSInvalidStateException", f"{md['Arn']} is pending import.",
            KeyId=md["KeyId"], Plaintext=b"p")


def test_custom_key_store_origins_are_refused(kms: Any) -> None:
    refused(kms.create_key, "UnsupportedOperationException", Origin="AWS_CLOUDHSM")
    refused(kms.create_key, "UnsupportedOperationException", Origin="EXTERNAL_KEY_STORE")
    refused(kms.create_key, "UnsupportedOperationException", CustomKeyStoreId="cks-1234")
    assert kms.list_keys()["Keys"] == []


def test_sign_verify_usage_with_symmetric_spec_is_a_validation_error(kms: Any) -> None:
    err = refused(kms.create_key, "ValidationException", KeyUsage="SIGN_VERIFY")
    assert "SIGN_VERIFY" in err["Error"]["Message"]
    refused(kms.create_key, "ValidationException",
            KeySpec="SYMMETRIC_DEFAULT", KeyUsage="GENERATE_VERIFY_MAC")
    assert kms.list_keys()["Keys"] == []


def test_key_spec_and_customer_master_key_spec_together_are_refused(kms: Any) -> None:
    err = refused(kms.create_key, "ValidationException",
                  KeySpec="SYMMETRIC_DEFAULT", CustomerMasterKeySpec="SYMMETRIC_DEFAULT")
    assert "KeySpec" in err["Error"]["Message"]
    assert "CustomerMasterKeySpec" in err["Error"]["Message"]
    assert kms.list_keys()["Keys"] == []


def test_create_key_with_reserved_tag_prefix_is_a_tag_exception(kms: Any) -> None:
    refused(kms.create_key, "TagException", Tags=[{"TagKey": "aws:owner", "TagValue": "x"}])
    assert kms.list_keys()["Keys"] == []


def test_create_key_with_malformed_policy_is_refused(kms: Any) -> None:
    refused(kms.create_key, "MalformedPolicyDocumentException", Policy="not json")
    assert kms.list_keys()["Keys"] == []


def test_create_key_validates_description_length(raw_kms: Any) -> None:
    err = refused(raw_kms.create_key, "ValidationException", Description="d" * 8193)
    message = err["Error"]["Message"]
    assert message.startswith("1 validation error detected: Value '")
    assert message.endswith("' at 'description' failed to satisfy constraint: "
                            "Member must have length less than or equal to 8192")
    md = new_key(raw_kms, Description="d" * 8192)  # the limit itself is fine
    assert md["Description"] == "d" * 8192


def test_create_key_validates_enums(raw_kms: Any) -> None:
    err = refused(raw_kms.create_key, "ValidationException", KeySpec="AES_999")
    message = err["Error"]["Message"]
    assert message.startswith("1 validation error detected: Value 'AES_999' at 'keySpec' "
                              "failed to satisfy constraint: Member must satisfy enum value "
                              "set: [")
    assert "SYMMETRIC_DEFAULT" in message


# -- DescribeKey ----------------------------------------------------------------------------
def test_describe_key_by_id_arn_alias_name_and_alias_arn(kms: Any) -> None:
    md = new_key(kms)
    kms.create_alias(AliasName="alias/app", TargetKeyId=md["KeyId"])

    for ref in (md["KeyId"], md["Arn"], "alias/app",
                f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/app"):
        assert kms.describe_key(KeyId=ref)["KeyMetadata"] == md, ref


def test_describe_unknown_well_formed_key_id(kms: Any) -> None:
    kid = str(uuid.uuid4())
    refused(kms.describe_key, "NotFoundException",
            f"Key 'arn:aws:kms:us-east-1:111122223333:key/{kid}' does not exist", KeyId=kid)
    refused(kms.describe_key, "NotFoundException",
            f"Key 'arn:aws:kms:us-east-1:111122223333:key/{kid}' does not exist",
            KeyId=arn_of(kid))


def test_describe_unknown_multi_region_key_id(kms: Any) -> None:
    kid = "mrk-" + uuid.uuid4().hex
    refused(kms.describe_key, "NotFoundException",
            f"Key 'arn:aws:kms:us-east-1:111122223333:key/{kid}' does not exist", KeyId=kid)


@pytest.mark.parametrize("bad", ["x", "fake-key-id", "mrk-fake-key-id",
                                 "134f2428cec14b25a1ae9048164dba47"])
def test_describe_malformed_key_id(kms: Any, bad: str) -> None:
    refused(kms.describe_key, "NotFoundException", f"Invalid keyId '{bad}'", KeyId=bad)


def test_describe_key_arn_of_another_region(kms: Any) -> None:
    md = new_key(kms)
    refused(kms.describe_key, "NotFoundException", "Invalid arn us-west-2",
            KeyId=arn_of(md["KeyId"], "us-west-2"))


def test_describe_unknown_alias(kms: Any) -> None:
    refused(kms.describe_key, "NotFoundException",
            "Alias arn:aws:kms:us-east-1:111122223333:alias/missing is not found.",
            KeyId="alias/missing")
    refused(kms.describe_key, "NotFoundException",
            "Alias arn:aws:kms:us-east-1:111122223333:alias/missing is not found.",
            KeyId=f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/missing")


def test_describe_key_requires_key_id(raw_kms: Any) -> None:
    refused(raw_kms.describe_key, "ValidationException",
            "1 validation error detected: Value null at 'keyId' failed to satisfy "
            "constraint: Member must not be null")


# -- ListKeys -------------------------------------------------------------------------------
def test_list_keys_is_empty_on_a_fresh_node(kms: Any) -> None:
    listed = kms.list_keys()
    assert listed["Keys"] == []
    assert listed["Truncated"] is False
    assert "NextMarker" not in listed


def test_list_keys_pages_with_limit_and_marker(kms: Any) -> None:
    created = [new_key(kms) for _ in range(7)]
    expected = [{"KeyId": md["KeyId"], "KeyArn": md["Arn"]} for md in created]

    seen: list[dict[str, str]] = []
    sizes: list[int] = []
    params: dict[str, Any] = {"Limit": 3}
    while True:
        page = kms.list_keys(**params)
        sizes.append(len(page["Keys"]))
        seen += page["Keys"]
        if not page["Truncated"]:
            assert "NextMarker" not in page
            break
        params["Marker"] = page["NextMarker"]

    assert sizes == [3, 3, 1]
    assert seen == expected  # creation order, no gaps, no repeats


def test_list_keys_paginator_sees_every_key(kms: Any) -> None:
    ids = {new_key(kms)["KeyId"] for _ in range(5)}
    pages = kms.get_paginator("list_keys").paginate(PaginationConfig={"PageSize": 2})
    assert {k["KeyId"] for page in pages for k in page["Keys"]} == ids


def test_list_keys_invalid_marker(kms: Any) -> None:
    new_key(kms)
    refused(kms.list_keys, "InvalidMarkerException", Marker="not-a-marker")


def test_list_keys_limit_out_of_range(raw_kms: Any) -> None:
    refused(raw_kms.list_keys, "ValidationException",
            "1 validation error detected: Value '0' at 'limit' failed to satisfy constraint: "
            "Member must have value greater than or equal to 1", Limit=0)
    refused(raw_kms.list_keys, "ValidationException",
            "1 validation error detected: Value '1001' at 'limit' failed to satisfy "
            "constraint: Member must have value less than or equal to 1000", Limit=1001)


# -- EnableKey / DisableKey -----------------------------------------------------------------
def test_disable_then_enable_key(kms: Any) -> None:
    kid = new_key(kms)["KeyId"]

    kms.disable_key(KeyId=kid)
    md = kms.describe_key(KeyId=kid)["KeyMetadata"]
    assert (md["KeyState"], md["Enabled"]) == ("Disabled", False)

    kms.disable_key(KeyId=kid)  # idempotent
    assert kms.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"] == "Disabled"

    kms.enable_key(KeyId=arn_of(kid))  # a key ARN works as well
    md = kms.describe_key(KeyId=kid)["KeyMetadata"]
    assert (md["KeyState"], md["Enabled"]) == ("Enabled", True)

    kms.enable_key(KeyId=kid)  # idempotent
    assert kms.describe_key(KeyId=kid)["KeyMetadata"]["Enabled"] is True


def test_disabled_key_is_still_listed_and_described(kms: Any) -> None:
    kid = new_key(kms)["KeyId"]
    kms.disable_key(KeyId=kid)
    assert [k["KeyId"] for k in kms.list_keys()["Keys"]] == [kid]
    assert kms.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"] == "Disabled"


@pytest.mark.parametrize("operation", ["enable_key", "disable_key"])
def test_management_ops_refuse_alias_names_and_arns(kms: Any, operation: str) -> None:
    kid = new_key(kms)["KeyId"]
    kms.create_alias(AliasName="alias/ops", TargetKeyId=kid)
    alias_arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/ops"

    refused(getattr(kms, operation), "NotFoundException", "Invalid keyId 'alias/ops'",
            KeyId="alias/ops")
    refused(getattr(kms, operation), "NotFoundException", KeyId=alias_arn)
    assert kms.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"] == "Enabled"


@pytest.mark.parametrize("operation", ["enable_key", "disable_key", "update_key_description"])
def test_management_ops_on_unknown_key(kms: Any, operation: str) -> None:
    kid = str(uuid.uuid4())
    params: dict[str, Any] = {"KeyId": kid}
    if operation == "update_key_description":
        params["Description"] = "x"
    refused(getattr(kms, operation), "NotFoundException",
            f"Key 'arn:aws:kms:us-east-1:111122223333:key/{kid}' does not exist", **params)


# -- UpdateKeyDescription -------------------------------------------------------------------
def test_update_key_description(kms: Any) -> None:
    kid = new_key(kms, Description="old")["KeyId"]

    kms.update_key_description(KeyId=kid, Description="new")
    assert kms.describe_key(KeyId=kid)["KeyMetadata"]["Description"] == "new"

    kms.update_key_description(KeyId=arn_of(kid), Description="")
    assert kms.describe_key(KeyId=kid)["KeyMetadata"]["Description"] == ""


def test_update_key_description_works_on_a_disabled_key(kms: Any) -> None:
    kid = new_key(kms)["KeyId"]
    kms.disable_key(KeyId=kid)
    kms.update_key_description(KeyId=kid, Description="parked")
    md = kms.describe_key(KeyId=kid)["KeyMetadata"]
    assert (md["Description"], md["KeyState"]) == ("parked", "Disabled")


def test_update_key_description_refuses_an_alias(kms: Any) -> None:
    kid = new_key(kms, Description="keep")["KeyId"]
    kms.create_alias(AliasName="alias/desc", TargetKeyId=kid)
    refused(kms.update_key_description, "NotFoundException", "Invalid keyId 'alias/desc'",
            KeyId="alias/desc", Description="changed")
    assert kms.describe_key(KeyId=kid)["KeyMetadata"]["Description"] == "keep"


def test_update_key_description_validates_length(raw_kms: Any) -> None:
    kid = new_key(raw_kms, Description="keep")["KeyId"]
    err = refused(raw_kms.update_key_description, "ValidationException",
                  KeyId=kid, Description="d" * 8193)
    assert err["Error"]["Message"].endswith(
        "at 'description' failed to satisfy constraint: Member must have length less than "
        "or equal to 8192")
    assert raw_kms.describe_key(KeyId=kid)["KeyMetadata"]["Description"] == "keep"
