"""Asymmetric key specs through a real node and boto3: CreateKey/DescribeKey report exactly
the algorithms of each (spec, usage), the usages a spec does not allow are refused, and
GetPublicKey returns a DER SPKI of the spec.

The node is reset once for this module and each key it needs is created once: the
per-test-reset `kms` fixture is deliberately not used here. Expected values come from the
reference (kms_api.md §4.4 and §5.1) via tests/support/asymmetric.py, not from the server's
own tables.
"""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization

from tests.support.asymmetric import (
    AGREE,
    ALLOWED,
    FIELD,
    FORBIDDEN,
    MAC,
    MESSAGE,
    NO_CMK_SPEC,
    PAIRS,
    SIGN,
    PublicKeys,
    assert_public_key_of_spec,
    create_keys,
    offline_verify,
    spec_params,
    spki,
)
from tests.support.expect import refused


@pytest.fixture(scope="module")
def keys(client: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return create_keys(client, PAIRS)


@pytest.fixture(scope="module")
def symmetric(client: Any) -> dict[str, Any]:
    md: dict[str, Any] = client.create_key(Description="symmetric")["KeyMetadata"]
    return md


public_key = PublicKeys()


# -- CreateKey / DescribeKey --------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "usage"), PAIRS)
def test_create_and_describe_report_exactly_the_algorithms_of_the_usage(
        client: Any, keys: dict[tuple[str, str], dict[str, Any]], spec: str, usage: str) -> None:
    created = keys[(spec, usage)]
    described = client.describe_key(KeyId=created["KeyId"])["KeyMetadata"]
    for md in (created, described):
        assert md["KeySpec"] == spec
        assert md["KeyUsage"] == usage
        assert md["KeyState"] == "Enabled" and md["Enabled"] is True
        assert md["Origin"] == "AWS_KMS"
        assert md["KeyManager"] == "CUSTOMER"
        assert md["Description"] == f"{spec} {usage}"
        field = FIELD[usage]
        assert sorted(md[field]) == sorted(ALLOWED[spec][usage])
        assert len(md[field]) == len(set(md[field]))
        for other in set(FIELD.values()) - {field}:
            assert other not in md, other
        if spec in NO_CMK_SPEC:
            assert "CustomerMasterKeySpec" not in md
        else:
            assert md["CustomerMasterKeySpec"] == spec
    assert described == created


@pytest.mark.parametrize("spec", list(ALLOWED))
def test_asymmetric_spec_without_key_usage_is_refused(client: Any, spec: str) -> None:
    refused(client.create_key, "ValidationException",
            "You must specify a KeyUsage value for all KMS keys except for symmetric "
            "encryption keys.", KeySpec=spec)


@pytest.mark.parametrize(("spec", "usage"), [*FORBIDDEN, ("SYMMETRIC_DEFAULT", SIGN),
                                             ("SYMMETRIC_DEFAULT", AGREE),
                                             ("SYMMETRIC_DEFAULT", MAC)])
def test_usage_the_spec_does_not_allow_is_refused(client: Any, spec: str, usage: str) -> None:
    before = {k["KeyId"] for k in client.list_keys(Limit=1000)["Keys"]}
    response = refused(client.create_key, "ValidationException", KeySpec=spec, KeyUsage=usage)
    assert response["Error"]["Message"]
    assert {k["KeyId"] for k in client.list_keys(Limit=1000)["Keys"]} == before  # nothing made


def test_deprecated_customer_master_key_spec_creates_the_same_kind_of_key(client: Any) -> None:
    md = client.create_key(CustomerMasterKeySpec="ECC_NIST_P256",
                           KeyUsage=SIGN)["KeyMetadata"]
    assert (md["KeySpec"], md["CustomerMasterKeySpec"]) == ("ECC_NIST_P256", "ECC_NIST_P256")
    assert md["SigningAlgorithms"] == ["ECDSA_SHA_256"]


# -- GetPublicKey -------------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "usage"), spec_params(PAIRS))
def test_get_public_key_returns_a_der_spki_of_the_spec_and_the_usage_algorithms(
        client: Any, keys: dict[tuple[str, str], dict[str, Any]], spec: str, usage: str) -> None:
    md = keys[(spec, usage)]
    out = client.get_public_key(KeyId=md["KeyId"])
    assert out["KeyId"] == md["Arn"]
    assert out["KeySpec"] == spec
    assert out["KeyUsage"] == usage
    assert sorted(out[FIELD[usage]]) == sorted(ALLOWED[spec][usage])
    for other in set(FIELD.values()) - {FIELD[usage]}:
        assert other not in out, other
    if spec in NO_CMK_SPEC:
        assert "CustomerMasterKeySpec" not in out
    else:
        assert out["CustomerMasterKeySpec"] == spec
    public = serialization.load_der_public_key(out["PublicKey"])
    assert_public_key_of_spec(public, spec)
    assert spki(public) == out["PublicKey"]  # canonical DER, nothing trailing
    assert len(out["PublicKey"]) <= 8192
    assert client.get_public_key(KeyId=md["Arn"])["PublicKey"] == out["PublicKey"]  # stable


def test_get_public_key_and_sign_accept_an_alias(
        client: Any, keys: dict[tuple[str, str], dict[str, Any]]) -> None:
    md = keys[("ECC_NIST_P256", SIGN)]
    client.create_alias(AliasName="alias/p256-signer", TargetKeyId=md["KeyId"])
    for ref in ("alias/p256-signer", "arn:aws:kms:us-east-1:111122223333:alias/p256-signer"):
        out = client.get_public_key(KeyId=ref)
        assert out["KeyId"] == md["Arn"]
        sig = client.sign(KeyId=ref, Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_256")
        assert sig["KeyId"] == md["Arn"]
        offline_verify(serialization.load_der_public_key(out["PublicKey"]), "ECDSA_SHA_256",
                       MESSAGE, sig["Signature"])


def test_get_public_key_on_a_symmetric_key_is_refused(
        client: Any, symmetric: dict[str, Any]) -> None:
    # The reference lists both InvalidKeyUsageException and UnsupportedOperationException
    # for GetPublicKey and does not say which a symmetric key gets. This node answers
    # InvalidKeyUsageException naming the key spec; by the error descriptions (§3:
    # UnsupportedOperationException = "the resource is not valid for the operation") AWS
    # more likely answers UnsupportedOperationException. Unconfirmed, so both are accepted.
    with pytest.raises(ClientError) as info:
        client.get_public_key(KeyId=symmetric["KeyId"])
    error = info.value.response["Error"]
    assert error["Code"] in ("InvalidKeyUsageException", "UnsupportedOperationException")
    assert symmetric["Arn"] in error["Message"]
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400

