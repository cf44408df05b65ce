"""ML-KEM keys through boto3: CreateKey, DescribeKey, GetPublicKey, Encapsulate and
Decapsulate, interoperable with plain `cryptography` (an offline encapsulation under the
key's public key decapsulates in the service), with AWS's errors and nothing but the audit
fact appended for a refused call; the secret and the ciphertext never reach the log."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mlkem

from tests.api.test_import import wrap
from tests.support.expect import refused

USAGE = "ENCAPSULATE_DECAPSULATE"
CIPHERTEXT = {"ML_KEM_768": 1088, "ML_KEM_1024": 1568}
PRIVATE_TYPE = {"ML_KEM_768": mlkem.MLKEM768PrivateKey, "ML_KEM_1024": mlkem.MLKEM1024PrivateKey}
PUBLIC_TYPE = {"ML_KEM_768": mlkem.MLKEM768PublicKey, "ML_KEM_1024": mlkem.MLKEM1024PublicKey}
DRY_RUN = "The request would have succeeded, but the DryRun option is set."


def log_seq(server: Any) -> int:
    seq = server.health()["log_seq"]
    assert isinstance(seq, int)
    return seq


def refused_alone(server: Any, call: Any, code: str, message: str | None = None,
                  **params: Any) -> dict[str, Any]:
    """Refused with AWS's code and message (HTTP 400), and only the audit fact appended."""
    seq = log_seq(server)
    response = refused(call, code, message, **params)
    assert log_seq(server) == seq + 1, "a refused call appends its audit fact only"
    return response


def new_key(kms: Any, spec: str = "ML_KEM_768") -> dict[str, Any]:
    md: dict[str, Any] = kms.create_key(KeySpec=spec, KeyUsage=USAGE)["KeyMetadata"]
    return md


# -- CreateKey, DescribeKey, GetPublicKey -----------------------------------------------------
@pytest.mark.parametrize("spec", sorted(CIPHERTEXT))
def test_an_ml_kem_key_is_described_as_aws_describes_it(kms: Any, spec: str) -> None:
    created = new_key(kms, spec)

    md = kms.describe_key(KeyId=created["KeyId"])["KeyMetadata"]

    assert md == created
    assert (md["KeySpec"], md["KeyUsage"], md["KeyState"]) == (spec, USAGE, "Enabled")
    assert md["EncapsulationAlgorithms"] == ["ML_KEM"]
    for absent in ("CustomerMasterKeySpec", "EncryptionAlgorithms", "SigningAlgorithms",
                   "KeyAgreementAlgorithms", "MacAlgorithms", "CurrentKeyMaterialId"):
        assert absent not in md


def test_ml_kem_512_is_refused_clearly_and_creates_nothing(server: Any, kms: Any) -> None:
    refused_alone(server, kms.create_key, "UnsupportedOperationException",
                  "KeySpec ML_KEM_512 is not supported by this service: its cryptography "
                  "library offers ML-KEM-768 and ML-KEM-1024 only.",
                  KeySpec="ML_KEM_512", KeyUsage=USAGE)

    assert kms.list_keys()["Keys"] == []


def test_ml_kem_needs_its_own_key_usage(server: Any, kms: Any) -> None:
    refused_alone(server, kms.create_key, "ValidationException",
                  "KeyUsage ENCRYPT_DECRYPT is not compatible with KeySpec ML_KEM_768",
                  KeySpec="ML_KEM_768", KeyUsage="ENCRYPT_DECRYPT")


@pytest.mark.parametrize("spec", sorted(CIPHERTEXT))
def test_get_public_key_is_a_der_spki_that_cryptography_loads(kms: Any, spec: str) -> None:
    md = new_key(kms, spec)

    got = kms.get_public_key(KeyId=md["KeyId"])

    public = serialization.load_der_public_key(got["PublicKey"])
    assert isinstance(public, PUBLIC_TYPE[spec])
    assert (got["KeyId"], got["KeySpec"], got["KeyUsage"]) == (md["Arn"], spec, USAGE)
    assert got["EncapsulationAlgorithms"] == ["ML_KEM"]
    assert "CustomerMasterKeySpec" not in got and "EncryptionAlgorithms" not in got


# -- Encapsulate and Decapsulate --------------------------------------------------------------
@pytest.mark.parametrize("spec", sorted(CIPHERTEXT))
def test_a_secret_encapsulated_offline_decapsulates_in_the_service(kms: Any, spec: str) -> None:
    md = new_key(kms, spec)
    public = serialization.load_der_public_key(kms.get_public_key(KeyId=md["KeyId"])["PublicKey"])
    secret, ciphertext = public.encapsulate()  # type: ignore[union-attr]

    got = kms.decapsulate(KeyId=md["KeyId"], SharedSecretCiphertextBlob=ciphertext,
                          EncapsulationAlgorithm="ML_KEM")

    assert got["SharedSecret"] == secret
    assert (got["KeyId"], got["EncapsulationAlgorithm"]) == (md["Arn"], "ML_KEM")


@pytest.mark.parametrize("spec", sorted(CIPHERTEXT))
def test_a_secret_encapsulated_in_the_service_decapsulates_to_the_same_secret(
        kms: Any, spec: str) -> None:
    md = new_key(kms, spec)

    made = kms.encapsulate(KeyId=md["KeyId"], EncapsulationAlgorithm="ML_KEM")
    again = kms.encapsulate(KeyId=md["KeyId"], EncapsulationAlgorithm="ML_KEM")
    got = kms.decapsulate(KeyId=md["KeyId"], EncapsulationAlgorithm="ML_KEM",
                          SharedSecretCiphertextBlob=made["SharedSecretCiphertextBlob"])

    assert (made["KeyId"], made["EncapsulationAlgorithm"]) == (md["Arn"], "ML_KEM")
    assert len(made["SharedSecret"]) == 32
    assert len(made["SharedSecretCiphertextBlob"]) == CIPHERTEXT[spec]
    assert got["SharedSecret"] == made["SharedSecret"]
    assert again["SharedSecret"] != made["SharedSecret"]  # a fresh secret every time


@pytest.mark.parametrize("spec", sorted(CIPHERTEXT))
def test_a_secret_encapsulated_in_the_service_decapsulates_offline(kms: Any, spec: str) -> None:
    """The reverse direction needs the private key offline: a key pair made with plain
    `cryptography` and imported (an EXTERNAL key takes any key spec)."""
    private = PRIVATE_TYPE[spec].generate()
    md = kms.create_key(KeySpec=spec, KeyUsage=USAGE, Origin="EXTERNAL")["KeyMetadata"]
    params = kms.get_parameters_for_import(KeyId=md["KeyId"], WrappingKeySpec="RSA_2048",
                                           WrappingAlgorithm="RSA_AES_KEY_WRAP_SHA_256")
    pkcs8 = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    kms.import_key_material(KeyId=md["KeyId"], ImportToken=params["ImportToken"],
                            EncryptedKeyMaterial=wrap("RSA_AES_KEY_WRAP_SHA_256",
                                                      params["PublicKey"], pkcs8),
                            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")

    made = kms.encapsulate(KeyId=md["KeyId"], EncapsulationAlgorithm="ML_KEM")

    assert private.decapsulate(made["SharedSecretCiphertextBlob"]) == made["SharedSecret"]
    public = kms.get_public_key(KeyId=md["KeyId"])["PublicKey"]
    assert public == private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_encapsulate_and_decapsulate_accept_an_alias(kms: Any) -> None:
    md = new_key(kms)
    kms.create_alias(AliasName="alias/kem", TargetKeyId=md["KeyId"])

    made = kms.encapsulate(KeyId="alias/kem", EncapsulationAlgorithm="ML_KEM")
    got = kms.decapsulate(KeyId="alias/kem", EncapsulationAlgorithm="ML_KEM",
                          SharedSecretCiphertextBlob=made["SharedSecretCiphertextBlob"])

    assert made["KeyId"] == got["KeyId"] == md["Arn"]
    assert got["SharedSecret"] == made["SharedSecret"]


def test_a_ciphertext_for_another_key_gives_a_different_secret_not_an_error(kms: Any) -> None:
    """Implicit rejection (FIPS 203), as AWS documents for Decapsulate."""
    ours, theirs = new_key(kms)["KeyId"], new_key(kms)["KeyId"]
    made = kms.encapsulate(KeyId=theirs, EncapsulationAlgorithm="ML_KEM")

    got = kms.decapsulate(KeyId=ours, EncapsulationAlgorithm="ML_KEM",
                          SharedSecretCiphertextBlob=made["SharedSecretCiphertextBlob"])
    garbage = kms.decapsulate(KeyId=ours, EncapsulationAlgorithm="ML_KEM",
                              SharedSecretCiphertextBlob=os.urandom(1088))

    assert len(got["SharedSecret"]) == len(garbage["SharedSecret"]) == 32
    assert got["SharedSecret"] != made["SharedSecret"]


@pytest.mark.parametrize(("spec", "length"), [
    ("ML_KEM_768", 1), ("ML_KEM_768", 1087), ("ML_KEM_768", 1089), ("ML_KEM_768", 1568),
    ("ML_KEM_1024", 1088), ("ML_KEM_1024", 6144),
])
def test_a_ciphertext_of_the_wrong_length_is_invalid_ciphertext(
        server: Any, kms: Any, spec: str, length: int) -> None:
    key_id = new_key(kms, spec)["KeyId"]

    refused_alone(server, kms.decapsulate, "InvalidCiphertextException", "",
                  KeyId=key_id, EncapsulationAlgorithm="ML_KEM",
                  SharedSecretCiphertextBlob=os.urandom(length))


@pytest.mark.parametrize(("spec", "usage", "op"), [
    ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "Encapsulate"),
    ("ECC_NIST_P256", "SIGN_VERIFY", "Encapsulate"),
    ("HMAC_256", "GENERATE_VERIFY_MAC", "Decapsulate"),
    ("ECC_NIST_P256", "KEY_AGREEMENT", "Decapsulate"),
])
def test_another_key_usage_is_invalid_key_usage(server: Any, kms: Any, spec: str, usage: str,
                                                 op: str) -> None:
    md = kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]
    params: dict[str, Any] = {"KeyId": md["KeyId"], "EncapsulationAlgorithm": "ML_KEM"}
    if op == "Decapsulate":
        params["SharedSecretCiphertextBlob"] = os.urandom(1088)

    refused_alone(server, kms.encapsulate if op == "Encapsulate" else kms.decapsulate,
                  "InvalidKeyUsageException",
                  f"{md['Arn']} key usage is {usage} which is not valid for {op}.", **params)


def test_an_ml_kem_key_refuses_the_other_usages(server: Any, kms: Any) -> None:
    md = new_key(kms)
    message = f"{md['Arn']} key usage is ENCAPSULATE_DECAPSULATE which is not valid for "

    refused_alone(server, kms.encrypt, "InvalidKeyUsageException", message + "Encrypt.",
                  KeyId=md["KeyId"], Plaintext=b"x")
    refused_alone(server, kms.sign, "InvalidKeyUsageException", message + "Sign.",
                  KeyId=md["KeyId"], Message=b"m", SigningAlgorithm="ML_DSA_SHAKE_256")
    refused_alone(server, kms.generate_mac, "InvalidKeyUsageException", message + "GenerateMac.",
                  KeyId=md["KeyId"], Message=b"m", MacAlgorithm="HMAC_SHA_256")


def test_a_disabled_key_refuses_both(server: Any, kms: Any) -> None:
    md = new_key(kms)
    blob = kms.encapsulate(KeyId=md["KeyId"],
                           EncapsulationAlgorithm="ML_KEM")["SharedSecretCiphertextBlob"]
    kms.disable_key(KeyId=md["KeyId"])

    refused_alone(server, kms.encapsulate, "DisabledException", f"{md['Arn']} is disabled.",
                  KeyId=md["KeyId"], EncapsulationAlgorithm="ML_KEM")
    refused_alone(server, kms.decapsulate, "DisabledException", f"{md['Arn']} is disabled.",
                  KeyId=md["KeyId"], EncapsulationAlgorithm="ML_KEM",
                  SharedSecretCiphertextBlob=blob)


def test_an_unknown_key_is_not_found(server: Any, kms: Any) -> None:
    missing = "11111111-2222-3333-4444-555555555555"
    refused_alone(server, kms.encapsulate, "NotFoundException",
                  f"Key 'arn:aws:kms:us-east-1:111122223333:key/{missing}' does not exist",
                  KeyId=missing, EncapsulationAlgorithm="ML_KEM")


def test_dry_run_answers_as_aws_for_both(server: Any, kms: Any) -> None:
    md = new_key(kms)
    blob = kms.encapsulate(KeyId=md["KeyId"],
                           EncapsulationAlgorithm="ML_KEM")["SharedSecretCiphertextBlob"]

    refused_alone(server, kms.encapsulate, "DryRunOperationException", DRY_RUN,
                  KeyId=md["KeyId"], EncapsulationAlgorithm="ML_KEM", DryRun=True)
    refused_alone(server, kms.decapsulate, "DryRunOperationException", DRY_RUN,
                  KeyId=md["KeyId"], EncapsulationAlgorithm="ML_KEM",
                  SharedSecretCiphertextBlob=blob, DryRun=True)


def test_the_secret_and_the_ciphertext_never_reach_the_log(server: Any, kms: Any) -> None:
    md = new_key(kms)
    made = kms.encapsulate(KeyId=md["KeyId"], EncapsulationAlgorithm="ML_KEM")
    kms.decapsulate(KeyId=md["KeyId"], EncapsulationAlgorithm="ML_KEM",
                    SharedSecretCiphertextBlob=made["SharedSecretCiphertextBlob"])

    data_dir = Path(server.data_dir)
    stored = b"".join(p.read_bytes() for p in data_dir.glob("events.sqlite3*"))
    assert stored  # the facts of these calls are durable, in the database or its WAL
    assert made["SharedSecret"] not in stored
    assert made["SharedSecretCiphertextBlob"][:64] not in stored
