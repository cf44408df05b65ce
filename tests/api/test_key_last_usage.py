"""GetKeyLastUsage through boto3: the last *successful cryptographic* call on a key (its
operation, time, request id and audit record id), the tracking start date, and the same
answer after a restart, because it is folded from the log's audit facts."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import client_for
from tests.support.expect import advance, refused
from tests.support.server import ServerProcess

ARN = "arn:aws:kms:us-east-1:111122223333:key/"


def last_usage(kms: Any, key_id: str) -> dict[str, Any]:
    got = dict(kms.get_key_last_usage(KeyId=key_id))
    del got["ResponseMetadata"]
    return got


def request_id(response: dict[str, Any]) -> str:
    rid: str = response["ResponseMetadata"]["RequestId"]
    return rid


def test_a_new_key_has_no_usage_and_is_tracked_from_its_creation(kms: Any) -> None:
    md = kms.create_key()["KeyMetadata"]

    got = last_usage(kms, md["KeyId"])

    assert got == {"KeyId": md["KeyId"], "KeyLastUsage": {},
                   "TrackingStartDate": md["CreationDate"], "KeyCreationDate": md["CreationDate"]}
    assert last_usage(kms, md["Arn"]) == got


def test_the_last_successful_crypto_call_is_reported(server: Any, kms: Any) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    encrypted = kms.encrypt(KeyId=key_id, Plaintext=b"p", EncryptionContext={"a": "b"})
    after_encrypt = last_usage(kms, key_id)["KeyLastUsage"]
    advance(server, 3600)  # the node's clock, not the test's, stamps the use

    decrypted = kms.decrypt(CiphertextBlob=encrypted["CiphertextBlob"],
                            EncryptionContext={"a": "b"})
    now = advance(server, 0)
    used = last_usage(kms, key_id)["KeyLastUsage"]

    assert after_encrypt["Operation"] == "Encrypt"
    assert after_encrypt["KmsRequestId"] == request_id(encrypted)
    assert used["Operation"] == "Decrypt"
    assert used["KmsRequestId"] == request_id(decrypted)
    assert after_encrypt["Timestamp"].timestamp() + 3600 <= used["Timestamp"].timestamp() <= now
    assert used["CloudTrailEventId"] != after_encrypt["CloudTrailEventId"]
    assert uuid.UUID(used["CloudTrailEventId"]).version == 4
    assert set(used) == {"Operation", "Timestamp", "CloudTrailEventId", "KmsRequestId"}


def test_refused_calls_and_non_cryptographic_calls_do_not_count(server: Any, kms: Any) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"p", EncryptionContext={"a": "b"})
    before = last_usage(kms, key_id)

    refused(kms.decrypt, "InvalidCiphertextException", CiphertextBlob=blob["CiphertextBlob"],
            EncryptionContext={"a": "wrong"})
    refused(kms.encrypt, "DryRunOperationException", KeyId=key_id, Plaintext=b"p", DryRun=True)
    kms.describe_key(KeyId=key_id)
    kms.list_resource_tags(KeyId=key_id)
    kms.tag_resource(KeyId=key_id, Tags=[{"TagKey": "k", "TagValue": "v"}])
    kms.enable_key_rotation(KeyId=key_id)
    kms.disable_key(KeyId=key_id)
    refused(kms.encrypt, "DisabledException", KeyId=key_id, Plaintext=b"p")

    assert last_usage(kms, key_id) == before
    assert before["KeyLastUsage"]["KmsRequestId"] == request_id(blob)


def test_get_public_key_is_not_a_use(kms: Any) -> None:
    key_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]

    kms.get_public_key(KeyId=key_id)

    assert last_usage(kms, key_id)["KeyLastUsage"] == {}


def test_reencrypt_counts_for_both_of_its_keys(kms: Any) -> None:
    source, destination = (kms.create_key()["KeyMetadata"]["KeyId"] for _ in range(2))
    blob = kms.encrypt(KeyId=source, Plaintext=b"p")["CiphertextBlob"]

    moved = kms.re_encrypt(CiphertextBlob=blob, DestinationKeyId=destination)

    for key_id in (source, destination):
        used = last_usage(kms, key_id)["KeyLastUsage"]
        assert (used["Operation"], used["KmsRequestId"]) == ("ReEncrypt", request_id(moved))


def _peer() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize(("spec", "usage", "operation", "call"), [
    ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "GenerateDataKey",
     lambda kms, k: kms.generate_data_key(KeyId=k, KeySpec="AES_256")),
    ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "GenerateDataKeyPairWithoutPlaintext",
     lambda kms, k: kms.generate_data_key_pair_without_plaintext(KeyId=k,
                                                                 KeyPairSpec="ECC_NIST_P256")),
    ("ECC_NIST_P256", "SIGN_VERIFY", "Sign",
     lambda kms, k: kms.sign(KeyId=k, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")),
    ("HMAC_256", "GENERATE_VERIFY_MAC", "GenerateMac",
     lambda kms, k: kms.generate_mac(KeyId=k, Message=b"m", MacAlgorithm="HMAC_SHA_256")),
    ("ECC_NIST_P256", "KEY_AGREEMENT", "DeriveSharedSecret",
     lambda kms, k: kms.derive_shared_secret(KeyId=k, KeyAgreementAlgorithm="ECDH",
                                             PublicKey=_peer())),
    ("ML_KEM_768", "ENCAPSULATE_DECAPSULATE", "Encapsulate",
     lambda kms, k: kms.encapsulate(KeyId=k, EncapsulationAlgorithm="ML_KEM")),
])
def test_each_kind_of_cryptographic_operation_counts(kms: Any, spec: str, usage: str,
                                                     operation: str, call: Any) -> None:
    key_id = kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["KeyId"]

    response = call(kms, key_id)

    used = last_usage(kms, key_id)["KeyLastUsage"]
    assert (used["Operation"], used["KmsRequestId"]) == (operation, request_id(response))


def test_the_answer_is_the_same_after_a_restart(tmp_path: Path) -> None:
    node = ServerProcess(tmp_path / "data").start()
    try:
        kms = client_for(node.url)
        used_key = kms.create_key()["KeyMetadata"]["KeyId"]
        idle_key = kms.create_key()["KeyMetadata"]["KeyId"]
        blob = kms.encrypt(KeyId=used_key, Plaintext=b"p")["CiphertextBlob"]
        kms.decrypt(CiphertextBlob=blob)
        before = {k: last_usage(kms, k) for k in (used_key, idle_key)}
    finally:
        node.stop()
    node.start()
    try:
        after = {k: last_usage(client_for(node.url), k) for k in (used_key, idle_key)}
    finally:
        node.stop()

    assert after == before
    assert before[used_key]["KeyLastUsage"]["Operation"] == "Decrypt"
    assert before[idle_key]["KeyLastUsage"] == {}


def test_an_unknown_key_is_not_found(kms: Any) -> None:
    missing = "11111111-2222-3333-4444-555555555555"
    refused(kms.get_key_last_usage, "NotFoundException",
            f"Key '{ARN}{missing}' does not exist", KeyId=missing)


@pytest.mark.parametrize("name", ["alias/used", "arn:aws:kms:us-east-1:111122223333:alias/used"])
def test_an_alias_is_not_accepted(server: Any, kms: Any, name: str) -> None:
    """The model: "Alias names are not supported" (key id or key ARN only)."""
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/used", TargetKeyId=key_id)
    seq = server.health()["log_seq"]

    refused(kms.get_key_last_usage, "NotFoundException", f"Invalid keyId '{name}'", KeyId=name)

    assert server.health()["log_seq"] == seq + 1  # its audit fact only
