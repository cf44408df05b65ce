"""The region's audit signing key: RSA 2048, SHA256withRSA, as CloudTrail signs digests.

Rules: the private key lives only sealed under the root key in ``audit-signing.key``
(0600, minted once on first start, beside ``root.key``); its public half is also written in
the clear to ``audit-signing.pub`` (PEM) so a verifier without the root key can check
signatures, and is served at ``GET /_kms/audit/public-key``. The fingerprint is the hex MD5
of the DER SubjectPublicKeyInfo (the 32 hex characters of ``digestPublicKeyFingerprint``).
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from kms.crypto.sealing import Sealer
from kms.datadir import DataDirRefused, create_sealed_file, read_sealed_file
from kms.files import create_secret_file

SIGNING_KEY_FILE = "audit-signing.key"
PUBLIC_KEY_FILE = "audit-signing.pub"
ALGORITHM = "SHA256withRSA"
_SEAL_CONTEXT = b"kms-audit-signing-key"


class AuditPublicKey:
    """A verifier: the public half, from the key itself, a PEM file or an export."""

    def __init__(self, public: rsa.RSAPublicKey) -> None:
        self._public = public
        self.der = public.public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)

    @classmethod
    def from_pem(cls, pem: bytes) -> AuditPublicKey:
        """ValueError when ``pem`` is not an RSA public key."""
        key = serialization.load_pem_public_key(pem)
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("not an RSA public key")
        return cls(key)

    @property
    def pem(self) -> bytes:
        return self._public.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)

    @property
    def fingerprint(self) -> str:
        return hashlib.md5(self.der, usedforsecurity=False).hexdigest()

    def verifies(self, message: bytes, signature: bytes) -> bool:
        try:
            self._public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return False
        return True

    def document(self) -> dict[str, str]:
        """What ``GET /_kms/audit/public-key`` answers."""
        return {"PublicKey": base64.b64encode(self.der).decode(), "Pem": self.pem.decode(),
                "Fingerprint": self.fingerprint, "SignatureAlgorithm": ALGORITHM}


class AuditSigningKey(AuditPublicKey):
    """The private key; it signs checkpoint heads and digest files, nothing else."""

    def __init__(self, private: rsa.RSAPrivateKey) -> None:
        super().__init__(private.public_key())
        self._private = private

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message, padding.PKCS1v15(), hashes.SHA256())

    @classmethod
    def load_or_create(cls, data_dir: Path, root_key: Sealer) -> AuditSigningKey:
        """The key in ``data_dir``, minted and sealed under ``root_key`` on first start.
        DataDirRefused if the file is damaged or sealed under another root key."""
        path = data_dir / SIGNING_KEY_FILE
        if not path.exists():
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            der = private.private_bytes(serialization.Encoding.DER,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
            if create_sealed_file(path, root_key, der, _SEAL_CONTEXT):
                key = cls(private)
                key._write_public(data_dir)
                return key
            # else another starter won the race: its key is the region's
        key = cls(_unseal(path, root_key))
        key._write_public(data_dir)
        return key

    @classmethod
    def load(cls, data_dir: Path, root_key: Sealer) -> AuditSigningKey:
        """The existing key (never minted here); DataDirRefused when absent or unopenable."""
        path = data_dir / SIGNING_KEY_FILE
        if not path.exists():
            raise DataDirRefused(f"{path} does not exist; start the node once to create it")
        return cls(_unseal(path, root_key))

    def _write_public(self, data_dir: Path) -> None:
        path = data_dir / PUBLIC_KEY_FILE
        try:
            if path.read_bytes() == self.pem:
                return
        except FileNotFoundError:
            pass
        path.unlink(missing_ok=True)  # a stale or damaged copy: the sealed key decides
        create_secret_file(path, self.pem)


def _unseal(path: Path, root_key: Sealer) -> rsa.RSAPrivateKey:
    der = read_sealed_file(path, root_key, _SEAL_CONTEXT, "a sealed audit signing key")
    try:
        private = serialization.load_der_private_key(der, password=None)
    except ValueError:
        private = None
    if not isinstance(private, rsa.RSAPrivateKey):
        raise DataDirRefused(f"{path} does not hold an RSA private key")
    return private


def public_key_of(data_dir: Path) -> AuditPublicKey | None:
    """The data dir's audit public key, read without the root key (None if absent).
    When the root key is at hand the sealed key is the authority: ``verified_public_key``."""
    path = data_dir / PUBLIC_KEY_FILE
    try:
        return AuditPublicKey.from_pem(path.read_bytes())
    except FileNotFoundError:
        return None


def verified_public_key(data_dir: Path, root_key: Sealer | None) -> AuditPublicKey | None:
    """The public key of the sealed signing key if ``root_key`` opens it (the copy in
    ``audit-signing.pub`` could have been replaced with a forger's), else the PEM copy."""
    path = data_dir / SIGNING_KEY_FILE
    if root_key is not None and path.exists():
        return AuditPublicKey(_unseal(path, root_key).public_key())
    return public_key_of(data_dir)
