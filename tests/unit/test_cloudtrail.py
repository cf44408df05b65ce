"""CloudTrail records from audit facts: the fields AWS logs, and never a secret."""

from __future__ import annotations

import msgpack

from kms.audit.cloudtrail import cloudtrail_record, loggable_params, loggable_response
from kms.audit.ids import event_id
from kms.domain import events as ev

ACCOUNT = "111122223333"
ARN = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def fact(**kw: object) -> ev.ApiCallRecorded:
    base: dict[str, object] = dict(
        request_id="req-1", operation="Encrypt", principal_arn=f"arn:aws:iam::{ACCOUNT}:root",
        account=ACCOUNT, access_key_id="AKIAEXAMPLE", source_ip="127.0.0.1",
        user_agent="Boto3/1.0", read_only=True, principal_type="Root", user_id=ACCOUNT,
        params={"keyId": ARN, "encryptionContext": {"Dept": "Eng"}}, resources=(ARN,),
        additional={"keyMaterialId": "ab" * 32})
    base.update(kw)
    return ev.ApiCallRecorded(**base)  # type: ignore[arg-type]


def record(f: ev.ApiCallRecorded, account: str = ACCOUNT) -> dict:
    return cloudtrail_record(f, seq=7, at_ms=1_747_773_976_123, region="us-east-1",
                             recipient_account=account)


def test_encrypt_record_has_awss_fields() -> None:
    r = record(fact())
    assert r["eventVersion"] == "1.11"
    assert r["eventTime"] == "2025-05-20T20:46:16Z"
    assert r["eventSource"] == "kms.amazonaws.com" and r["eventName"] == "Encrypt"
    assert r["userIdentity"] == {"type": "Root", "principalId": ACCOUNT,
                                 "arn": f"arn:aws:iam::{ACCOUNT}:root", "accountId": ACCOUNT,
                                 "accessKeyId": "AKIAEXAMPLE"}
    assert r["requestParameters"] == {"keyId": ARN, "encryptionContext": {"Dept": "Eng"},
                                      "encryptionAlgorithm": "SYMMETRIC_DEFAULT"}
    assert r["responseElements"] is None
    assert r["additionalEventData"] == {"keyMaterialId": "ab" * 32}
    assert r["requestID"] == "req-1" and r["eventID"] == event_id("req-1", 7)
    assert r["readOnly"] is True
    assert r["resources"] == [{"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": ARN}]
    assert (r["eventType"], r["managementEvent"], r["eventCategory"]) == \
        ("AwsApiCall", True, "Management")
    assert r["recipientAccountId"] == ACCOUNT and "sharedEventID" not in r
    assert "errorCode" not in r


def test_decrypt_always_names_its_algorithm() -> None:
    r = record(fact(operation="Decrypt", params={"keyId": ARN}))
    assert r["requestParameters"]["encryptionAlgorithm"] == "SYMMETRIC_DEFAULT"


def test_create_key_logs_awss_defaults() -> None:
    r = record(fact(operation="CreateKey", read_only=False, params={}, additional={}))
    assert r["requestParameters"] == {
        "keySpec": "SYMMETRIC_DEFAULT", "customerMasterKeySpec": "SYMMETRIC_DEFAULT",
        "keyUsage": "ENCRYPT_DECRYPT", "origin": "AWS_KMS",
        "bypassPolicyLockoutSafetyCheck": False}


def test_failed_call_carries_error() -> None:
    r = record(fact(error_code="DisabledException", error_message=f"{ARN} is disabled."))
    assert (r["errorCode"], r["errorMessage"]) == ("DisabledException", f"{ARN} is disabled.")


def test_assumed_role_and_iam_user_identities() -> None:
    role = fact(principal_type="AssumedRole", user_id="AROAEXAMPLE:sess",
                principal_arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/Admin/sess")
    ident = record(role)["userIdentity"]
    assert ident["type"] == "AssumedRole" and ident["principalId"] == "AROAEXAMPLE:sess"
    assert ident["sessionContext"]["sessionIssuer"] == {
        "type": "Role", "principalId": "AROAEXAMPLE", "arn": f"arn:aws:iam::{ACCOUNT}:role/Admin",
        "accountId": ACCOUNT, "userName": "Admin"}
    user = fact(principal_type="IAMUser", user_id="AIDAEXAMPLE",
                principal_arn=f"arn:aws:iam::{ACCOUNT}:user/Alice")
    assert record(user)["userIdentity"]["userName"] == "Alice"


def test_cross_account_call_names_the_callers_account_and_a_shared_id() -> None:
    other = fact(account="444455556666", principal_type="IAMUser", user_id="AIDAOTHER",
                 principal_arn="arn:aws:iam::444455556666:user/Bob")
    r = record(other)
    assert r["userIdentity"]["type"] == "AWSAccount"
    assert r["userIdentity"]["accountId"] == "444455556666"
    assert r["recipientAccountId"] == ACCOUNT
    assert r["sharedEventID"] == record(other)["sharedEventID"] != r["eventID"]


def test_unauthenticated_call_is_unknown_identity() -> None:
    r = record(fact(principal_arn="anonymous", account="", principal_type="",
                    error_code="InvalidSignatureException", error_message="bad"))
    assert r["userIdentity"] == {"type": "Unknown", "accessKeyId": "AKIAEXAMPLE"}


def test_service_event_as_aws_logs_it() -> None:
    f = fact(operation="RotateKey", event_type="AwsServiceEvent", principal_arn="AWS Internal",
             account="", access_key_id="", source_ip="", user_agent="", read_only=False,
             params={"keyId": ARN}, additional={})
    r = record(f)
    assert r["userIdentity"] == {"accountId": ACCOUNT, "invokedBy": "AWS Internal"}
    assert r["sourceIPAddress"] == r["userAgent"] == "AWS Internal"
    assert r["requestParameters"] is None and r["responseElements"] is None
    assert r["serviceEventDetails"] == {"keyId": ARN.rsplit("/", 1)[1],
                                        "rotationType": "AUTOMATIC"}
    assert r["eventType"] == "AwsServiceEvent"


def test_create_key_response_elements_use_awss_date_form() -> None:
    resp = loggable_response("CreateKey", {"KeyMetadata": {"KeyId": "k", "Arn": ARN,
                                                           "CreationDate": 1660169907.0}})
    r = record(fact(operation="CreateKey", read_only=False, response=resp))
    assert r["responseElements"] == {"keyMetadata": {"keyId": "k", "arn": ARN,
                                                     "creationDate": "Aug 10, 2022, 10:18:27 PM"}}


def test_sensitive_and_blob_members_never_logged() -> None:
    assert loggable_params("Encrypt", {"KeyId": "k", "Plaintext": b"secret"}) == {"keyId": "k"}
    assert loggable_params("CreateCustomKeyStore", {
        "CustomKeyStoreName": "n", "KeyStorePassword": "pw",
        "XksProxyAuthenticationCredential": {"AccessKeyId": "a", "RawSecretAccessKey": "s"},
    }) == {"customKeyStoreName": "n", "xksProxyAuthenticationCredential": {}}
    grant = loggable_params("CreateGrant", {
        "KeyId": "k", "GranteePrincipal": "p", "Operations": ["Decrypt"],
        "Constraints": {"EncryptionContextSubset": {"MyKey": "v"}}})
    assert grant["constraints"] == {"encryptionContextSubset": {"MyKey": "v"}}
    assert loggable_response("CreateGrant", {"GrantToken": "t0ken", "GrantId": "g"}) == \
        {"grantId": "g"}
    assert "grantTokens" not in loggable_params("Encrypt", {"KeyId": "k", "GrantTokens": ["t"]})
    assert loggable_response("GenerateDataKey", {"Plaintext": b"k", "KeyId": "x"}) == {}
    assert loggable_response("GetParametersForImport", {"PublicKey": b"p"}) == {}


def test_old_facts_decode_with_defaults() -> None:
    body = msgpack.packb({"request_id": "r", "operation": "Encrypt", "principal_arn": "a",
                          "account": ACCOUNT, "access_key_id": "", "source_ip": "",
                          "user_agent": "", "read_only": True})
    old = ev.decode("ApiCallRecorded", body)
    assert isinstance(old, ev.ApiCallRecorded)
    assert (old.principal_type, old.user_id, old.response) == ("", "", {})
    assert record(old)["userIdentity"]["type"] == "Root"


def test_a_cross_account_fact_gives_the_owner_and_the_caller_a_record() -> None:
    from kms.audit.cloudtrail import fact_records, recipients

    other = "444455556666"
    f = fact(principal_arn=f"arn:aws:iam::{other}:user/olga", account=other,
             principal_type="IAMUser", user_id="AIDAOLGA")
    assert recipients(f, ACCOUNT) == [ACCOUNT, other]
    owner, caller = fact_records(f, seq=7, at_ms=1_747_773_976_123, region="us-east-1",
                                 default_account=ACCOUNT)
    assert (owner["recipientAccountId"], caller["recipientAccountId"]) == (ACCOUNT, other)
    assert owner["eventID"] == event_id("req-1", 7) != caller["eventID"]
    assert owner["sharedEventID"] == caller["sharedEventID"]
    assert owner["userIdentity"]["type"] == "AWSAccount"
    assert caller["userIdentity"]["arn"] == f"arn:aws:iam::{other}:user/olga"
    same = fact_records(fact(), seq=7, at_ms=0, region="us-east-1", default_account=ACCOUNT)
    assert len(same) == 1 and "sharedEventID" not in same[0]
    anonymous = fact(principal_arn="anonymous", account="", resources=())
    assert recipients(anonymous, ACCOUNT) == [ACCOUNT]
