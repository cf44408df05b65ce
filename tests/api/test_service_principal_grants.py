"""Grants to AWS service principals through boto3: CreateGrant's GranteeServicePrincipal,
RetiringServicePrincipal and SourceArn constraint, as the botocore model describes them;
the service principal (``--dev``: the X-Kms-Service-Principal header, aws:SourceArn from
X-Kms-Source-Arn) uses the grant only for its source ARN; ListGrants/ListRetirableGrants
show and filter them; refused calls append only their audit fact."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.api.test_aws_parity import log_seq, refused_alone
from tests.conftest import client_for
from tests.support.audit_stream import read_all
from tests.support.secured import secured_fixture
from tests.support.server import ServerProcess

ACCOUNT = "111122223333"
LOGS = "logs.amazonaws.com"
GROUP = f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:payments"
OTHER_GROUP = f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:other"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"
ROOT = f"arn:aws:iam::{ACCOUNT}:root"


def headers(service: str | None, source_arn: str | None) -> Callable[..., None]:
    def add(request: Any, **_: Any) -> None:
        if service is not None:
            request.headers["X-Kms-Service-Principal"] = service
        if source_arn is not None:
            request.headers["X-Kms-Source-Arn"] = source_arn
    return add


def as_service(server: ServerProcess, service: str | None = LOGS,
               source_arn: str | None = GROUP) -> Any:
    """A boto3 client whose calls the dev node takes as ``service`` acting for
    ``source_arn``."""
    client: Any = client_for(server.url)
    client.meta.events.register("before-sign.kms.*", headers(service, source_arn))
    return client


def service_grant(kms: Any, key_id: str, **extra: Any) -> dict[str, Any]:
    ask: dict[str, Any] = {
        "KeyId": key_id, "GranteeServicePrincipal": LOGS, "RetiringServicePrincipal": LOGS,
        "Operations": ["Encrypt", "Decrypt", "GenerateDataKey", "DescribeKey", "RetireGrant"],
        "Constraints": {"SourceArn": GROUP}, **extra}
    made: dict[str, Any] = kms.create_grant(**ask)
    return made


def test_a_service_principal_grant_is_listed_as_aws_lists_it(kms: Any) -> None:
    key = kms.create_key()["KeyMetadata"]
    made = service_grant(kms, key["KeyId"], Name="logs-payments")

    (entry,) = kms.list_grants(KeyId=key["KeyId"])["Grants"]
    assert {k: v for k, v in entry.items() if k != "CreationDate"} == {
        "KeyId": key["Arn"], "GrantId": made["GrantId"], "Name": "logs-payments",
        "GranteePrincipal": LOGS, "GranteeServicePrincipal": LOGS,
        "RetiringServicePrincipal": LOGS, "IssuingAccount": ROOT,
        "Operations": ["Encrypt", "Decrypt", "GenerateDataKey", "DescribeKey", "RetireGrant"],
        "Constraints": {"SourceArn": GROUP},
    }
    # A grant to an IAM principal may carry a SourceArn constraint beside a context one.
    both = kms.create_grant(KeyId=key["KeyId"], GranteePrincipal=ALICE, Operations=["Decrypt"],
                            Constraints={"SourceArn": GROUP,
                                         "EncryptionContextSubset": {"app": "pay"}})
    listed = kms.list_grants(KeyId=key["KeyId"], GrantId=both["GrantId"])["Grants"]
    assert listed[0]["Constraints"] == {"SourceArn": GROUP,
                                        "EncryptionContextSubset": {"app": "pay"}}
    assert "GranteeServicePrincipal" not in listed[0]
    # Name idempotency covers the service members too.
    again = service_grant(kms, key["KeyId"], Name="logs-payments")
    assert again["GrantId"] == made["GrantId"]


def test_the_service_uses_its_grant_only_for_the_source_arn_named(
        server: ServerProcess, kms: Any) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    logs = as_service(server)
    denied = "AccessDeniedException"
    refused_alone(server, logs.encrypt, denied, KeyId=key_id, Plaintext=b"line")  # no grant
    service_grant(kms, key_id)

    blob = logs.encrypt(KeyId=key_id, Plaintext=b"line")["CiphertextBlob"]
    assert logs.decrypt(CiphertextBlob=blob)["Plaintext"] == b"line"
    assert len(logs.generate_data_key(KeyId=key_id, KeySpec="AES_256")["Plaintext"]) == 32
    assert logs.describe_key(KeyId=key_id)["KeyMetadata"]["KeyId"] == key_id
    for other in (as_service(server, source_arn=OTHER_GROUP),  # another resource
                  as_service(server, source_arn=None),  # no aws:SourceArn at all
                  as_service(server, service="sns.amazonaws.com")):  # another service
        refused_alone(server, other.encrypt, denied, KeyId=key_id, Plaintext=b"line")
        refused_alone(server, other.decrypt, denied, CiphertextBlob=blob)


def test_a_grant_passed_on_by_a_service_keeps_its_source_arn(
        server: ServerProcess, kms: Any) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    service_grant(kms, key_id, Operations=["Encrypt", "CreateGrant"])
    logs = as_service(server)
    ask = {"KeyId": key_id, "GranteePrincipal": ALICE, "Operations": ["Encrypt"]}

    refused_alone(server, logs.create_grant, "AccessDeniedException", **ask)
    refused_alone(server, logs.create_grant, "AccessDeniedException",
                  Constraints={"SourceArn": OTHER_GROUP}, **ask)
    made = logs.create_grant(Constraints={"SourceArn": GROUP}, **ask)
    listed = kms.list_grants(KeyId=key_id, GrantId=made["GrantId"])["Grants"]
    assert listed[0]["Constraints"] == {"SourceArn": GROUP}


def test_create_grant_refuses_an_incomplete_service_grant_and_changes_nothing(
        server: ServerProcess, raw_kms: Any) -> None:
    key_id = raw_kms.create_key()["KeyMetadata"]["KeyId"]
    ask = {"KeyId": key_id, "Operations": ["Decrypt"]}
    for params, message in [
        ({"GranteeServicePrincipal": LOGS, "RetiringServicePrincipal": LOGS},
         "When you specify a GranteeServicePrincipal, you must also specify a SourceArn "
         "grant constraint."),
        ({"GranteeServicePrincipal": LOGS, "Constraints": {"SourceArn": GROUP}},
         "When you specify a GranteeServicePrincipal, you must also specify either a "
         "RetiringPrincipal or a RetiringServicePrincipal."),
        ({"GranteeServicePrincipal": LOGS, "GranteePrincipal": ALICE,
          "RetiringPrincipal": ALICE, "Constraints": {"SourceArn": GROUP}},
         "You must specify either GranteePrincipal or GranteeServicePrincipal, but not both."),
        ({"GranteePrincipal": ALICE, "RetiringPrincipal": ALICE,
          "RetiringServicePrincipal": LOGS},
         "You can specify either RetiringPrincipal or RetiringServicePrincipal, but not both."),
        ({"GranteePrincipal": ALICE, "Constraints": {"SourceArn": "arn:aws:logs:x"}}, None),
        ({"GranteeServicePrincipal": "not a service", "RetiringPrincipal": ALICE,
          "Constraints": {"SourceArn": GROUP}}, None),
    ]:
        refused_alone(server, raw_kms.create_grant, "ValidationException", message,
                      **ask, **params)
    assert raw_kms.list_grants(KeyId=key_id)["Grants"] == []


def test_the_service_lists_and_retires_its_grants(server: ServerProcess, kms: Any) -> None:
    # ListGrants is a key policy permission: this key's policy lets the service call it.
    policy = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"Service": LOGS}, "Action": "kms:ListGrants",
         "Resource": "*"}]})
    key_id = kms.create_key(Policy=policy)["KeyMetadata"]["KeyId"]
    made = service_grant(kms, key_id)
    kms.create_grant(KeyId=key_id, GranteePrincipal=ALICE, RetiringPrincipal=ALICE,
                     Operations=["Decrypt"])
    logs = as_service(server)

    mine = logs.list_grants(KeyId=key_id, GranteeServicePrincipal=LOGS)["Grants"]
    assert [g["GrantId"] for g in mine] == [made["GrantId"]]
    assert len(kms.list_grants(KeyId=key_id)["Grants"]) == 2
    retirable = logs.list_retirable_grants(RetiringServicePrincipal=LOGS)["Grants"]
    assert [g["GrantId"] for g in retirable] == [made["GrantId"]]
    assert kms.list_retirable_grants(RetiringPrincipal=ALICE)["Grants"][0]["GrantId"] \
        != made["GrantId"]
    # Those filters are only for callers in a service principal, and not both at once.
    refused_alone(server, kms.list_grants, "ValidationException",
                  "The GranteeServicePrincipal filter is only usable by callers in a service "
                  "principal.", KeyId=key_id, GranteeServicePrincipal=LOGS)
    refused_alone(server, kms.list_retirable_grants, "ValidationException",
                  "The RetiringServicePrincipal filter is only usable by callers in a service "
                  "principal.", RetiringServicePrincipal=LOGS)
    refused_alone(server, logs.list_grants, "ValidationException",
                  "You can specify either GranteePrincipal or GranteeServicePrincipal, but not "
                  "both.", KeyId=key_id, GranteeServicePrincipal=LOGS, GranteePrincipal=ALICE)
    refused_alone(server, as_service(server, service="sns.amazonaws.com").list_retirable_grants,
                  "AccessDeniedException", RetiringServicePrincipal=LOGS)

    # Retiring is the retiring principal's, and SourceArn does not apply to RetireGrant.
    seq = log_seq(server)
    as_service(server, source_arn=None).retire_grant(GrantToken=made["GrantToken"])
    assert log_seq(server) == seq + 2  # GrantRetired and the audit fact
    assert [g.get("GranteePrincipal") for g in kms.list_grants(KeyId=key_id)["Grants"]] \
        == [ALICE]


def test_a_malformed_service_header_is_refused_not_ignored(server: ServerProcess) -> None:
    for service, source_arn in (("logs", GROUP), (LOGS, "log-group:payments")):
        refused_alone(server, as_service(server, service, source_arn).list_keys,
                      "ValidationException")


def test_key_policies_see_the_service_grant_and_the_source_arn(
        server: ServerProcess, kms: Any) -> None:
    """kms:GranteeServicePrincipal and kms:GrantConstraintSourceArn on CreateGrant;
    aws:SourceArn and aws:SourceAccount on the service's own calls."""
    policy = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ROOT}, "NotAction": "kms:CreateGrant",
         "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:CreateGrant",
         "Resource": "*", "Condition": {"StringEquals": {
             "kms:GranteeServicePrincipal": LOGS, "kms:GrantConstraintSourceArn": GROUP}}},
        {"Effect": "Allow", "Principal": {"Service": LOGS}, "Action": "kms:Encrypt",
         "Resource": "*", "Condition": {"ArnLike": {"aws:SourceArn": GROUP.replace(ACCOUNT, "*")},
                                        "StringEquals": {"aws:SourceAccount": ACCOUNT}}}]})
    key_id = kms.create_key(Policy=policy)["KeyMetadata"]["KeyId"]
    denied = "AccessDeniedException"

    service_grant(kms, key_id, Operations=["Decrypt", "RetireGrant"])
    refused_alone(server, kms.create_grant, denied, KeyId=key_id,
                  GranteeServicePrincipal=LOGS, RetiringServicePrincipal=LOGS,
                  Operations=["Decrypt"], Constraints={"SourceArn": OTHER_GROUP})
    refused_alone(server, kms.create_grant, denied, KeyId=key_id, GranteePrincipal=ALICE,
                  Operations=["Decrypt"], Constraints={"SourceArn": GROUP})
    assert len(kms.list_grants(KeyId=key_id)["Grants"]) == 1
    blob = as_service(server).encrypt(KeyId=key_id, Plaintext=b"line")["CiphertextBlob"]
    assert as_service(server).decrypt(CiphertextBlob=blob)["Plaintext"] == b"line"
    refused_alone(server, as_service(server, source_arn=OTHER_GROUP).encrypt, denied,
                  KeyId=key_id, Plaintext=b"line")
    elsewhere = "arn:aws:logs:us-east-1:444455556666:log-group:payments"  # ArnLike matches
    refused_alone(server, as_service(server, source_arn=elsewhere).encrypt, denied,
                  KeyId=key_id, Plaintext=b"line")


ALICE_KEYS = ("AKIAALICE00000000001", "alice-secret-key")
ALLOW_ALL = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]})
CONFIG = f"""
account_id = "{ACCOUNT}"
[[principals]]
arn = "{ALICE}"
access_key_id = "{ALICE_KEYS[0]}"
secret_access_key = "{ALICE_KEYS[1]}"
policies = ['{ALLOW_ALL}']
"""


def write_config(tmp: Path) -> Path:
    path = tmp / "kms.toml"
    path.write_text(CONFIG)
    return path


secured = secured_fixture("service-principals", write_config)


def test_a_secured_node_ignores_the_dev_service_headers(secured: ServerProcess) -> None:
    alice: Any = client_for(secured.url, access_key=ALICE_KEYS[0], secret=ALICE_KEYS[1])
    key_id = alice.create_key()["KeyMetadata"]["KeyId"]
    service_grant(alice, key_id)
    posing: Any = client_for(secured.url, access_key=ALICE_KEYS[0], secret=ALICE_KEYS[1])
    posing.meta.events.register("before-sign.kms.*", headers(LOGS, GROUP))

    # Signed by alice, it is alice's call: the service filter is not hers to use.
    refused_alone(secured, posing.list_grants, "ValidationException",
                  "The GranteeServicePrincipal filter is only usable by callers in a service "
                  "principal.", KeyId=key_id, GranteeServicePrincipal=LOGS)
    assert posing.encrypt(KeyId=key_id, Plaintext=b"x")["KeyId"].endswith(key_id)


def test_a_service_principals_call_is_audited_as_cloudtrail_names_a_service(
        server: ServerProcess, kms: Any) -> None:
    """CloudTrail writes a service principal's own call with userIdentity
    ``{"type": "AWSService", "invokedBy": "<service>"}`` and the service as its source."""
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    service_grant(kms, key_id)
    made = as_service(server).encrypt(KeyId=key_id, Plaintext=b"line")
    request_id = made["ResponseMetadata"]["RequestId"]
    [record] = [r for r in read_all(server.url) if r["requestID"] == request_id]
    assert record["userIdentity"] == {"type": "AWSService", "invokedBy": LOGS}
    assert (record["sourceIPAddress"], record["userAgent"]) == (LOGS, LOGS)
    assert (record["eventName"], record["eventType"]) == ("Encrypt", "AwsApiCall")
