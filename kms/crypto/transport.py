"""Key material in transit between regions: sealed to the receiving region's X25519 key.

Rules: an HPKE-like single shot (ephemeral X25519, HKDF-SHA256 salted with both public
keys, AES-256-GCM with the caller's context as associated data); every failure to open is
the one opaque ``PeerMaterialUnreadable``, so there is no oracle; on arrival material is
resealed under the local root key by ``reseal``, which never hands the plaintext back.
Wire format: 0x01 || ephemeral public (32) || nonce (12) || ciphertext || tag (16).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kms.domain.errors import KMSInternalException

VERSION = b"\x01"
INFO = b"kms-region-transport v1"
KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
_HEADER = 1 + KEY_LEN + NONCE_LEN
OPEN_FAILED = "Sealed material from a peer could not be opened."


class PeerMaterialUnreadable(KMSInternalException):
    """The one error for sealed material that does not open, whatever the cause."""

    code = "KMSInternalException"  # what a client would see; the subclass is for callers

    def __init__(self) -> None:
        super().__init__(OPEN_FAILED)


def seal_to(recipient_public: bytes, plaintext: bytes, context: bytes) -> bytes:
    """Seal ``plaintext`` so only the holder of ``recipient_public``'s private key opens
    it, and only under the same ``context``. ValueError if the key is not a usable
    X25519 public key (a caller's bug or a bad pin, never a peer's answer)."""
    check_public(recipient_public)
    return _seal(X25519PrivateKey.generate(), os.urandom(NONCE_LEN),
                 recipient_public, plaintext, context)


def open_from(recipient_private: X25519PrivateKey, sealed: bytes, context: bytes) -> bytes:
    """The plaintext sealed to this private key under ``context``, or
    PeerMaterialUnreadable for any wrong key, context, byte, length or version."""
    if sealed[:1] != VERSION or len(sealed) < _HEADER + TAG_LEN:
        raise PeerMaterialUnreadable()
    eph_public = sealed[1:1 + KEY_LEN]
    nonce = sealed[1 + KEY_LEN:_HEADER]
    try:
        shared = recipient_private.exchange(X25519PublicKey.from_public_bytes(eph_public))
        key = _derive(shared, eph_public, public_raw(recipient_private), context)
        return AESGCM(key).decrypt(nonce, sealed[_HEADER:], context)
    except (InvalidTag, ValueError):
        # ValueError: a low-order ephemeral point (all-zero shared secret).
        raise PeerMaterialUnreadable() from None


def reseal(recipient_private: X25519PrivateKey, sealed: bytes, context: bytes,
           seal_under: Callable[[bytes], bytes]) -> bytes:
    """Open ``sealed`` and pass the plaintext straight to the local sealer; only the
    sealer's output comes back. A sealer that echoes the plaintext is refused."""
    plaintext = open_from(recipient_private, sealed, context)
    resealed = seal_under(plaintext)
    # A plaintext this short could appear by chance inside a random ciphertext.
    if resealed == plaintext or (len(plaintext) >= 16 and plaintext in resealed):
        raise KMSInternalException("The local sealer returned material in clear.")
    return resealed


def _seal(eph: X25519PrivateKey, nonce: bytes, recipient_public: bytes,
          plaintext: bytes, context: bytes) -> bytes:
    """The scheme with its randomness given, so known-answer tests can pin the format."""
    eph_public = public_raw(eph)
    shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient_public))
    key = _derive(shared, eph_public, recipient_public, context)
    return VERSION + eph_public + nonce + AESGCM(key).encrypt(nonce, plaintext, context)


def _derive(shared: bytes, eph_public: bytes, recipient_public: bytes, context: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_public + recipient_public,
                info=INFO + context).derive(shared)


# --- keys: raw 32-byte public keys on the wire, base64 text in config and peers.json ---

def generate_private() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_raw(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_raw(private: X25519PrivateKey) -> bytes:
    """The 32 private bytes, only ever to be sealed at once (see regions.identity)."""
    return private.private_bytes_raw()


def private_from_raw(raw: bytes) -> X25519PrivateKey:
    """ValueError unless ``raw`` is 32 bytes."""
    return X25519PrivateKey.from_private_bytes(raw)


def check_public(raw: bytes) -> None:
    """ValueError unless ``raw`` is a 32-byte X25519 public key of full order (a
    low-order point would make every shared secret the same zero value)."""
    if len(raw) != KEY_LEN:
        raise ValueError(f"an X25519 public key is {KEY_LEN} bytes, not {len(raw)}")
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError:
        raise ValueError("the X25519 public key is a low-order point") from None


def public_to_text(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def public_from_text(text: str) -> bytes:
    """The raw key in base64 ``text``; ValueError saying what is wrong with it."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("an identity key must be base64 of 32 bytes") from None
    check_public(raw)
    return raw


def fingerprint(raw: bytes) -> str:
    """First 16 hex digits of SHA-256 of the raw public key, for messages and logs."""
    return hashlib.sha256(raw).hexdigest()[:16]
