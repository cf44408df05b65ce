"""RSAES-OAEP Encrypt/Decrypt and ReEncrypt with RSA keys through a real node and boto3:
offline ciphertexts decrypt, the plaintext limits per (spec, algorithm), what an RSA key
refuses (encryption context, a missing or symmetric algorithm), tampered ciphertexts, and
ReEncrypt from RSA to a symmetric key and back.

The node is reset once for this module and each key it needs is created once: the
per-test-reset `kms` fixture is deliberately not used here. Expected values come from the
reference (kms_api.md §4.4 and §5.1) via tests/support/asymmetric.py, not from the server's
own tables.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.asymmetric import (
    ENCRYPT,
    OAEP_LIMITS,
    RSA_BITS,
    SIGN,
    PublicKeys,
    create_keys,
    flipped,
    oaep,
)
from tests.support.expect import refused


@pytest.fixture(scope="module")
def keys(client: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return create_keys(client, [*((s, ENCRYPT) for s in RSA_BITS), ("RSA_2048", SIGN)])


@pytest.fixture(scope="module")
def symmetric(client: Any) -> dict[str, Any]:
    md: dict[str, Any] = client.create_key(Description="symmetric")["KeyMetadata"]
    return md


public_key = PublicKeys()


# -- RSAES-OAEP -----------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "algorithm"), list(OAEP_LIMITS))
def test_offline_oaep_ciphertext_decrypts_in_the_service(
        client: Any, keys: dict[tuple[str, str], dict[str, Any]], spec: str,
        algorithm: str) -> None:
    md = keys[(spec, ENCRYPT)]
    public = public_key(client, md)
    for plaintext in (b"x", os.urandom(OAEP_LIMITS[(spec, algorithm)])):
        ciphertext = public.encrypt(plaintext, oaep(algorithm))
        out = client.decrypt(KeyId=md["KeyId"], CiphertextBlob=ciphertext,
                             EncryptionAlgorithm=algorithm)
        assert out["Plaintext"] == plaintext
        assert out["KeyId"] == md["Arn"]
        assert out["EncryptionAlgorithm"] == algorithm
        assert "KeyMaterialId" not in out  # symmetric only


@pytest.mark.parametrize(("spec", "algorithm"), list(OAEP_LIMITS))
def test_service_encrypt_round_trips_and_enforces_the_plaintext_limit(
        client: Any, keys: dict[tuple[str, str], dict[str, Any]], spec: str,
        algorithm: str) -> None:
    md = keys[(spec, ENCRYPT)]
    limit = OAEP_LIMITS[(spec, algorithm)]
    at_limit = os.urandom(limit)
    out = client.encrypt(KeyId=md["KeyId"], Plaintext=at_limit, EncryptionAlgorithm=algorithm)
    assert (out["KeyId"], out["EncryptionAlgorithm"]) == (md["Arn"], algorithm)
    assert len(out["CiphertextBlob"]) == RSA_BITS[spec] // 8  # bare OAEP, no envelope
    again = client.encrypt(KeyId=md["KeyId"], Plaintext=at_limit, EncryptionAlgorithm=algorithm)
    assert again["CiphertextBlob"] != out["CiphertextBlob"]  # OAEP is randomised
    for blob in (out["CiphertextBlob"], again["CiphertextBlob"]):
        assert client.decrypt(KeyId=md["KeyId"], CiphertextBlob=blob,
                              EncryptionAlgorithm=algorithm)["Plaintext"] == at_limit
    refused(client.encrypt, "ValidationException",
            f"Algorithm {algorithm} and key spec {spec} cannot encrypt data larger than "
            f"{limit} bytes.", KeyId=md["KeyId"], Plaintext=at_limit + b"!",
            EncryptionAlgorithm=algorithm)


def test_the_documented_oaep_limit_message(
        client: Any, keys: dict[tuple[str, str], dict[str, Any]]) -> None:
    refused(client.encrypt, "ValidationException",
            "Algorithm RSAES_OAEP_SHA_256 and key spec RSA_2048 cannot encrypt data larger "
            "than 190 bytes.", KeyId=keys[("RSA_2048", ENCRYPT)]["KeyId"],
            Plaintext=b"\x00" * 191, EncryptionAlgorithm="RSAES_OAEP_SHA_256")


def test_encryption_context_with_an_rsa_key_is_refused(
        client: Any, keys: dict[tuple[str, str], dict[str, Any]]) -> None:
    md = keys[("RSA_2048", ENCRYPT)]
    refused(client.encrypt, "ValidationException", KeyId=md["KeyId"], Plaintext=b"p",
            EncryptionAlgorithm="RSAES_OAEP_SHA_256", EncryptionContext={"k": "v"})
    blob = public_key(client, md).encrypt(b"p", oaep("RSAES_OAEP_SHA_256"))
    refused(client.decrypt, "ValidationException", KeyId=md["KeyId"], CiphertextBlob=blob,
            EncryptionAlgorithm="RSAES_OAEP_SHA_256", EncryptionContext={"k": "v"})


def test_missing_encryption_algorithm_with_an_rsa_key_is_an_error(
        client: Any, keys: dict[tuple[str, str], dict[str, Any]]) -> None:
    md = keys[("RSA_2048", ENCRYPT)]
    blob = public_key(client, md).encrypt(b"p", oaep("RSAES_OAEP_SHA_1"))
    for call, params in ((client.encrypt, {"Plaintext": b"p"}),
                         (client.decrypt, {"CiphertextBlob": blob})):
        with pytest.raises(ClientError) as info:
            call(KeyId=md["KeyId"], **params)
        assert info.value.response["Error"]["Code"] in ("InvalidKeyUsageException",
                                                         "ValidationException")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_missing_encryption_algorithm_is_answered_as_aws_does(
        client: Any, keys: dict[tuple[str, str], dict[str, Any]]) -> None:
    refused(client.encrypt, "InvalidKeyUsageException",
            "Algorithm SYMMETRIC_DEFAULT is incompatible with key spec RSA_2048.",
            KeyId=keys[("RSA_2048", ENCRYPT)]["KeyId"], Plaintext=b"p")


def test_symmetric_algorithm_with_an_rsa_key_and_rsa_algorithm_with_a_symmetric_key(
        client: Any, keys: dict[tuple[str, str], dict[str, Any]],
        symmetric: dict[str, Any]) -> None:
    refused(client.encrypt, "InvalidKeyUsageException",
            "Algorithm SYMMETRIC_DEFAULT is incompatible with key spec RSA_3072.",
            KeyId=keys[("RSA_3072", ENCRYPT)]["KeyId"], Plaintext=b"p",
            EncryptionAlgorithm="SYMMETRIC_DEFAULT")
    refused(client.encrypt, "InvalidKeyUsageException",
            "Algorithm RSAES_OAEP_SHA_256 is incompatible with key spec SYMMETRIC_DEFAULT.",
            KeyId=symmetric["KeyId"], Plaintext=b"p", EncryptionAlgorithm="RSAES_OAEP_SHA_256")


def test_encrypt_on_a_sign_verify_rsa_key_is_invalid_key_usage(
        client: Any, keys: dict[tuple[str, str], dict[str, Any]]) -> None:
    md = keys[("RSA_2048", SIGN)]
    refused(client.encrypt, "InvalidKeyUsageException",
            f"{md['Arn']} key usage is SIGN_VERIFY which is not valid for Encrypt.",
            KeyId=md["KeyId"], Plaintext=b"p", EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    refused(client.generate_data_key, "InvalidKeyUsageException",
            KeyId=keys[("RSA_2048", ENCRYPT)]["KeyId"], KeySpec="AES_256")


def test_tampered_or_mismatched_rsa_ciphertext_is_invalid_ciphertext(
        client: Any, keys: dict[tuple[str, str], dict[str, Any]]) -> None:
    md = keys[("RSA_2048", ENCRYPT)]
    blob = client.encrypt(KeyId=md["KeyId"], Plaintext=b"secret",
                          EncryptionAlgorithm="RSAES_OAEP_SHA_256")["CiphertextBlob"]
    for bad, algorithm in ((flipped(blob), "RSAES_OAEP_SHA_256"),
                           (flipped(blob, 0), "RSAES_OAEP_SHA_256"),
                           (flipped(blob, -1), "RSAES_OAEP_SHA_256"),
                           (blob, "RSAES_OAEP_SHA_1"),  # the other OAEP hash
                           (blob[:-1], "RSAES_OAEP_SHA_256")):
        refused(client.decrypt, "InvalidCiphertextException", "", KeyId=md["KeyId"],
                CiphertextBlob=bad, EncryptionAlgorithm=algorithm)
    other = keys[("RSA_3072", ENCRYPT)]  # another RSA key cannot open it either
    refused(client.decrypt, "InvalidCiphertextException", "", KeyId=other["KeyId"],
            CiphertextBlob=blob, EncryptionAlgorithm="RSAES_OAEP_SHA_256")


def test_re_encrypt_from_rsa_to_symmetric_and_back(
        client: Any, keys: dict[tuple[str, str], dict[str, Any]],
        symmetric: dict[str, Any]) -> None:
    rsa_key = keys[("RSA_4096", ENCRYPT)]
    plaintext = os.urandom(100)
    offline = public_key(client, rsa_key).encrypt(plaintext, oaep("RSAES_OAEP_SHA_1"))

    to_sym = client.re_encrypt(CiphertextBlob=offline, SourceKeyId=rsa_key["KeyId"],
                               SourceEncryptionAlgorithm="RSAES_OAEP_SHA_1",
                               DestinationKeyId=symmetric["KeyId"],
                               DestinationEncryptionContext={"hop": "1"})
    assert to_sym["SourceKeyId"] == rsa_key["Arn"]
    assert to_sym["KeyId"] == symmetric["Arn"]
    assert to_sym["SourceEncryptionAlgorithm"] == "RSAES_OAEP_SHA_1"
    assert to_sym["DestinationEncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    assert to_sym["DestinationKeyMaterialId"] == symmetric["CurrentKeyMaterialId"]
    assert "SourceKeyMaterialId" not in to_sym
    assert client.decrypt(CiphertextBlob=to_sym["CiphertextBlob"],
                          EncryptionContext={"hop": "1"})["Plaintext"] == plaintext

    back = client.re_encrypt(CiphertextBlob=to_sym["CiphertextBlob"],
                             SourceEncryptionContext={"hop": "1"},
                             DestinationKeyId=rsa_key["KeyId"],
                             DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert back["KeyId"] == rsa_key["Arn"]
    assert back["SourceKeyId"] == symmetric["Arn"]
    assert back["DestinationEncryptionAlgorithm"] == "RSAES_OAEP_SHA_256"
    assert back["SourceKeyMaterialId"] == symmetric["CurrentKeyMaterialId"]
    assert "DestinationKeyMaterialId" not in back
    assert len(back["CiphertextBlob"]) == 512
    assert client.decrypt(KeyId=rsa_key["KeyId"], CiphertextBlob=back["CiphertextBlob"],
                          EncryptionAlgorithm="RSAES_OAEP_SHA_256")["Plaintext"] == plaintext

    # an RSA destination takes no encryption context
    refused(client.re_encrypt, "ValidationException", CiphertextBlob=to_sym["CiphertextBlob"],
            SourceEncryptionContext={"hop": "1"}, DestinationKeyId=rsa_key["KeyId"],
            DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256",
            DestinationEncryptionContext={"hop": "2"})

