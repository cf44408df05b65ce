"""SYMMETRIC_DEFAULT: AES-256-GCM under a per-call key derived from the material.

Rules: the per-call key is NIST SP 800-108 KDF in counter mode with HMAC-SHA256
(one block gives 256 bits), keyed by the material, over a fresh 16-byte salt, so
one material never approaches the GCM nonce limits. Every failure to decrypt is
the same InvalidCiphertextException with no message: no oracle.
"""

from __future__ import annotations

import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.crypto import blob as blobfmt
from kms.domain.errors import InvalidCiphertextException

_LABEL = b"kms-symmetric-v1"


def derive(material: bytes, salt: bytes, key_id: str) -> bytes:
    # [i]_32 || Label || 0x00 || Context || [L]_32, i = 1, L = 256
    msg = b"\x00\x00\x00\x01" + _LABEL + b"\x00" + salt + key_id.encode() + b"\x00\x00\x01\x00"
    return hmac.digest(material, msg, "sha256")


def encrypt(material: bytes, key_id: str, material_id: str, plaintext: bytes,
            context: dict[str, str] | None) -> bytes:
    fresh = os.urandom(blobfmt.SALT_LEN + blobfmt.IV_LEN)  # one syscall for both
    salt, iv = fresh[: blobfmt.SALT_LEN], fresh[blobfmt.SALT_LEN :]
    header = blobfmt.build_header(key_id, material_id, salt, iv)
    aad = header + blobfmt.canonical_context(context)
    return header + AESGCM(derive(material, salt, key_id)).encrypt(iv, plaintext, aad)


def decrypt(material: bytes, blob: blobfmt.Blob, context: dict[str, str] | None) -> bytes:
    aad = blob.header + blobfmt.canonical_context(context)
    try:
        return AESGCM(derive(material, blob.salt, blob.key_id)).decrypt(blob.iv, blob.body, aad)
    except InvalidTag:
        raise InvalidCiphertextException() from None


def new_material() -> bytes:
    return os.urandom(32)
