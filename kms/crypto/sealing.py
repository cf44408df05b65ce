"""Root of trust: seal and unseal key material at rest (the "HSM" boundary).

Rules: material leaves this module only sealed (AES-256-GCM under the region's
root key, bound to the key id and material id as associated data); the root key
comes from ``KMS_ROOT_KEY`` or a 0600 file in the data dir, created on first start.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.domain.errors import KMSInternalException
from kms.files import create_secret_file

_VERSION = b"\x01"
ROOT_KEY_FILE = "root.key"
ROOT_KEY_ENV = "KMS_ROOT_KEY"


class Sealer:
    """AES-256-GCM sealing with a version byte and explicit associated data."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a sealing key must be 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, material: bytes, context: bytes) -> bytes:
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, material, context)

    def unseal(self, sealed: bytes, context: bytes) -> bytes:
        if sealed[:1] != _VERSION or len(sealed) < 29:
            raise KMSInternalException("Sealed key material has an unknown format.")
        try:
            return self._aead.decrypt(sealed[1:13], sealed[13:], context)
        except InvalidTag:
            # Wrong root key or tampered storage: an operator problem, never the caller's.
            raise KMSInternalException("Key material could not be unsealed.") from None


class RootKey(Sealer):
    """The region's root of trust; it only ever seals key-encryption keys."""

    @classmethod
    def load_or_create(cls, data_dir: Path) -> RootKey:
        env = os.environ.get(ROOT_KEY_ENV)
        if env:
            return cls(base64.b64decode(env, validate=True))
        path = data_dir / ROOT_KEY_FILE
        if path.exists():
            return cls(base64.b64decode(path.read_bytes().strip(), validate=True))
        key = os.urandom(32)
        create_secret_file(path, base64.b64encode(key) + b"\n")
        return cls(key)


def seal_context(key_id: str, material_id: str) -> bytes:
    return f"kms-material\x00{key_id}\x00{material_id}".encode()
