"""Material sealed to a receiving region: a known-answer vector built on RFC 7748's X25519
keys pins the wire format; anything but the right private key, context and bytes gives the
one opaque error; reseal hands only the local sealer's output back."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kms.crypto import transport
from kms.crypto.sealing import RootKey
from kms.crypto.transport import OPEN_FAILED, PeerMaterialUnreadable, open_from, reseal, seal_to
from kms.domain.errors import KMSInternalException

# RFC 7748 §6.1: Alice's key plays the ephemeral, Bob's the receiving region.
ALICE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUB = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUB = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
NONCE = bytes(range(12))
MATERIAL = b"key material 32 bytes long......"
CONTEXT = b"kms-material\x00mrk-1\x00m1"
VECTOR = bytes.fromhex(
    "01" + ALICE_PUB.hex() + NONCE.hex()
    + "10bd03e06530836b3f129d31207f943edfe123d43647a330ee3e9735a95743ef"  # ciphertext
    + "0b836afd14db4511113fbe30299be697")  # tag


def bob() -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(BOB)


def refused(private: X25519PrivateKey, sealed: bytes, context: bytes = CONTEXT) -> None:
    with pytest.raises(PeerMaterialUnreadable) as info:
        open_from(private, sealed, context)
    assert str(info.value) == OPEN_FAILED
    assert isinstance(info.value, KMSInternalException)
    assert (info.value.code, info.value.status) == ("KMSInternalException", 500)


def test_rfc7748_keys_give_the_published_shared_secret() -> None:
    alice = X25519PrivateKey.from_private_bytes(ALICE)
    assert transport.public_raw(alice) == ALICE_PUB
    assert transport.public_raw(bob()) == BOB_PUB
    assert alice.exchange(bob().public_key()) == SHARED


def test_known_answer_vector() -> None:
    sealed = transport._seal(X25519PrivateKey.from_private_bytes(ALICE), NONCE, BOB_PUB,
                             MATERIAL, CONTEXT)
    assert sealed == VECTOR
    assert open_from(bob(), VECTOR, CONTEXT) == MATERIAL


def test_vector_follows_the_documented_construction() -> None:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=ALICE_PUB + BOB_PUB,
               info=b"kms-region-transport v1" + CONTEXT).derive(SHARED)
    assert VECTOR == b"\x01" + ALICE_PUB + NONCE + AESGCM(key).encrypt(NONCE, MATERIAL, CONTEXT)


@pytest.mark.parametrize("size", [0, 1, 32, 4096])
def test_round_trip_with_fresh_randomness_each_time(size: int) -> None:
    private = transport.generate_private()
    plaintext = os.urandom(size)
    first = seal_to(transport.public_raw(private), plaintext, CONTEXT)
    second = seal_to(transport.public_raw(private), plaintext, CONTEXT)
    assert first != second  # a new ephemeral key and nonce per seal
    assert len(first) == 1 + 32 + 12 + size + 16
    assert open_from(private, first, CONTEXT) == plaintext
    assert open_from(private, second, CONTEXT) == plaintext
    if size >= 16:
        assert plaintext not in first


def test_every_flipped_bit_position_is_refused_with_the_one_error() -> None:
    for index in range(len(VECTOR)):
        for bit in (0x01, 0x80):
            tampered = bytearray(VECTOR)
            tampered[index] ^= bit
            refused(bob(), bytes(tampered))


def test_every_truncation_and_an_extension_are_refused() -> None:
    for length in range(len(VECTOR)):
        refused(bob(), VECTOR[:length])
    refused(bob(), VECTOR + b"\x00")


@pytest.mark.parametrize("version", [b"\x00", b"\x02", b"\xff"])
def test_unknown_version_is_refused(version: bytes) -> None:
    refused(bob(), version + VECTOR[1:])


def test_wrong_recipient_is_refused() -> None:
    refused(transport.generate_private(), VECTOR)
    refused(X25519PrivateKey.from_private_bytes(ALICE), VECTOR)  # not even the sender opens it


@pytest.mark.parametrize("context", [b"", b"kms-material\x00mrk-1\x00m2",
                                     CONTEXT[:-1], CONTEXT + b"\x00"])
def test_context_mismatch_is_refused(context: bytes) -> None:
    refused(bob(), VECTOR, context)


def test_low_order_ephemeral_point_is_the_same_error() -> None:
    refused(bob(), b"\x01" + bytes(32) + VECTOR[33:])


@pytest.mark.parametrize("recipient", [bytes(31), bytes(33), bytes(32), b"\x01" + bytes(31)])
def test_sealing_to_an_unusable_key_is_a_value_error(recipient: bytes) -> None:
    with pytest.raises(ValueError):
        seal_to(recipient, MATERIAL, CONTEXT)


def test_reseal_returns_only_what_opens_under_the_local_root_key() -> None:
    root = RootKey(os.urandom(32))
    local_context = b"kms-material\x00mrk-1\x00m1\x00local"
    calls: list[int] = []

    def seal_under(plaintext: bytes) -> bytes:
        calls.append(len(plaintext))
        return root.seal(plaintext, local_context)

    resealed = reseal(bob(), VECTOR, CONTEXT, seal_under)
    assert calls == [len(MATERIAL)]
    assert MATERIAL not in resealed and resealed != VECTOR
    assert root.unseal(resealed, local_context) == MATERIAL


def test_reseal_refuses_a_sealer_that_echoes_the_plaintext() -> None:
    for echo in (lambda p: p, lambda p: b"prefix" + p):
        with pytest.raises(KMSInternalException) as info:
            reseal(bob(), VECTOR, CONTEXT, echo)
        assert MATERIAL.decode() not in str(info.value)


def test_reseal_of_unreadable_material_never_calls_the_sealer() -> None:
    called: list[bytes] = []
    tampered = VECTOR[:-1] + bytes([VECTOR[-1] ^ 1])
    with pytest.raises(PeerMaterialUnreadable):
        reseal(bob(), tampered, CONTEXT, lambda p: called.append(p) or b"")
    assert called == []


def test_public_key_text_form_round_trips_and_refuses_bad_text() -> None:
    text = transport.public_to_text(BOB_PUB)
    assert text == base64.b64encode(BOB_PUB).decode()
    assert transport.public_from_text(text) == BOB_PUB
    assert transport.public_from_text(f"  {text}\n") == BOB_PUB
    for bad in ("not base64!", base64.b64encode(bytes(31)).decode(),
                base64.b64encode(bytes(32)).decode()):  # the last one a low-order point
        with pytest.raises(ValueError):
            transport.public_from_text(bad)


def test_private_key_raw_form_round_trips() -> None:
    private = transport.private_from_raw(BOB)
    assert transport.private_raw(private) == BOB
    with pytest.raises(ValueError):
        transport.private_from_raw(BOB[:31])


def test_fingerprint_is_the_sha256_prefix() -> None:
    assert transport.fingerprint(BOB_PUB) == hashlib.sha256(BOB_PUB).hexdigest()[:16]
    assert len(transport.fingerprint(BOB_PUB)) == 16
