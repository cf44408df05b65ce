"""Key policies through boto3 against a --dev node with configured principals: the default
and the AWS managed policy as AWS writes them, GetKeyPolicy / PutKeyPolicy /
ListKeyPolicies, the checks every new policy passes (document, principals, size, the
lockout safety check) at CreateKey, PutKeyPolicy and ReplicateKey, and AccessDenied in
AWS's words for each way a call is refused. A refused call changes nothing: its only
trace is its audit fact (the log grows by one row)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.conftest import client_for
from tests.support.server import ServerProcess

A = "111122223333"
ROOT = f"arn:aws:iam::{A}:root"
ALICE = f"arn:aws:iam::{A}:user/alice"
BOB = f"arn:aws:iam::{A}:user/bob"
CAROL = f"arn:aws:iam::{A}:user/carol"
LOCKOUT = "The new key policy will not allow you to update the key policy in the future."
INVALID_PRINCIPALS = "Policy contains a statement with one or more invalid principals."

ALL_KMS = ('{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:*",'
           '"Resource":"*"}]}')
ALL_BUT_ENCRYPT = ('{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:*",'
                   '"Resource":"*"},{"Effect":"Deny","Action":"kms:Encrypt","Resource":"*"}]}')
# No signed checkpoint rows during a test: a refused call must add exactly one row.
QUIET = {"KMS_CHECKPOINT_SECONDS": "86400", "KMS_CHECKPOINT_ROWS": "1000000"}
CREATE_ONLY = ('{"Version":"2012-10-17","Statement":[{"Effect":"Allow",'
               '"Action":["kms:CreateKey","kms:ListKeys"],"Resource":"*"}]}')
DAVE = f"arn:aws:iam::{A}:user/dave"
DEPLOYER_ROLE = f"arn:aws:iam::{A}:role/deployer"
PATHED_ROLE = f"arn:aws:iam::{A}:role/team/payments/signer"
# A common guard: nothing outside us-east-1 (a negated operator holds for an absent key, so
# aws:RequestedRegion must be present on calls that name no key too).
ONLY_US_EAST_1 = ('{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:*",'
                  '"Resource":"*"},{"Effect":"Deny","Action":"kms:*","Resource":"*",'
                  '"Condition":{"StringNotEquals":{"aws:RequestedRegion":"us-east-1"}}}]}')
ERIN = f"arn:aws:iam::{A}:user/erin"
CONFIG = f"""
account_id = "{A}"
[[principals]]
arn = "{ALICE}"
access_key_id = "AKIAPOLICYALICE00001"
secret_access_key = "alice-secret"
policies = ['{ALL_KMS}']
[[principals]]
arn = "{BOB}"
access_key_id = "AKIAPOLICYBOB0000001"
secret_access_key = "bob-secret"
[[principals]]
arn = "{CAROL}"
access_key_id = "AKIAPOLICYCAROL00001"
secret_access_key = "carol-secret"
policies = ['{ALL_BUT_ENCRYPT}']
[[principals]]
arn = "{DAVE}"
access_key_id = "AKIAPOLICYDAVE000001"
secret_access_key = "dave-secret"
policies = ['{CREATE_ONLY}']
[[principals]]
arn = "{DEPLOYER_ROLE}"
session_name = "ci-run"
access_key_id = "AKIAPOLICYROLE000001"
secret_access_key = "role-secret"
policies = ['{ALL_KMS}']
[[principals]]
arn = "{PATHED_ROLE}"
session_name = "build"
access_key_id = "AKIAPOLICYPATHROLE01"
secret_access_key = "pathed-secret"
[[principals]]
arn = "{ERIN}"
access_key_id = "AKIAPOLICYERIN000001"
secret_access_key = "erin-secret"
policies = ['{ONLY_US_EAST_1}']
"""

DEFAULT_POLICY = (
    '{\n  "Version" : "2012-10-17",\n  "Id" : "key-default-1",\n  "Statement" : [ {\n'
    '    "Sid" : "Enable IAM User Permissions",\n    "Effect" : "Allow",\n'
    f'    "Principal" : {{\n      "AWS" : "arn:aws:iam::{A}:root"\n    }},\n'
    '    "Action" : "kms:*",\n    "Resource" : "*"\n  } ]\n}'
)


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def root_may(action: str | list[str] = "kms:*") -> dict[str, Any]:
    return {"Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": action, "Resource": "*"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("policies")
    (tmp / "kms.toml").write_text(CONFIG)
    server = ServerProcess(tmp / "data", extra=["--config", str(tmp / "kms.toml")],
                           env=QUIET).start()
    yield server
    server.stop()


@pytest.fixture
def root(node: ServerProcess) -> Any:
    node.reset()
    return client_for(node.url)


def as_(node: ServerProcess, who: str) -> Any:
    return client_for(node.url, access_key={"alice": "AKIAPOLICYALICE00001",
                                            "bob": "AKIAPOLICYBOB0000001",
                                            "carol": "AKIAPOLICYCAROL00001",
                                            "dave": "AKIAPOLICYDAVE000001",
                                            "role": "AKIAPOLICYROLE000001",
                                            "pathed": "AKIAPOLICYPATHROLE01",
                                            "erin": "AKIAPOLICYERIN000001"}[who])


def via_s3(client: Any) -> Any:
    def add(request: Any, **_: Any) -> None:
        request.headers["X-Kms-Via-Service"] = "s3.us-east-1.amazonaws.com"
    client.meta.events.register("before-sign.kms.*", add)
    return client


def refused(node: ServerProcess, call: Callable[[], Any], code: str,
            message: str | None = None) -> str:
    """``call`` fails with ``code`` (HTTP 400) and appends only its audit fact."""
    before = int(str(node.health()["log_seq"]))
    with pytest.raises(ClientError) as info:
        call()
    error = info.value.response["Error"]
    assert error["Code"] == code, error
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    if message is not None:
        assert error["Message"] == message
    assert int(str(node.health()["log_seq"])) == before + 1
    return str(error["Message"])


# -- the policies keys are born with ------------------------------------------------------------
def test_a_key_created_without_a_policy_gets_awss_default_policy(root: Any) -> None:
    key = root.create_key()["KeyMetadata"]["KeyId"]

    got = root.get_key_policy(KeyId=key, PolicyName="default")
    assert got["Policy"] == DEFAULT_POLICY and got["PolicyName"] == "default"
    assert root.get_key_policy(KeyId=key)["Policy"] == DEFAULT_POLICY
    listed = root.list_key_policies(KeyId=key)
    assert listed["PolicyNames"] == ["default"] and listed["Truncated"] is False


def test_an_aws_managed_key_carries_awss_managed_key_policy(root: Any, node: ServerProcess,
                                                            ) -> None:
    arn = root.describe_key(KeyId="alias/aws/s3")["KeyMetadata"]["Arn"]

    doc = json.loads(root.get_key_policy(KeyId=arn)["Policy"])
    use, metadata = doc["Statement"]
    assert doc["Id"] == "auto-s3-2"
    assert use["Principal"] == {"AWS": "*"}
    assert use["Condition"] == {"StringEquals": {
        "kms:CallerAccount": A, "kms:ViaService": "s3.us-east-1.amazonaws.com"}}
    assert metadata["Principal"] == {"AWS": ROOT}
    assert metadata["Action"] == ["kms:Describe*", "kms:Get*", "kms:List*", "kms:RevokeGrant"]
    # Used directly, it refuses; through S3 it serves every principal of the account.
    refused(node, lambda: root.encrypt(KeyId=arn, Plaintext=b"x"), "AccessDeniedException",
            f"User: {ROOT} is not authorized to perform: kms:Encrypt on resource: {arn} "
            "because no resource-based policy allows the kms:Encrypt action")
    blob = via_s3(as_(node, "bob")).encrypt(KeyId=arn, Plaintext=b"x")["CiphertextBlob"]
    assert via_s3(client_for(node.url)).decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"
    refused(node, lambda: root.put_key_policy(KeyId=arn, Policy=DEFAULT_POLICY),
            "AccessDeniedException")


# -- PutKeyPolicy -------------------------------------------------------------------------------
def test_put_key_policy_replaces_the_policy_and_it_takes_effect_at_once(root: Any) -> None:
    key = root.create_key()["KeyMetadata"]["KeyId"]
    text = policy(root_may(), {"Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt",
                               "Resource": "*"})

    root.put_key_policy(KeyId=key, PolicyName="default", Policy=text)

    assert root.get_key_policy(KeyId=key)["Policy"] == text
    with pytest.raises(ClientError) as info:
        root.encrypt(KeyId=key, Plaintext=b"x")
    assert info.value.response["Error"]["Message"].endswith(
        "with an explicit deny in a resource-based policy")
    root.put_key_policy(KeyId=key, Policy=DEFAULT_POLICY)
    assert root.encrypt(KeyId=key, Plaintext=b"x")["KeyId"].endswith(key)


def test_only_the_default_policy_name_exists(root: Any, node: ServerProcess) -> None:
    key = root.create_key()["KeyMetadata"]["KeyId"]

    refused(node, lambda: root.get_key_policy(KeyId=key, PolicyName="other"),
            "NotFoundException")
    refused(node, lambda: root.put_key_policy(KeyId=key, PolicyName="other",
                                              Policy=DEFAULT_POLICY), "NotFoundException")
    assert root.get_key_policy(KeyId=key)["Policy"] == DEFAULT_POLICY


BAD_POLICIES = {
    "not JSON": ("{not json", ""),  # AWS's answer carries no message (aws-sdk-ruby#1784)
    "no statement": ('{"Version": "2012-10-17"}', "The policy is not syntactically correct."),
    "unknown action": (policy(root_may("kms:EncryptAll")),
                       "Policy contains an unknown action: kms:EncryptAll"),
    "no principal": (policy({"Effect": "Allow", "Action": "kms:*", "Resource": "*"}),
                     "Policy contains a statement with no principal."),
    "unconfigured user": (policy(root_may(), {**root_may(), "Principal": {
        "AWS": f"arn:aws:iam::{A}:user/nobody"}}), INVALID_PRINCIPALS),
    "malformed principal": (policy({**root_may(), "Principal": {"AWS": "alice"}}),
                            INVALID_PRINCIPALS),
    "lockout": (policy({**root_may("kms:Encrypt")}), LOCKOUT),
}


@pytest.mark.parametrize("case", list(BAD_POLICIES))
def test_put_key_policy_refuses_a_bad_policy_and_changes_nothing(
        root: Any, node: ServerProcess, case: str) -> None:
    key = root.create_key()["KeyMetadata"]["KeyId"]
    text, message = BAD_POLICIES[case]

    refused(node, lambda: root.put_key_policy(KeyId=key, Policy=text),
            "MalformedPolicyDocumentException", message)

    assert root.get_key_policy(KeyId=key)["Policy"] == DEFAULT_POLICY


@pytest.mark.parametrize("case", list(BAD_POLICIES))
def test_create_key_refuses_a_bad_policy_and_creates_nothing(
        root: Any, node: ServerProcess, case: str) -> None:
    text, message = BAD_POLICIES[case]

    refused(node, lambda: root.create_key(Policy=text), "MalformedPolicyDocumentException",
            message)

    assert root.list_keys()["Keys"] == []


def test_a_policy_over_32_kb_is_refused(root: Any, node: ServerProcess) -> None:
    key = root.create_key()["KeyMetadata"]["KeyId"]
    big = policy(root_may(), *[{**root_may("kms:Encrypt"), "Sid": f"s{i:05d}" + "x" * 100}
                               for i in range(300)])

    once = boto3.client("kms", endpoint_url=node.url, region_name="us-east-1",
                        aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="x",
                        config=Config(retries={"total_max_attempts": 1}))  # a quota: retryable

    refused(node, lambda: once.put_key_policy(KeyId=key, Policy=big), "LimitExceededException",
            "The key policy exceeds the maximum size of 32768 bytes.")


def test_configured_principals_and_other_accounts_may_be_named(root: Any) -> None:
    text = policy(root_may(), {**root_may("kms:Encrypt"), "Principal": {"AWS": [
        ALICE, "444455556666", "arn:aws:iam::444455556666:user/anyone",
        "arn:aws:iam::444455556666:root"]}})

    key = root.create_key(Policy=text)["KeyMetadata"]["KeyId"]

    assert root.get_key_policy(KeyId=key)["Policy"] == text


def test_the_lockout_check_can_be_bypassed_and_then_locks_out(root: Any,
                                                              node: ServerProcess) -> None:
    key = root.create_key()["KeyMetadata"]
    only_use = policy(root_may("kms:Encrypt"))

    root.put_key_policy(KeyId=key["KeyId"], Policy=only_use,
                        BypassPolicyLockoutSafetyCheck=True)

    refused(node, lambda: root.put_key_policy(KeyId=key["KeyId"], Policy=DEFAULT_POLICY),
            "AccessDeniedException",
            f"User: {ROOT} is not authorized to perform: kms:PutKeyPolicy on resource: "
            f"{key['Arn']} because no resource-based policy allows the kms:PutKeyPolicy "
            "action")
    assert root.encrypt(KeyId=key["KeyId"], Plaintext=b"still usable")
    created = root.create_key(Policy=only_use, BypassPolicyLockoutSafetyCheck=True)
    assert created["KeyMetadata"]["KeyState"] == "Enabled"


def test_the_lockout_check_counts_the_callers_identity_policies(node: ServerProcess,
                                                                root: Any) -> None:
    alice = as_(node, "alice")
    # Only the account is named: alice may update it later through her IAM policy.
    key = alice.create_key(Policy=policy(root_may()))["KeyMetadata"]["KeyId"]
    alice.put_key_policy(KeyId=key, Policy=DEFAULT_POLICY)
    # bob has no identity policy, so a policy naming only the account would lock him out.
    bob_key = root.create_key(Policy=policy(root_may(), {**root_may("kms:PutKeyPolicy"),
                                                         "Principal": {"AWS": BOB}}))
    refused(node, lambda: as_(node, "bob").put_key_policy(
        KeyId=bob_key["KeyMetadata"]["KeyId"], Policy=DEFAULT_POLICY),
        "MalformedPolicyDocumentException", LOCKOUT)


def test_replicate_key_checks_the_replicas_policy(root: Any, node: ServerProcess) -> None:
    key = root.create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]

    for text, message in (BAD_POLICIES["unknown action"], BAD_POLICIES["lockout"]):
        refused(node, lambda text=text: root.replicate_key(
            KeyId=key, ReplicaRegion="us-west-2", Policy=text),
            "MalformedPolicyDocumentException", message)
    config = root.describe_key(KeyId=key)["KeyMetadata"]["MultiRegionConfiguration"]
    assert config.get("ReplicaKeys", []) == []


# -- AccessDenied in AWS's words ------------------------------------------------------------------
def test_each_way_of_being_refused_has_awss_words(root: Any, node: ServerProcess) -> None:
    key = root.create_key()["KeyMetadata"]
    arn = key["Arn"]
    start = f"is not authorized to perform: kms:Encrypt on resource: {arn}"

    refused(node, lambda: as_(node, "bob").encrypt(KeyId=arn, Plaintext=b"x"),
            "AccessDeniedException", f"User: {BOB} {start} because no identity-based policy "
            "allows the kms:Encrypt action")
    refused(node, lambda: as_(node, "carol").encrypt(KeyId=arn, Plaintext=b"x"),
            "AccessDeniedException", f"User: {CAROL} {start} with an explicit deny in an "
            "identity-based policy")
    root.put_key_policy(KeyId=arn, Policy=policy(root_may("kms:PutKeyPolicy")))
    refused(node, lambda: as_(node, "alice").encrypt(KeyId=arn, Plaintext=b"x"),
            "AccessDeniedException", f"User: {ALICE} {start} because no resource-based "
            "policy allows the kms:Encrypt action")
    refused(node, lambda: as_(node, "bob").create_key(), "AccessDeniedException",
            f"User: {BOB} is not authorized to perform: kms:CreateKey on resource: * because "
            "no identity-based policy allows the kms:CreateKey action")


def test_a_policy_survives_a_restart(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        kms = client_for(server.url)
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        text = policy(root_may(), {"Sid": "kept", **root_may("kms:Decrypt")})
        kms.put_key_policy(KeyId=key, Policy=text)
        server.stop()
        server.start()
        assert client_for(server.url).get_key_policy(KeyId=key)["Policy"] == text
    finally:
        server.stop()


def test_alias_condition_keys_follow_the_keys_aliases(root: Any, node: ServerProcess) -> None:
    text = policy(root_may(["kms:PutKeyPolicy", "kms:CreateAlias", "kms:UpdateAlias",
                            "kms:DeleteAlias"]), {
        "Effect": "Allow", "Principal": {"AWS": ROOT}, "Resource": "*", "Action": "kms:Encrypt",
        "Condition": {"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/pay"}}}, {
        "Effect": "Allow", "Principal": {"AWS": ROOT}, "Resource": "*",
        "Action": "kms:DescribeKey",
        "Condition": {"StringEquals": {"kms:RequestAlias": "alias/named"}}})
    key = root.create_key(Policy=text)["KeyMetadata"]["KeyId"]
    other = root.create_key()["KeyMetadata"]["KeyId"]
    encrypt = lambda: root.encrypt(KeyId=key, Plaintext=b"x")  # noqa: E731

    refused(node, encrypt, "AccessDeniedException")
    root.create_alias(AliasName="alias/pay", TargetKeyId=other)
    refused(node, encrypt, "AccessDeniedException")  # the alias names another key
    root.update_alias(AliasName="alias/pay", TargetKeyId=key)
    assert encrypt()["KeyId"].endswith(key)
    root.delete_alias(AliasName="alias/pay")
    refused(node, encrypt, "AccessDeniedException")
    # kms:RequestAlias: the alias the request named the key by.
    refused(node, lambda: root.describe_key(KeyId=key), "AccessDeniedException")
    root.create_alias(AliasName="alias/named", TargetKeyId=other)
    root.update_alias(AliasName="alias/named", TargetKeyId=key)
    assert root.describe_key(KeyId="alias/named")["KeyMetadata"]["KeyId"] == key


def test_tags_at_creation_need_tag_resource(root: Any, node: ServerProcess) -> None:
    dave = as_(node, "dave")

    refused(node, lambda: dave.create_key(Tags=[{"TagKey": "team", "TagValue": "x"}],
                                          BypassPolicyLockoutSafetyCheck=True),
            "AccessDeniedException",
            f"User: {DAVE} is not authorized to perform: kms:TagResource on resource: * "
            "because no identity-based policy allows the kms:TagResource action")

    assert dave.list_keys()["Keys"] == []
    assert dave.create_key()["KeyMetadata"]["KeyState"] == "Enabled"


def test_reencrypt_on_the_same_key_can_be_denied(root: Any, node: ServerProcess) -> None:
    text = policy(root_may(), {
        "Effect": "Deny", "Principal": "*", "Action": "kms:ReEncrypt*", "Resource": "*",
        "Condition": {"Bool": {"kms:ReEncryptOnSameKey": "true"}}})
    key = root.create_key(Policy=text)["KeyMetadata"]["KeyId"]
    other = root.create_key()["KeyMetadata"]["KeyId"]
    root.create_alias(AliasName="alias/same", TargetKeyId=key)
    blob = root.encrypt(KeyId=key, Plaintext=b"x")["CiphertextBlob"]

    for same in (key, "alias/same"):
        message = refused(node, lambda same=same: root.re_encrypt(
            CiphertextBlob=blob, DestinationKeyId=same), "AccessDeniedException")
        assert "kms:ReEncrypt" in message and message.endswith(
            "with an explicit deny in a resource-based policy")
    assert root.re_encrypt(CiphertextBlob=blob, DestinationKeyId=other)["KeyId"].endswith(
        other)


def test_an_assumed_role_is_its_role_to_principal_arn_with_no_username(
        root: Any, node: ServerProcess) -> None:
    """For a role's session, aws:PrincipalArn is the role's ARN (not the assumed-role ARN),
    aws:userid is ``<role id>:<session>`` (as STS names it), and aws:username is absent;
    an IAM user has its own ARN, its AIDA id and its name."""
    sts = boto3.client("sts", endpoint_url=node.url, region_name="us-east-1",
                       aws_access_key_id="AKIAPOLICYROLE000001",
                       aws_secret_access_key="role-secret",
                       config=Config(retries={"max_attempts": 1}))
    user_id = sts.get_caller_identity()["UserId"]
    assert user_id.startswith("AROA") and user_id.endswith(":ci-run")

    def deny_unless(action: str, condition: dict[str, Any]) -> dict[str, Any]:
        return {"Effect": "Deny", "Principal": "*", "Action": action, "Resource": "*",
                "Condition": condition}

    key = root.create_key(Policy=policy(
        root_may(),
        deny_unless("kms:Encrypt", {"ArnNotEquals": {"aws:PrincipalArn": DEPLOYER_ROLE}}),
        deny_unless("kms:GenerateDataKey", {"StringNotEquals": {"aws:userid": user_id}}),
        deny_unless("kms:DescribeKey", {"Null": {"aws:username": "false"}}),
    ))["KeyMetadata"]["Arn"]

    role = as_(node, "role")
    assert role.encrypt(KeyId=key, Plaintext=b"x")["KeyId"] == key
    assert role.generate_data_key(KeyId=key, NumberOfBytes=16)["KeyId"] == key
    assert role.describe_key(KeyId=key)["KeyMetadata"]["Arn"] == key
    alice = as_(node, "alice")
    for action, call in (("Encrypt", lambda: alice.encrypt(KeyId=key, Plaintext=b"x")),
                         ("GenerateDataKey",
                          lambda: alice.generate_data_key(KeyId=key, NumberOfBytes=16)),
                         ("DescribeKey", lambda: alice.describe_key(KeyId=key))):
        refused(node, call, "AccessDeniedException",
                f"User: {ALICE} is not authorized to perform: kms:{action} on resource: "
                f"{key} with an explicit deny in a resource-based policy")


def test_a_key_policy_naming_a_role_with_a_path_allows_its_sessions(
        root: Any, node: ServerProcess) -> None:
    """The session ARN drops the role's path (assumed-role/signer/build); the key policy and
    aws:PrincipalArn name the role with it, as AWS does."""
    key = root.create_key(Policy=policy(
        root_may(),
        {"Effect": "Allow", "Principal": {"AWS": PATHED_ROLE}, "Action": "kms:Encrypt",
         "Resource": "*", "Condition": {"ArnEquals": {"aws:PrincipalArn": PATHED_ROLE}}},
    ))["KeyMetadata"]["Arn"]
    signer = as_(node, "pathed")  # no identity policy: the key policy alone must allow
    assert signer.encrypt(KeyId=key, Plaintext=b"x")["KeyId"] == key
    session = f"arn:aws:sts::{A}:assumed-role/signer/build"
    blob = root.encrypt(KeyId=key, Plaintext=b"x")["CiphertextBlob"]
    refused(node, lambda: signer.decrypt(CiphertextBlob=blob), "AccessDeniedException",
        f"User: {session} is not authorized to perform: kms:Decrypt on resource: {key} "
        "because no identity-based policy allows the kms:Decrypt action")


def test_requested_region_is_known_on_calls_that_name_no_key(
        root: Any, node: ServerProcess) -> None:
    """A Deny on aws:RequestedRegion != us-east-1 leaves CreateKey, ListKeys and
    GenerateRandom in us-east-1 alone, and refuses them signed for eu-west-1 (--dev hosts it)."""
    erin = as_(node, "erin")
    erin.create_key()
    erin.list_keys()
    assert len(erin.generate_random(NumberOfBytes=8)["Plaintext"]) == 8
    eu = client_for(node.url, region="eu-west-1", access_key="AKIAPOLICYERIN000001")
    with pytest.raises(ClientError) as info:
        eu.create_key()
    assert info.value.response["Error"]["Message"] == (
        f"User: {ERIN} is not authorized to perform: kms:CreateKey on resource: * with an "
        "explicit deny in an identity-based policy")
