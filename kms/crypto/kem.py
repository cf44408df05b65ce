"""ML-KEM (FIPS 203) for ENCAPSULATE_DECAPSULATE keys: generation, Encapsulate, Decapsulate.

Rules: keys travel like every asymmetric key (PKCS#8 DER private, which for ML-KEM holds
the 64-byte seed; SubjectPublicKeyInfo DER public). A ciphertext whose length does not
fit the key spec is InvalidCiphertextException; any other decapsulates, to a pseudo-random
secret if it was not made for this key (implicit rejection), as AWS documents.
"""

from __future__ import annotations

from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm

from kms.domain.errors import InvalidCiphertextException, InvalidKeyUsageException

ALGORITHM = "ML_KEM"
SHARED_SECRET_BYTES = 32
# FIPS 203 table 3: ciphertext sizes (bytes) of ML-KEM-512/768/1024.
CIPHERTEXT_BYTES: dict[str, int] = {"ML_KEM_512": 768, "ML_KEM_768": 1088, "ML_KEM_1024": 1568}
SPECS: frozenset[str] = frozenset(CIPHERTEXT_BYTES)

# cryptography >= 47 built against an OpenSSL with ML-KEM has 768 and 1024; no build of
# cryptography offers ML-KEM-512, so ML_KEM_512 keys are refused (UnsupportedOperation).
_PRIVATE: dict[str, Any] = {}
try:
    from cryptography.hazmat.primitives.asymmetric import mlkem as _mlkem

    _PRIVATE = {
        "ML_KEM_768": _mlkem.MLKEM768PrivateKey,
        "ML_KEM_1024": _mlkem.MLKEM1024PrivateKey,
    }
    _PRIVATE["ML_KEM_768"].generate()  # probe: raises UnsupportedAlgorithm without support
except (ImportError, UnsupportedAlgorithm):  # pragma: no cover - depends on the build
    _PRIVATE = {}

SUPPORTED_SPECS: frozenset[str] = frozenset(_PRIVATE)


def new_private(spec: str) -> Any:
    """A new ML-KEM private key object of ``spec`` (one of SUPPORTED_SPECS)."""
    return _PRIVATE[spec].generate()


def spec_of(key: Any) -> str | None:
    """The ML-KEM key spec of a private key object, or None."""
    return next((s for s, cls in _PRIVATE.items() if isinstance(key, cls)), None)


def check_algorithm(key_spec: str, algorithm: str) -> None:
    if algorithm != ALGORITHM or key_spec not in SPECS:
        raise InvalidKeyUsageException(
            f"Algorithm {algorithm} is incompatible with key spec {key_spec}.")


def encapsulate(public_key: Any, key_spec: str) -> tuple[bytes, bytes]:
    """A fresh shared secret and its ciphertext under ``public_key``: (secret, ciphertext)."""
    check_algorithm(key_spec, ALGORITHM)
    secret, ciphertext = public_key.encapsulate()
    return bytes(secret), bytes(ciphertext)


def decapsulate(private_key: Any, key_spec: str, ciphertext: bytes) -> bytes:
    """The 32-byte shared secret of ``ciphertext``. Only its length is an error."""
    check_algorithm(key_spec, ALGORITHM)
    if len(ciphertext) != CIPHERTEXT_BYTES[key_spec]:
        raise InvalidCiphertextException()
    try:
        return bytes(private_key.decapsulate(bytes(ciphertext)))
    except ValueError:  # the length is checked above; nothing else is refused
        raise InvalidCiphertextException() from None
