"""Asymmetric keys in states other than Enabled, DryRun, and the server's own bounds, through
a real node and boto3; and a node that keeps answering while an RSA_4096 key is generated.

The node is reset once for this module and each key it needs is created once: the
per-test-reset `kms` fixture is deliberately not used here. Expected values come from the
reference (kms_api.md §4.4 and §5.1) via tests/support/asymmetric.py, not from the server's
own tables.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import client_for
from tests.support.asymmetric import (
    AGREE,
    ENCRYPT,
    MESSAGE,
    SIGN,
    assert_public_key_of_spec,
    create_keys,
    oaep,
    spki,
)
from tests.support.expect import refused
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def keys(client: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return create_keys(client, [("ECC_NIST_P256", SIGN), ("ECC_NIST_P384", SIGN),
                                ("ECC_NIST_P384", AGREE), ("RSA_2048", ENCRYPT)])


@pytest.fixture(scope="module")
def symmetric(client: Any) -> dict[str, Any]:
    md: dict[str, Any] = client.create_key(Description="symmetric")["KeyMetadata"]
    return md


# -- disabled keys --------------------------------------------------------------------------
def test_disabled_asymmetric_keys_refuse_every_operation(client: Any) -> None:
    signer = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage=SIGN)["KeyMetadata"]
    agree = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage=AGREE)["KeyMetadata"]
    rsa_key = client.create_key(KeySpec="RSA_2048", KeyUsage=ENCRYPT)["KeyMetadata"]
    signature = client.sign(KeyId=signer["KeyId"], Message=MESSAGE,
                            SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    peer = spki(ec.generate_private_key(ec.SECP256R1()))
    rsa_public: Any = serialization.load_der_public_key(
        client.get_public_key(KeyId=rsa_key["KeyId"])["PublicKey"])
    blob = rsa_public.encrypt(b"p", oaep("RSAES_OAEP_SHA_256"))

    calls = [
        (signer, client.sign, {"Message": MESSAGE, "SigningAlgorithm": "ECDSA_SHA_256"}),
        (signer, client.verify, {"Message": MESSAGE, "Signature": signature,
                                 "SigningAlgorithm": "ECDSA_SHA_256"}),
        (signer, client.get_public_key, {}),
        (agree, client.get_public_key, {}),
        (agree, client.derive_shared_secret, {"KeyAgreementAlgorithm": "ECDH",
                                              "PublicKey": peer}),
        (rsa_key, client.get_public_key, {}),
        (rsa_key, client.encrypt, {"Plaintext": b"p",
                                   "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
        (rsa_key, client.decrypt, {"CiphertextBlob": blob,
                                   "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
    ]
    for md in (signer, agree, rsa_key):
        client.disable_key(KeyId=md["KeyId"])
    for md, call, params in calls:
        refused(call, "DisabledException", f"{md['Arn']} is disabled.", KeyId=md["KeyId"],
                **params)
    for md in (signer, agree, rsa_key):
        client.enable_key(KeyId=md["KeyId"])
    for md, call, params in calls:  # everything works again once re-enabled
        call(KeyId=md["KeyId"], **params)


def test_pending_import_and_pending_deletion_keys_are_invalid_state(client: Any) -> None:
    external = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage=SIGN,
                                 Origin="EXTERNAL")["KeyMetadata"]
    doomed = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage=SIGN)["KeyMetadata"]
    client.schedule_key_deletion(KeyId=doomed["KeyId"], PendingWindowInDays=7)
    for md, state in ((external, "pending import"), (doomed, "pending deletion")):
        message = f"{md['Arn']} is {state}."
        refused(client.get_public_key, "KMSInvalidStateException", message, KeyId=md["KeyId"])
        refused(client.sign, "KMSInvalidStateException", message, KeyId=md["KeyId"],
                Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_256")


def test_dry_run_stops_before_the_cryptography(
        client: Any, keys: dict[tuple[str, str], dict[str, Any]]) -> None:
    dry = "The request would have succeeded, but the DryRun option is set."
    signer = keys[("ECC_NIST_P384", SIGN)]["KeyId"]
    refused(client.sign, "DryRunOperationException", dry, KeyId=signer, Message=MESSAGE,
            SigningAlgorithm="ECDSA_SHA_384", DryRun=True)
    refused(client.verify, "DryRunOperationException", dry, KeyId=signer, Message=MESSAGE,
            Signature=b"\x30\x00", SigningAlgorithm="ECDSA_SHA_384", DryRun=True)
    refused(client.derive_shared_secret, "DryRunOperationException", dry,
            KeyId=keys[("ECC_NIST_P384", AGREE)]["KeyId"], KeyAgreementAlgorithm="ECDH",
            PublicKey=spki(ec.generate_private_key(ec.SECP384R1())), DryRun=True)
    refused(client.encrypt, "DryRunOperationException", dry,
            KeyId=keys[("RSA_2048", ENCRYPT)]["KeyId"], Plaintext=b"p",
            EncryptionAlgorithm="RSAES_OAEP_SHA_256", DryRun=True)
    # the input checks still come first
    refused(client.sign, "InvalidKeyUsageException", KeyId=signer, Message=MESSAGE,
            SigningAlgorithm="ECDSA_SHA_256", DryRun=True)
    refused(client.sign, "ValidationException", KeyId=signer, Message=b"\x00" * 32,
            MessageType="DIGEST", SigningAlgorithm="ECDSA_SHA_384", DryRun=True)


def test_message_and_signature_bounds_are_checked_by_the_server(
        raw: Any, keys: dict[tuple[str, str], dict[str, Any]]) -> None:
    kid = keys[("ECC_NIST_P256", SIGN)]["KeyId"]
    big = raw.sign(KeyId=kid, Message=b"m" * 4096, SigningAlgorithm="ECDSA_SHA_256")
    assert raw.verify(KeyId=kid, Message=b"m" * 4096, Signature=big["Signature"],
                      SigningAlgorithm="ECDSA_SHA_256")["SignatureValid"] is True
    for message in (b"", b"m" * 4097):
        refused(raw.sign, "ValidationException", KeyId=kid, Message=message,
                SigningAlgorithm="ECDSA_SHA_256")
    for signature in (b"", b"s" * 6145):
        refused(raw.verify, "ValidationException", KeyId=kid, Message=MESSAGE,
                Signature=signature, SigningAlgorithm="ECDSA_SHA_256")
    refused(raw.sign, "ValidationException", KeyId=kid, Message=MESSAGE,
            SigningAlgorithm="ECDSA_SHA_1")
    refused(raw.sign, "ValidationException", KeyId=kid, Message=MESSAGE,
            SigningAlgorithm="ECDSA_SHA_256", MessageType="HASHED")


# -- the node keeps answering while RSA_4096 is generated ---------------------------------------
def _calls_during_one_rsa_4096_create(creator: Any, client: Any,
                                      symmetric: dict[str, Any]) -> bool:
    """Start CreateKey(RSA_4096) in a thread; once its request is being sent, run DescribeKey
    and Encrypt/Decrypt calls on another key and check their answers. Returns whether the
    CreateKey was still running when they had all completed."""
    sent = threading.Event()
    result: dict[str, Any] = {}

    def mark_sent(**_: Any) -> None:
        sent.set()

    def create() -> None:
        try:
            result["md"] = creator.create_key(KeySpec="RSA_4096", KeyUsage=SIGN)["KeyMetadata"]
        except Exception as e:  # pragma: no cover - reported by the caller
            result["error"] = e

    creator.meta.events.register("before-send.kms.CreateKey", mark_sent)
    thread = threading.Thread(target=create)
    thread.start()
    try:
        sent.wait()
        for i in range(2):
            md = client.describe_key(KeyId=symmetric["KeyId"])["KeyMetadata"]
            assert (md["Arn"], md["KeyState"]) == (symmetric["Arn"], "Enabled")
            plaintext = f"while generating {i}".encode()
            enc = client.encrypt(KeyId=symmetric["KeyId"], Plaintext=plaintext)
            assert client.decrypt(CiphertextBlob=enc["CiphertextBlob"])["Plaintext"] == plaintext
        still_running = thread.is_alive()
    finally:
        thread.join()
        creator.meta.events.unregister("before-send.kms.CreateKey", mark_sent)
    assert "error" not in result, result.get("error")
    assert result["md"]["KeySpec"] == "RSA_4096"
    public = serialization.load_der_public_key(
        client.get_public_key(KeyId=result["md"]["KeyId"])["PublicKey"])
    assert_public_key_of_spec(public, "RSA_4096")
    return still_running


def test_the_node_answers_other_calls_while_an_rsa_4096_key_is_created(
        node: ServerProcess, client: Any, symmetric: dict[str, Any]) -> None:
    """Generation runs off the event loop: calls issued after the CreateKey request went out
    complete, correctly, while that CreateKey is still running; a node that blocked would
    finish the CreateKey first. Generation time varies, so a generation that happened to
    finish first is retried (at most three RSA_4096 keys)."""
    creator = client_for(node.url)
    assert any(_calls_during_one_rsa_4096_create(creator, client, symmetric)
               for _ in range(3)), "every call waited for the RSA_4096 CreateKey to finish"
