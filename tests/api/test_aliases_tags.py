"""Aliases and tags through a real node and boto3: CreateAlias, UpdateAlias, DeleteAlias,
ListAliases, TagResource, UntagResource, ListResourceTags, with AWS's errors."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support.expect import refused

REGION = "us-east-1"
ACCOUNT = "111122223333"
PREFIX_RULE = ('Alias must start with the prefix "alias/". Please see '
               "https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html")


def alias_arn(name: str) -> str:
    return f"arn:aws:kms:{REGION}:{ACCOUNT}:{name}"


def new_key(kms: Any) -> dict[str, Any]:
    md: dict[str, Any] = kms.create_key()["KeyMetadata"]
    return md


def aliases(kms: Any, **params: Any) -> dict[str, str]:
    """The customer aliases listed (AWS's predefined alias/aws/* ones are tested apart)."""
    return {a["AliasName"]: a["TargetKeyId"] for a in kms.list_aliases(**params)["Aliases"]
            if not a["AliasName"].startswith("alias/aws/")}


def entry(kms: Any, name: str) -> dict[str, Any]:
    [found] = [a for a in kms.list_aliases()["Aliases"] if a["AliasName"] == name]
    return dict(found)


def tags(kms: Any, key_id: str) -> dict[str, str]:
    return {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=key_id)["Tags"]}


# -- CreateAlias / ListAliases --------------------------------------------------------------
def test_create_alias_and_list_it(kms: Any) -> None:
    key = new_key(kms)
    kms.create_alias(AliasName="alias/billing", TargetKeyId=key["KeyId"])

    listed = kms.list_aliases()
    assert listed["Truncated"] is False
    [entry] = [a for a in listed["Aliases"] if a["AliasName"] == "alias/billing"]
    assert entry["AliasArn"] == alias_arn("alias/billing")
    assert entry["TargetKeyId"] == key["KeyId"]
    assert entry["LastUpdatedDate"] >= entry["CreationDate"]
    assert kms.describe_key(KeyId="alias/billing")["KeyMetadata"]["KeyId"] == key["KeyId"]


def test_create_alias_by_key_arn_and_with_every_allowed_character(kms: Any) -> None:
    key = new_key(kms)
    name = "alias/Team_1/app-2/prod"  # ':' is in the model's pattern, but AWS refuses it
    kms.create_alias(AliasName=name, TargetKeyId=key["Arn"])
    assert aliases(kms) == {name: key["KeyId"]}


def test_a_key_can_have_several_aliases(kms: Any) -> None:
    key = new_key(kms)
    for name in ("alias/a", "alias/b", "alias/c"):
        kms.create_alias(AliasName=name, TargetKeyId=key["KeyId"])
    assert aliases(kms) == dict.fromkeys(("alias/a", "alias/b", "alias/c"), key["KeyId"])


def test_create_alias_that_exists(kms: Any) -> None:
    first, second = new_key(kms), new_key(kms)
    kms.create_alias(AliasName="alias/taken", TargetKeyId=first["KeyId"])
    refused(kms.create_alias, "AlreadyExistsException",
            f"An alias with the name {alias_arn('alias/taken')} already exists",
            AliasName="alias/taken", TargetKeyId=second["KeyId"])
    assert aliases(kms) == {"alias/taken": first["KeyId"]}


def test_alias_names_are_case_sensitive(kms: Any) -> None:
    key = new_key(kms)
    kms.create_alias(AliasName="alias/Case", TargetKeyId=key["KeyId"])
    kms.create_alias(AliasName="alias/case", TargetKeyId=key["KeyId"])
    assert set(aliases(kms)) == {"alias/Case", "alias/case"}


@pytest.mark.parametrize("operation", ["create_alias", "update_alias"])
def test_alias_without_prefix_is_a_validation_error(kms: Any, operation: str) -> None:
    key = new_key(kms)
    refused(getattr(kms, operation), "ValidationException", PREFIX_RULE,
            AliasName="billing", TargetKeyId=key["KeyId"])
    assert aliases(kms) == {}


def test_delete_alias_without_prefix_is_a_validation_error(kms: Any) -> None:
    refused(kms.delete_alias, "ValidationException", PREFIX_RULE, AliasName="billing")


def test_alias_name_pattern_is_validated(raw_kms: Any) -> None:
    key = new_key(raw_kms)
    refused(raw_kms.create_alias, "ValidationException",
            "1 validation error detected: Value 'alias/has space' at 'aliasName' failed to "
            "satisfy constraint: Member must satisfy regular expression pattern: "
            "^[a-zA-Z0-9:/_-]+$", AliasName="alias/has space", TargetKeyId=key["KeyId"])
    assert aliases(raw_kms) == {}


def test_aws_reserved_alias_names_are_refused(kms: Any) -> None:
    # The reference only says the prefix is reserved; this service answers as AWS's
    # implicit deny on AWS managed aliases does: AccessDeniedException.
    key = new_key(kms)
    err = refused(kms.create_alias, "AccessDeniedException",
                  AliasName="alias/aws/s3", TargetKeyId=key["KeyId"])
    assert "reserved" in err["Error"]["Message"]
    refused(kms.update_alias, "AccessDeniedException",
            AliasName="alias/aws/s3", TargetKeyId=key["KeyId"])
    refused(kms.delete_alias, "AccessDeniedException", AliasName="alias/aws/s3")
    assert aliases(kms) == {}


def test_alias_must_target_a_key_not_an_alias(kms: Any) -> None:
    key = new_key(kms)
    kms.create_alias(AliasName="alias/first", TargetKeyId=key["KeyId"])
    refused(kms.create_alias, "NotFoundException", "Invalid keyId 'alias/first'",
            AliasName="alias/second", TargetKeyId="alias/first")
    refused(kms.create_alias, "NotFoundException",
            AliasName="alias/second", TargetKeyId=alias_arn("alias/first"))
    assert aliases(kms) == {"alias/first": key["KeyId"]}


def test_alias_to_an_unknown_key(kms: Any) -> None:
    kid = str(uuid.uuid4())
    refused(kms.create_alias, "NotFoundException",
            f"Key 'arn:aws:kms:us-east-1:111122223333:key/{kid}' does not exist",
            AliasName="alias/x", TargetKeyId=kid)
    assert aliases(kms) == {}


def test_alias_to_a_disabled_key_is_allowed(kms: Any) -> None:
    key = new_key(kms)
    kms.disable_key(KeyId=key["KeyId"])
    kms.create_alias(AliasName="alias/off", TargetKeyId=key["KeyId"])
    assert kms.describe_key(KeyId="alias/off")["KeyMetadata"]["KeyState"] == "Disabled"


def test_list_aliases_filtered_by_key(kms: Any) -> None:
    a, b, lonely = new_key(kms), new_key(kms), new_key(kms)
    kms.create_alias(AliasName="alias/a1", TargetKeyId=a["KeyId"])
    kms.create_alias(AliasName="alias/a2", TargetKeyId=a["KeyId"])
    kms.create_alias(AliasName="alias/b1", TargetKeyId=b["KeyId"])

    assert aliases(kms, KeyId=a["KeyId"]) == {"alias/a1": a["KeyId"], "alias/a2": a["KeyId"]}
    assert aliases(kms, KeyId=b["Arn"]) == {"alias/b1": b["KeyId"]}
    assert aliases(kms, KeyId=lonely["KeyId"]) == {}
    kid = str(uuid.uuid4())
    refused(kms.list_aliases, "NotFoundException",
            f"Key 'arn:aws:kms:us-east-1:111122223333:key/{kid}' does not exist", KeyId=kid)


def test_list_aliases_pages_in_name_order(kms: Any) -> None:
    key = new_key(kms)
    names = [f"alias/n{i}" for i in (4, 0, 3, 1, 2)]
    for name in names:
        kms.create_alias(AliasName=name, TargetKeyId=key["KeyId"])

    seen: list[str] = []
    sizes: list[int] = []
    params: dict[str, Any] = {"Limit": 2}
    while True:
        page = kms.list_aliases(**params)
        sizes.append(len(page["Aliases"]))
        seen += [a["AliasName"] for a in page["Aliases"]]
        if not page["Truncated"]:
            assert "NextMarker" not in page
            break
        params["Marker"] = page["NextMarker"]
    # AWS's predefined alias/aws/* names are listed too, before these ("aws" < "n0")
    predefined = [n for n in seen if n.startswith("alias/aws/")]
    assert len(predefined) >= 20
    assert seen == sorted(predefined) + sorted(names)
    assert len(set(seen)) == len(seen)  # each name on exactly one page
    assert sizes == [2] * (len(seen) // 2) + [1] * (len(seen) % 2)


def test_list_aliases_limit_and_marker_are_checked(raw_kms: Any) -> None:
    refused(raw_kms.list_aliases, "ValidationException",
            "1 validation error detected: Value '101' at 'limit' failed to satisfy constraint: "
            "Member must have value less than or equal to 100", Limit=101)
    refused(raw_kms.list_aliases, "InvalidMarkerException", Marker="garbage")


# -- UpdateAlias ----------------------------------------------------------------------------
def test_update_alias_repoints_encrypt(kms: Any) -> None:
    old, new = new_key(kms), new_key(kms)
    kms.create_alias(AliasName="alias/current", TargetKeyId=old["KeyId"])
    before = entry(kms, "alias/current")
    assert kms.encrypt(KeyId="alias/current", Plaintext=b"p")["KeyId"] == old["Arn"]

    kms.update_alias(AliasName="alias/current", TargetKeyId=new["KeyId"])

    after = entry(kms, "alias/current")
    assert after["TargetKeyId"] == new["KeyId"]
    assert after["CreationDate"] == before["CreationDate"]
    assert after["LastUpdatedDate"] >= before["LastUpdatedDate"]
    enc = kms.encrypt(KeyId="alias/current", Plaintext=b"p")
    assert enc["KeyId"] == new["Arn"]
    assert kms.decrypt(CiphertextBlob=enc["CiphertextBlob"])["KeyId"] == new["Arn"]
    assert kms.describe_key(KeyId="alias/current")["KeyMetadata"]["KeyId"] == new["KeyId"]


def test_update_alias_to_the_same_key_is_fine(kms: Any) -> None:
    key = new_key(kms)
    kms.create_alias(AliasName="alias/same", TargetKeyId=key["KeyId"])
    kms.update_alias(AliasName="alias/same", TargetKeyId=key["Arn"])
    assert aliases(kms) == {"alias/same": key["KeyId"]}


def test_update_missing_alias(kms: Any) -> None:
    key = new_key(kms)
    refused(kms.update_alias, "NotFoundException",
            f"Alias {alias_arn('alias/missing')} is not found.",
            AliasName="alias/missing", TargetKeyId=key["KeyId"])
    assert aliases(kms) == {}


def test_update_alias_target_must_be_a_key(kms: Any) -> None:
    a, b = new_key(kms), new_key(kms)
    kms.create_alias(AliasName="alias/one", TargetKeyId=a["KeyId"])
    kms.create_alias(AliasName="alias/two", TargetKeyId=b["KeyId"])
    refused(kms.update_alias, "NotFoundException", "Invalid keyId 'alias/two'",
            AliasName="alias/one", TargetKeyId="alias/two")
    kid = str(uuid.uuid4())
    refused(kms.update_alias, "NotFoundException",
            f"Key 'arn:aws:kms:us-east-1:111122223333:key/{kid}' does not exist",
            AliasName="alias/one", TargetKeyId=kid)
    assert aliases(kms) == {"alias/one": a["KeyId"], "alias/two": b["KeyId"]}


# -- DeleteAlias ----------------------------------------------------------------------------
def test_delete_alias(kms: Any) -> None:
    key = new_key(kms)
    kms.create_alias(AliasName="alias/temp", TargetKeyId=key["KeyId"])
    kms.delete_alias(AliasName="alias/temp")

    assert aliases(kms) == {}
    refused(kms.describe_key, "NotFoundException",
            f"Alias {alias_arn('alias/temp')} is not found.", KeyId="alias/temp")
    refused(kms.encrypt, "NotFoundException", KeyId="alias/temp", Plaintext=b"p")
    # the key itself is untouched, and the name can be used again
    assert kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"] == "Enabled"
    kms.create_alias(AliasName="alias/temp", TargetKeyId=key["KeyId"])
    assert aliases(kms) == {"alias/temp": key["KeyId"]}


def test_delete_missing_alias(kms: Any) -> None:
    refused(kms.delete_alias, "NotFoundException",
            f"Alias {alias_arn('alias/never')} is not found.", AliasName="alias/never")


def test_delete_alias_twice(kms: Any) -> None:
    key = new_key(kms)
    kms.create_alias(AliasName="alias/once", TargetKeyId=key["KeyId"])
    kms.delete_alias(AliasName="alias/once")
    refused(kms.delete_alias, "NotFoundException", AliasName="alias/once")


# -- Tags -----------------------------------------------------------------------------------
def test_tag_list_and_overwrite(kms: Any) -> None:
    kid = new_key(kms)["KeyId"]
    kms.tag_resource(KeyId=kid, Tags=[{"TagKey": "env", "TagValue": "dev"},
                                      {"TagKey": "team", "TagValue": "core"}])
    assert tags(kms, kid) == {"env": "dev", "team": "core"}

    kms.tag_resource(KeyId=kid, Tags=[{"TagKey": "env", "TagValue": "prod"}])
    assert tags(kms, kid) == {"env": "prod", "team": "core"}

    listed = kms.list_resource_tags(KeyId=kid)
    assert [t["TagKey"] for t in listed["Tags"]] == ["env", "team"]
    assert listed["Truncated"] is False


def test_tags_accept_key_arn_and_empty_values(kms: Any) -> None:
    key = new_key(kms)
    kms.tag_resource(KeyId=key["Arn"], Tags=[{"TagKey": "flag", "TagValue": ""}])
    assert tags(kms, key["Arn"]) == {"flag": ""}


def test_untag(kms: Any) -> None:
    kid = new_key(kms)["KeyId"]
    kms.tag_resource(KeyId=kid, Tags=[{"TagKey": "a", "TagValue": "1"},
                                      {"TagKey": "b", "TagValue": "2"}])
    kms.untag_resource(KeyId=kid, TagKeys=["a", "never-there"])  # unknown keys are fine
    assert tags(kms, kid) == {"b": "2"}
    kms.untag_resource(KeyId=kid, TagKeys=["nothing"])
    assert tags(kms, kid) == {"b": "2"}


def test_tags_are_per_key(kms: Any) -> None:
    a, b = new_key(kms)["KeyId"], new_key(kms)["KeyId"]
    kms.tag_resource(KeyId=a, Tags=[{"TagKey": "k", "TagValue": "a"}])
    assert tags(kms, a) == {"k": "a"}
    assert tags(kms, b) == {}


def test_reserved_aws_tag_prefix_is_a_tag_exception(kms: Any) -> None:
    kid = new_key(kms)["KeyId"]
    kms.tag_resource(KeyId=kid, Tags=[{"TagKey": "keep", "TagValue": "1"}])
    refused(kms.tag_resource, "TagException",
            KeyId=kid, Tags=[{"TagKey": "aws:createdBy", "TagValue": "x"}])
    refused(kms.tag_resource, "TagException",  # all or nothing
            KeyId=kid, Tags=[{"TagKey": "ok", "TagValue": "1"},
                             {"TagKey": "aws:x", "TagValue": "2"}])
    refused(kms.untag_resource, "TagException", KeyId=kid, TagKeys=["aws:createdBy"])
    assert tags(kms, kid) == {"keep": "1"}


def test_too_many_tags(kms: Any) -> None:
    kid = new_key(kms)["KeyId"]
    kms.tag_resource(KeyId=kid, Tags=[{"TagKey": f"t{i}", "TagValue": ""} for i in range(50)])
    refused(kms.tag_resource, "LimitExceededException", "Too many tags",
            KeyId=kid, Tags=[{"TagKey": "one-more", "TagValue": ""}])
    kms.tag_resource(KeyId=kid, Tags=[{"TagKey": "t0", "TagValue": "overwrite is fine"}])
    assert len(tags(kms, kid)) == 50


def test_list_resource_tags_pages(kms: Any) -> None:
    kid = new_key(kms)["KeyId"]
    kms.tag_resource(KeyId=kid, Tags=[{"TagKey": k, "TagValue": k} for k in "edcba"])
    first = kms.list_resource_tags(KeyId=kid, Limit=3)
    assert [t["TagKey"] for t in first["Tags"]] == ["a", "b", "c"]
    assert first["Truncated"] is True
    rest = kms.list_resource_tags(KeyId=kid, Limit=3, Marker=first["NextMarker"])
    assert [t["TagKey"] for t in rest["Tags"]] == ["d", "e"]
    assert rest["Truncated"] is False


@pytest.mark.parametrize("operation", ["tag_resource", "untag_resource", "list_resource_tags"])
def test_tag_operations_refuse_aliases_and_unknown_keys(kms: Any, operation: str) -> None:
    key = new_key(kms)
    kms.create_alias(AliasName="alias/tagged", TargetKeyId=key["KeyId"])
    extra: dict[str, Any] = {
        "tag_resource": {"Tags": [{"TagKey": "k", "TagValue": "v"}]},
        "untag_resource": {"TagKeys": ["k"]},
        "list_resource_tags": {},
    }[operation]
    call = getattr(kms, operation)
    refused(call, "NotFoundException", "Invalid keyId 'alias/tagged'",
            KeyId="alias/tagged", **extra)
    kid = str(uuid.uuid4())
    refused(call, "NotFoundException",
            f"Key 'arn:aws:kms:us-east-1:111122223333:key/{kid}' does not exist",
            KeyId=kid, **extra)
    assert tags(kms, key["KeyId"]) == {}


def test_tag_values_are_validated(raw_kms: Any) -> None:
    kid = new_key(raw_kms)["KeyId"]
    err = refused(raw_kms.tag_resource, "ValidationException",
                  KeyId=kid, Tags=[{"TagKey": "k" * 129, "TagValue": "v"}])
    assert "Member must have length less than or equal to 128" in err["Error"]["Message"]
    assert tags(raw_kms, kid) == {}
