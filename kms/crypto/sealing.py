"""Root of trust: seal and unseal key material at rest (the "HSM" boundary).

Rules: material leaves this module only sealed (AES-256-GCM under the region's
root key, bound to the key id and material id as associated data); the root key
comes from ``KMS_ROOT_KEY`` or a 0600 file in the data dir, created only when the
caller says the data dir holds nothing sealed; a check value sealed under it tells
at start whether it is the key the data dir was sealed with.
"""

from __future__ import annotations

import base64
import binascii
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


class RootKeyMissing(Exception):
    """No root key is configured and the caller did not allow minting one."""


class RootKey(Sealer):
    """The region's root of trust; it only ever seals key-encryption keys."""

    @classmethod
    def load_or_create(cls, data_dir: Path, *, create: bool = True) -> RootKey:
        """From ``KMS_ROOT_KEY``, else ``root.key``; mint the file only if ``create``.
        A malformed key raises ValueError saying what is wrong with it."""
        from_env = cls.from_env()
        if from_env is not None:
            return from_env
        path = data_dir / ROOT_KEY_FILE
        if path.exists():
            return cls(_decode(path.read_text(errors="replace"), str(path)))
        if not create:
            raise RootKeyMissing(f"neither {ROOT_KEY_ENV} is set nor {path} exists")
        key = os.urandom(32)
        create_secret_file(path, base64.b64encode(key) + b"\n")
        return cls(key)

    @classmethod
    def from_env(cls) -> RootKey | None:
        """The key in ``KMS_ROOT_KEY`` if set (ValueError if malformed), else None."""
        env = os.environ.get(ROOT_KEY_ENV)
        return cls(_decode(env, ROOT_KEY_ENV)) if env else None

    @staticmethod
    def source(data_dir: Path) -> str:
        """Where ``load_or_create`` takes the key from, for messages."""
        return ROOT_KEY_ENV if os.environ.get(ROOT_KEY_ENV) else str(data_dir / ROOT_KEY_FILE)

    def seal_check(self) -> bytes:
        return self.seal(_CHECK_VALUE, _CHECK_CONTEXT)

    def opens_check(self, sealed: bytes) -> bool:
        """Whether this key sealed ``sealed`` (a value from ``seal_check``)."""
        try:
            return self.unseal(sealed, _CHECK_CONTEXT) == _CHECK_VALUE
        except KMSInternalException:
            return False

    def opens(self, sealed: bytes, context: bytes) -> bool:
        """Whether ``sealed`` unseals under this key and ``context`` (the plaintext, a
        key-encryption key, is dropped at once)."""
        try:
            self.unseal(sealed, context)
        except KMSInternalException:
            return False
        return True


_CHECK_VALUE = b"kms-root-check-v1"
_CHECK_CONTEXT = b"kms-root-check"


def _decode(text: str, source: str) -> bytes:
    """Base64 of exactly 32 bytes, or a ValueError naming the source and the defect."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the root key in {source} is not valid base64 "
                         "(expected base64 of 32 random bytes, e.g. "
                         "`head -c 32 /dev/urandom | base64`)") from None
    if len(key) != 32:
        raise ValueError(f"the root key in {source} decodes to {len(key)} bytes; "
                         "a root key is 32 bytes") from None
    return key


def seal_context(key_id: str, material_id: str) -> bytes:
    return f"kms-material\x00{key_id}\x00{material_id}".encode()
