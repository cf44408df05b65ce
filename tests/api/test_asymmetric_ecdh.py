"""DeriveSharedSecret with key agreement keys through a real node and boto3: the secret equals
offline ECDH, two KMS keys agree, a peer key off the curve and a key of another usage are
refused.

The node is reset once for this module and each key it needs is created once: the
per-test-reset `kms` fixture is deliberately not used here. Expected values come from the
reference (kms_api.md §4.4 and §5.1) via tests/support/asymmetric.py, not from the server's
own tables.
"""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.support.asymmetric import (
    AGREE,
    KA_SPECS,
    LOCAL_CURVES,
    SHARED_SECRET_BYTES,
    SIGN,
    PublicKeys,
    create_keys,
    spki,
)
from tests.support.expect import refused


@pytest.fixture(scope="module")
def keys(client: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return create_keys(client, [*((s, AGREE) for s in KA_SPECS), ("ECC_NIST_P256", SIGN)])


@pytest.fixture(scope="module")
def symmetric(client: Any) -> dict[str, Any]:
    md: dict[str, Any] = client.create_key(Description="symmetric")["KeyMetadata"]
    return md


public_key = PublicKeys()


# -- DeriveSharedSecret -------------------------------------------------------------------------
@pytest.mark.parametrize("spec", KA_SPECS)
def test_derive_shared_secret_equals_offline_ecdh(
        client: Any, keys: dict[tuple[str, str], dict[str, Any]], spec: str) -> None:
    md = keys[(spec, AGREE)]
    kms_public = public_key(client, md)
    for _ in range(2):
        peer = ec.generate_private_key(LOCAL_CURVES[spec]())
        out = client.derive_shared_secret(KeyId=md["KeyId"], KeyAgreementAlgorithm="ECDH",
                                          PublicKey=spki(peer))
        assert out["SharedSecret"] == peer.exchange(ec.ECDH(), kms_public)
        assert len(out["SharedSecret"]) == SHARED_SECRET_BYTES[spec]
        assert out["KeyId"] == md["Arn"]
        assert out["KeyAgreementAlgorithm"] == "ECDH"
        assert out["KeyOrigin"] == "AWS_KMS"


def test_two_kms_keys_agree_on_the_same_secret(client: Any) -> None:
    a, b = (client.create_key(KeySpec="ECC_NIST_P384", KeyUsage=AGREE)["KeyMetadata"]["KeyId"]
            for _ in range(2))
    pub_a, pub_b = (client.get_public_key(KeyId=k)["PublicKey"] for k in (a, b))
    ab = client.derive_shared_secret(KeyId=a, KeyAgreementAlgorithm="ECDH", PublicKey=pub_b)
    ba = client.derive_shared_secret(KeyId=b, KeyAgreementAlgorithm="ECDH", PublicKey=pub_a)
    assert ab["SharedSecret"] == ba["SharedSecret"]


_rsa_der: list[bytes] = []


def public_key_der_of_rsa() -> bytes:
    if not _rsa_der:
        _rsa_der.append(spki(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    return _rsa_der[0]


@pytest.mark.parametrize("spec", KA_SPECS)
def test_a_peer_key_that_is_not_on_the_curve_is_a_validation_error(
        client: Any, keys: dict[tuple[str, str], dict[str, Any]], spec: str) -> None:
    kid = keys[(spec, AGREE)]["KeyId"]
    wrong = [spki(ec.generate_private_key(LOCAL_CURVES[other]()))
             for other in (*KA_SPECS, "ECC_SECG_P256K1") if other != spec]
    wrong += [spki(ed25519.Ed25519PrivateKey.generate()),
              public_key_der_of_rsa(),
              b"\x30\x03\x02\x01\x00",          # DER, but not an SPKI
              b"not a public key at all"]
    for peer in wrong:
        refused(client.derive_shared_secret, "ValidationException", KeyId=kid,
                KeyAgreementAlgorithm="ECDH", PublicKey=peer)


def test_derive_shared_secret_on_a_key_that_is_not_key_agreement(
        client: Any, keys: dict[tuple[str, str], dict[str, Any]],
        symmetric: dict[str, Any]) -> None:
    peer = spki(ec.generate_private_key(ec.SECP256R1()))
    sign = keys[("ECC_NIST_P256", SIGN)]
    refused(client.derive_shared_secret, "InvalidKeyUsageException",
            f"{sign['Arn']} key usage is SIGN_VERIFY which is not valid for DeriveSharedSecret.",
            KeyId=sign["KeyId"], KeyAgreementAlgorithm="ECDH", PublicKey=peer)
    refused(client.derive_shared_secret, "InvalidKeyUsageException",
            f"{symmetric['Arn']} key usage is ENCRYPT_DECRYPT which is not valid for "
            "DeriveSharedSecret.",
            KeyId=symmetric["KeyId"], KeyAgreementAlgorithm="ECDH", PublicKey=peer)


def test_key_agreement_algorithm_outside_the_enum_is_refused_by_the_server(
        raw: Any, keys: dict[tuple[str, str], dict[str, Any]]) -> None:
    refused(raw.derive_shared_secret, "ValidationException",
            KeyId=keys[("ECC_NIST_P256", AGREE)]["KeyId"], KeyAgreementAlgorithm="DH",
            PublicKey=spki(ec.generate_private_key(ec.SECP256R1())))

