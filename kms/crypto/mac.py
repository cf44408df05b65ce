"""HMAC KMS keys: GenerateMac / VerifyMac as raw RFC 2104 HMAC.

Rules: the key length equals the spec bits (HMAC_256 -> 32 bytes); each spec allows
exactly its own algorithm (HMAC_256 <-> HMAC_SHA_256). A MAC that does not match is
KMSInvalidMacException with no message, found by a constant-time comparison.
"""

from __future__ import annotations

import hmac
import os

from kms.domain.errors import InvalidKeyUsageException, KMSInvalidMacException, ValidationException

# key spec -> (MAC algorithm, hashlib name, key length in bytes)
_SPECS: dict[str, tuple[str, str, int]] = {
    "HMAC_224": ("HMAC_SHA_224", "sha224", 28),
    "HMAC_256": ("HMAC_SHA_256", "sha256", 32),
    "HMAC_384": ("HMAC_SHA_384", "sha384", 48),
    "HMAC_512": ("HMAC_SHA_512", "sha512", 64),
}
_DIGEST: dict[str, str] = {alg: name for alg, name, _ in _SPECS.values()}

HMAC_SPECS: frozenset[str] = frozenset(_SPECS)
MAC_ALGORITHMS: dict[str, tuple[str, ...]] = {spec: (v[0],) for spec, v in _SPECS.items()}
MAC_LENGTH: dict[str, int] = {v[0]: v[2] for v in _SPECS.values()}  # output = key length


def new_hmac_key(key_spec: str) -> bytes:
    try:
        return os.urandom(_SPECS[key_spec][2])
    except KeyError:
        raise ValidationException(f"Key spec {key_spec} is not an HMAC key spec.") from None


def check_mac_algorithm(key_spec: str, algorithm: str) -> None:
    if algorithm not in MAC_ALGORITHMS.get(key_spec, ()):
        raise InvalidKeyUsageException(
            f"Algorithm {algorithm} is incompatible with key spec {key_spec}.")


def _digest_name(algorithm: str) -> str:
    try:
        return _DIGEST[algorithm]
    except KeyError:
        raise ValidationException(f"MAC algorithm {algorithm} is not valid.") from None


def generate_mac(key: bytes, algorithm: str, message: bytes) -> bytes:
    return hmac.digest(key, message, _digest_name(algorithm))


def verify_mac(key: bytes, algorithm: str, message: bytes, mac: bytes) -> None:
    """Return if ``mac`` is the HMAC of ``message``, else KMSInvalidMacException."""
    if not hmac.compare_digest(hmac.digest(key, message, _digest_name(algorithm)), mac):
        raise KMSInvalidMacException()


def valid_imported_length(key_spec: str, length: int) -> bool:
    """Imported HMAC material: from the digest size up to the hash's block size
    (64 bytes for HMAC_224/256, 128 for HMAC_384/512), as AWS documents."""
    return _SPECS[key_spec][2] <= length <= (64 if key_spec in ("HMAC_224", "HMAC_256") else 128)
