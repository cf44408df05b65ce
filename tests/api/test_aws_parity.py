"""AWS's exact answers, from its recorded responses and documentation, through boto3: tag
errors, whole values in validation errors, IncorrectKeyException before key usage, DryRun,
KeyUsage/KeySpec pairs, DeriveSharedSecret's empty message, alias characters, and the
predefined ``alias/aws/*`` names in ListAliases. Every refusal changes nothing: the log
grows by the call's audit fact only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kms.api.validation import load_botocore_model
from kms.service.core import AWS_MANAGED_SERVICES, OPERATIONS
from tests.support.expect import refused

REGION = "us-east-1"
ACCOUNT = "111122223333"
RESERVED = "Tags beginning with aws: are reserved"
INCORRECT_KEY = ("The key ID in the request does not identify a CMK that can perform this "
                 "operation.")
DRY_RUN = "The request would have succeeded, but the DryRun option is set."


def log_seq(server: Any) -> int:
    seq = server.health()["log_seq"]
    assert isinstance(seq, int)
    return seq


def refused_alone(server: Any, call: Any, code: str, message: str | None = None,
                  status: int = 400, **params: Any) -> dict[str, Any]:
    """Refused with AWS's code, message and status, and nothing but the audit fact appended."""
    seq = log_seq(server)
    response = refused(call, code, message, status, **params)
    attempts = 1 + response["ResponseMetadata"].get("RetryAttempts", 0)  # botocore retries
    assert log_seq(server) == seq + attempts, "a refused call appends its audit fact only"
    return response


def tag_list(*keys: str) -> list[dict[str, str]]:
    return [{"TagKey": k, "TagValue": "v"} for k in keys]


def tags_of(kms: Any, key_id: str) -> dict[str, str]:
    return {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=key_id)["Tags"]}


def peer_public_key() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# -- Tags ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, message", [
    (tag_list("env", "team", "env"), "Duplicate tag keys"),
    (tag_list(*(f"t{i}" for i in range(51))), "Too many tags"),
    (tag_list("aws:createdBy"), RESERVED),
    (tag_list("AWS:x"), RESERVED),
    (tag_list("ok", "Aws:Team"), RESERVED),
])
def test_create_key_tag_errors_are_aws_words_and_create_nothing(
        server: Any, raw_kms: Any, bad: list[dict[str, str]], message: str) -> None:
    refused_alone(server, raw_kms.create_key, "TagException", message, Tags=bad)
    assert raw_kms.list_keys()["Keys"] == []


@pytest.mark.parametrize("bad, code, message", [
    (tag_list("a", "a"), "TagException", "Duplicate tag keys"),
    (tag_list(*(f"t{i}" for i in range(51))), "TagException", "Too many tags"),
    (tag_list("AWS:x"), "TagException", RESERVED),
    (tag_list("new", "aWs:lower"), "TagException", RESERVED),
])
def test_tag_resource_errors_leave_the_tags_as_they_were(
        server: Any, raw_kms: Any, bad: list[dict[str, str]], code: str, message: str) -> None:
    key_id = raw_kms.create_key(Tags=tag_list("keep"))["KeyMetadata"]["KeyId"]
    refused_alone(server, raw_kms.tag_resource, code, message, KeyId=key_id, Tags=bad)
    assert tags_of(raw_kms, key_id) == {"keep": "v"}


def test_tag_resource_past_50_on_the_key_is_the_tag_quota(server: Any, kms: Any) -> None:
    key_id = kms.create_key(Tags=tag_list(*(f"t{i}" for i in range(49))))["KeyMetadata"]["KeyId"]
    refused_alone(server, kms.tag_resource, "LimitExceededException", "Too many tags",
                  KeyId=key_id, Tags=tag_list("x", "y"))
    assert len(tags_of(kms, key_id)) == 49
    kms.tag_resource(KeyId=key_id, Tags=tag_list("x", "t0"))  # 50, one of them overwritten
    assert len(tags_of(kms, key_id)) == 50
    full = kms.create_key(Tags=tag_list(*(f"t{i}" for i in range(50))))["KeyMetadata"]["KeyId"]
    refused_alone(server, kms.tag_resource, "LimitExceededException", "Too many tags",
                  KeyId=full, Tags=tag_list("one-more"))
    assert len(tags_of(kms, full)) == 50


def test_untag_resource_refuses_the_reserved_prefix_in_any_case(server: Any, kms: Any) -> None:
    key_id = kms.create_key(Tags=tag_list("keep"))["KeyMetadata"]["KeyId"]
    refused_alone(server, kms.untag_resource, "TagException", RESERVED,
                  KeyId=key_id, TagKeys=["AWS:createdBy"])
    assert tags_of(kms, key_id) == {"keep": "v"}


# -- Validation messages ----------------------------------------------------------------------
def test_a_129_character_tag_key_is_echoed_in_full(server: Any, raw_kms: Any) -> None:
    key_id = raw_kms.create_key()["KeyMetadata"]["KeyId"]
    long_key = "k" * 129
    refused_alone(server, raw_kms.tag_resource, "ValidationException",
                  f"1 validation error detected: Value '{long_key}' at 'tags.1.member.tagKey' "
                  "failed to satisfy constraint: Member must have length less than or equal "
                  "to 128", KeyId=key_id, Tags=[{"TagKey": long_key, "TagValue": "v"}])
    assert tags_of(raw_kms, key_id) == {}


def test_mac_algorithm_enum_is_listed_in_aws_order(server: Any, raw_kms: Any) -> None:
    key_id = raw_kms.create_key(KeySpec="HMAC_256",
                                KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["KeyId"]
    refused_alone(server, raw_kms.generate_mac, "ValidationException",
                  "1 validation error detected: Value 'HMAC_SHA_1' at 'macAlgorithm' failed to "
                  "satisfy constraint: Member must satisfy enum value set: "
                  "[HMAC_SHA_384, HMAC_SHA_256, HMAC_SHA_224, HMAC_SHA_512]",
                  KeyId=key_id, Message=b"m", MacAlgorithm="HMAC_SHA_1")


# -- IncorrectKeyException --------------------------------------------------------------------
def test_naming_another_key_than_the_ciphertexts_is_incorrect_key_before_usage(
        server: Any, kms: Any) -> None:
    owner = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=owner, Plaintext=b"secret")["CiphertextBlob"]
    others = [kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"] for spec, usage in (
        ("HMAC_256", "GENERATE_VERIFY_MAC"), ("ECC_NIST_P256", "SIGN_VERIFY"),
        ("ECC_NIST_P256", "KEY_AGREEMENT"), ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"))]

    for other in others:
        for named in (other["KeyId"], other["Arn"]):
            refused_alone(server, kms.decrypt, "IncorrectKeyException", INCORRECT_KEY,
                          CiphertextBlob=blob, KeyId=named)
            refused_alone(server, kms.re_encrypt, "IncorrectKeyException", INCORRECT_KEY,
                          CiphertextBlob=blob, SourceKeyId=named, DestinationKeyId=owner)
    # naming the right key, or none, still opens it
    assert kms.decrypt(CiphertextBlob=blob, KeyId=owner)["Plaintext"] == b"secret"
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"secret"
    # input that names no other key still meets the named key's usage check
    hmac_key = others[0]
    refused(kms.decrypt, "InvalidKeyUsageException",
            f"{hmac_key['Arn']} key usage is GENERATE_VERIFY_MAC which is not valid for Decrypt.",
            CiphertextBlob=b"x" * 64, KeyId=hmac_key["KeyId"])


# -- DryRun -----------------------------------------------------------------------------------
DRY_RUNS: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "Encrypt": lambda kms, k: kms.encrypt(KeyId=k["sym"], Plaintext=b"p", DryRun=True),
    "Decrypt": lambda kms, k: kms.decrypt(CiphertextBlob=k["blob"], DryRun=True),
    "ReEncrypt": lambda kms, k: kms.re_encrypt(CiphertextBlob=k["blob"],
                                               DestinationKeyId=k["sym"], DryRun=True),
    "GenerateDataKey": lambda kms, k: kms.generate_data_key(KeyId=k["sym"], KeySpec="AES_256",
                                                            DryRun=True),
    "GenerateDataKeyWithoutPlaintext": lambda kms, k: kms.generate_data_key_without_plaintext(
        KeyId=k["sym"], NumberOfBytes=16, DryRun=True),
    "GenerateDataKeyPair": lambda kms, k: kms.generate_data_key_pair(
        KeyId=k["sym"], KeyPairSpec="ECC_NIST_P256", DryRun=True),
    "GenerateDataKeyPairWithoutPlaintext":
        lambda kms, k: kms.generate_data_key_pair_without_plaintext(
            KeyId=k["sym"], KeyPairSpec="ECC_NIST_P256", DryRun=True),
    "GenerateMac": lambda kms, k: kms.generate_mac(KeyId=k["hmac"], Message=b"m",
                                                   MacAlgorithm="HMAC_SHA_256", DryRun=True),
    "VerifyMac": lambda kms, k: kms.verify_mac(KeyId=k["hmac"], Message=b"m", Mac=k["mac"],
                                               MacAlgorithm="HMAC_SHA_256", DryRun=True),
    "Sign": lambda kms, k: kms.sign(KeyId=k["sign"], Message=b"m",
                                    SigningAlgorithm="ECDSA_SHA_256", DryRun=True),
    "Verify": lambda kms, k: kms.verify(KeyId=k["sign"], Message=b"m", Signature=k["signature"],
                                        SigningAlgorithm="ECDSA_SHA_256", DryRun=True),
    "DeriveSharedSecret": lambda kms, k: kms.derive_shared_secret(
        KeyId=k["agree"], KeyAgreementAlgorithm="ECDH", PublicKey=peer_public_key(),
        DryRun=True),
    "Encapsulate": lambda kms, k: kms.encapsulate(KeyId=k["kem"], EncapsulationAlgorithm="ML_KEM",
                                                  DryRun=True),
    "Decapsulate": lambda kms, k: kms.decapsulate(
        KeyId=k["kem"], SharedSecretCiphertextBlob=k["encapsulated"],
        EncapsulationAlgorithm="ML_KEM", DryRun=True),
    "CreateGrant": lambda kms, k: kms.create_grant(
        KeyId=k["sym"], GranteePrincipal=k["grantee"], Operations=["Decrypt"], DryRun=True),
    "RetireGrant": lambda kms, k: kms.retire_grant(KeyId=k["sym"], GrantId=k["grant"],
                                                   DryRun=True),
    "RevokeGrant": lambda kms, k: kms.revoke_grant(KeyId=k["sym"], GrantId=k["grant"],
                                                   DryRun=True),
}


@pytest.fixture
def dry_run_keys(kms: Any) -> dict[str, Any]:
    sym = kms.create_key()["KeyMetadata"]["KeyId"]
    hmac_key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
    sign = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    agree = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="KEY_AGREEMENT")
    kem = kms.create_key(KeySpec="ML_KEM_768", KeyUsage="ENCAPSULATE_DECAPSULATE")
    keys = {"sym": sym, "hmac": hmac_key["KeyMetadata"]["KeyId"],
            "sign": sign["KeyMetadata"]["KeyId"], "agree": agree["KeyMetadata"]["KeyId"],
            "kem": kem["KeyMetadata"]["KeyId"]}
    keys["encapsulated"] = kms.encapsulate(
        KeyId=keys["kem"], EncapsulationAlgorithm="ML_KEM")["SharedSecretCiphertextBlob"]
    keys["blob"] = kms.encrypt(KeyId=sym, Plaintext=b"p")["CiphertextBlob"]
    keys["mac"] = kms.generate_mac(KeyId=keys["hmac"], Message=b"m",
                                   MacAlgorithm="HMAC_SHA_256")["Mac"]
    keys["signature"] = kms.sign(KeyId=keys["sign"], Message=b"m",
                                 SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    account = kms.describe_key(KeyId=sym)["KeyMetadata"]["AWSAccountId"]
    keys["grantee"] = f"arn:aws:iam::{account}:root"
    keys["grant"] = kms.create_grant(KeyId=sym, GranteePrincipal=keys["grantee"],
                                     Operations=["Encrypt"])["GrantId"]
    return keys


@pytest.mark.parametrize("operation", list(DRY_RUNS))
def test_every_operation_that_takes_dry_run_answers_as_aws(
        server: Any, kms: Any, dry_run_keys: dict[str, Any], operation: str) -> None:
    model = load_botocore_model()
    takes = {name for name, op in model["operations"].items()
             if "DryRun" in model["shapes"][op["input"]["shape"]].get("members", {})}
    assert takes & set(OPERATIONS) <= set(DRY_RUNS)  # every implemented one is here
    refused_alone(server, lambda: DRY_RUNS[operation](kms, dry_run_keys),
                  "DryRunOperationException", DRY_RUN, 400)


# -- CreateKey: KeyUsage x KeySpec ------------------------------------------------------------
# Reference §5.1 (and the ML-KEM specs' only usage, ENCAPSULATE_DECAPSULATE)
ALLOWED = {
    "SYMMETRIC_DEFAULT": {"ENCRYPT_DECRYPT"},
    **{f"HMAC_{n}": {"GENERATE_VERIFY_MAC"} for n in (224, 256, 384, 512)},
    **{f"RSA_{n}": {"ENCRYPT_DECRYPT", "SIGN_VERIFY"} for n in (2048, 3072, 4096)},
    **{f"ECC_NIST_P{n}": {"SIGN_VERIFY", "KEY_AGREEMENT"} for n in (256, 384, 521)},
    "ECC_SECG_P256K1": {"SIGN_VERIFY"},
    "ECC_NIST_EDWARDS25519": {"SIGN_VERIFY"},
    **{f"ML_DSA_{n}": {"SIGN_VERIFY"} for n in (44, 65, 87)},
    **{f"ML_KEM_{n}": {"ENCAPSULATE_DECAPSULATE"} for n in (512, 768, 1024)},
    "SM2": {"ENCRYPT_DECRYPT", "SIGN_VERIFY", "KEY_AGREEMENT"},
}
USAGES = ("SIGN_VERIFY", "ENCRYPT_DECRYPT", "GENERATE_VERIFY_MAC", "KEY_AGREEMENT",
          "ENCAPSULATE_DECAPSULATE")
INCOMPATIBLE = [(spec, usage) for spec, allowed in ALLOWED.items() for usage in USAGES
                if usage not in allowed]


def test_key_agreement_is_not_compatible_with_rsa_2048(server: Any, kms: Any) -> None:
    refused_alone(server, kms.create_key, "ValidationException",
                  "KeyUsage KEY_AGREEMENT is not compatible with KeySpec RSA_2048",
                  KeySpec="RSA_2048", KeyUsage="KEY_AGREEMENT")
    assert kms.list_keys()["Keys"] == []


def test_every_incompatible_usage_and_spec_is_refused_with_aws_words(
        server: Any, kms: Any) -> None:
    shapes = load_botocore_model()["shapes"]
    assert set(ALLOWED) == set(shapes["KeySpec"]["enum"])
    assert set(USAGES) == set(shapes["KeyUsageType"]["enum"])
    for spec, usage in INCOMPATIBLE:
        seq = log_seq(server)
        refused(kms.create_key, "ValidationException",
                f"KeyUsage {usage} is not compatible with KeySpec {spec}",
                KeySpec=spec, KeyUsage=usage)
        assert log_seq(server) == seq + 1, (spec, usage)
    assert kms.list_keys()["Keys"] == []


# -- DeriveSharedSecret -----------------------------------------------------------------------
@pytest.mark.parametrize("public_key", [
    b"not a public key at all",
    b"\x30\x03\x02\x01\x00",  # DER, but not an SPKI
    ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(  # another curve
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
], ids=["garbage", "not-spki", "other-curve"])
def test_an_invalid_public_key_is_a_validation_error_with_an_empty_message(
        server: Any, kms: Any, public_key: bytes) -> None:
    key_id = kms.create_key(KeySpec="ECC_NIST_P256",
                            KeyUsage="KEY_AGREEMENT")["KeyMetadata"]["KeyId"]
    response = refused_alone(server, kms.derive_shared_secret, "ValidationException", "",
                             KeyId=key_id, KeyAgreementAlgorithm="ECDH", PublicKey=public_key)
    assert response["Error"]["Message"] == ""


# -- Alias names ------------------------------------------------------------------------------
def test_a_colon_in_a_new_alias_name_is_refused(server: Any, kms: Any) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    refused_alone(server, kms.create_alias, "ValidationException",
                  "alias/my:alias contains invalid characters for an alias",
                  AliasName="alias/my:alias", TargetKeyId=key_id)
    kms.create_alias(AliasName="alias/mine", TargetKeyId=key_id)
    refused_alone(server, kms.update_alias, "ValidationException",
                  "alias/mine:v2 contains invalid characters for an alias",
                  AliasName="alias/mine:v2", TargetKeyId=key_id)
    customer = [a["AliasName"] for a in kms.list_aliases()["Aliases"]
                if not a["AliasName"].startswith("alias/aws/")]
    assert customer == ["alias/mine"]
    for accepted in ("alias/my-alias_/", "alias/Team_1/app-2/prod"):
        kms.create_alias(AliasName=accepted, TargetKeyId=key_id)


# -- ListAliases: AWS's predefined aliases ----------------------------------------------------
def predefined(kms: Any) -> dict[str, dict[str, Any]]:
    return {a["AliasName"]: a for a in kms.list_aliases(Limit=100)["Aliases"]
            if a["AliasName"].startswith("alias/aws/")}


def test_predefined_aliases_are_listed_with_name_and_arn_only(kms: Any) -> None:
    listed = predefined(kms)
    assert len(listed) == len(AWS_MANAGED_SERVICES)
    assert {"alias/aws/s3", "alias/aws/ebs", "alias/aws/lambda", "alias/aws/rds"} <= set(listed)
    for name, entry in listed.items():
        assert entry == {"AliasName": name, "AliasArn": f"arn:aws:kms:{REGION}:{ACCOUNT}:{name}"}
    assert kms.list_keys()["Keys"] == []  # listing them creates no key


def test_a_used_predefined_alias_shows_its_aws_managed_key(kms: Any) -> None:
    kms.describe_key(KeyId="alias/aws/s3")  # a first use creates it
    md = kms.describe_key(KeyId="alias/aws/s3")["KeyMetadata"]
    listed = predefined(kms)
    s3 = listed.pop("alias/aws/s3")
    assert s3["TargetKeyId"] == md["KeyId"]
    assert s3["LastUpdatedDate"] >= s3["CreationDate"]
    assert all("TargetKeyId" not in entry for entry in listed.values())
    assert len(listed) == len(AWS_MANAGED_SERVICES) - 1
    assert [a["AliasName"] for a in kms.list_aliases(KeyId=md["KeyId"])["Aliases"]] == [
        "alias/aws/s3"]
    # filtered by a customer key, the unused predefined names do not appear
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/app", TargetKeyId=key_id)
    assert [a["AliasName"] for a in kms.list_aliases(KeyId=key_id)["Aliases"]] == ["alias/app"]


def test_pages_walk_customer_and_predefined_aliases_once_each(kms: Any) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    mine = ["alias/alpha", "alias/aws-like", "alias/zeta", "alias/b/c"]
    for name in mine:
        kms.create_alias(AliasName=name, TargetKeyId=key_id)
    everything = sorted(mine + [f"alias/aws/{s}" for s in AWS_MANAGED_SERVICES])

    seen: list[str] = []
    params: dict[str, Any] = {"Limit": 7}
    while True:
        page = kms.list_aliases(**params)
        assert len(page["Aliases"]) <= 7
        seen += [a["AliasName"] for a in page["Aliases"]]
        if not page["Truncated"]:
            assert "NextMarker" not in page
            break
        assert len(page["Aliases"]) == 7
        params["Marker"] = page["NextMarker"]
    assert seen == everything
    whole = kms.list_aliases()  # the default Limit of 50 holds them all
    assert whole["Truncated"] is False
    assert [a["AliasName"] for a in whole["Aliases"]] == everything
