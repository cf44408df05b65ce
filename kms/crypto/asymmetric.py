"""Asymmetric KMS keys: generation, Sign/Verify, RSAES-OAEP, ECDH and data key pairs
(ML-KEM generation comes from ``kem``, which also does Encapsulate/Decapsulate).

Rules: keys travel as DER (PKCS#8 private, SubjectPublicKeyInfo public); callers load
them once (load_private / load_public) and pass the objects. Checks run in KMS order:
algorithm vs key spec (InvalidKeyUsageException), then message type and digest length
(ValidationException). A bad signature or ciphertext never says why: no oracle.
"""

from __future__ import annotations

from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from kms.crypto import kem
from kms.domain.errors import (
    InvalidCiphertextException,
    InvalidKeyUsageException,
    KMSInvalidSignatureException,
    UnsupportedOperationException,
    ValidationException,
)

# ML-DSA needs cryptography >= 46 built against an OpenSSL with ML-DSA (3.5+).
_MLDSA: dict[str, Any] = {}
try:
    from cryptography.hazmat.primitives.asymmetric import mldsa as _mldsa

    _MLDSA = {
        "ML_DSA_44": _mldsa.MLDSA44PrivateKey,
        "ML_DSA_65": _mldsa.MLDSA65PrivateKey,
        "ML_DSA_87": _mldsa.MLDSA87PrivateKey,
    }
    _MLDSA["ML_DSA_44"].generate()  # probe: raises UnsupportedAlgorithm without backend support
except (ImportError, UnsupportedAlgorithm):  # pragma: no cover - depends on the build
    _MLDSA = {}

# cryptography exposes pure Ed25519 only (no Ed25519ph / dom2 prefix), so
# ED25519_PH_SHA_512 is recognised and validated but answered UnsupportedOperation.
ED25519PH_SUPPORTED = False

RAW, DIGEST, EXTERNAL_MU = "RAW", "DIGEST", "EXTERNAL_MU"
MESSAGE_TYPES = frozenset({RAW, DIGEST, EXTERNAL_MU})

_RSA_BITS = {"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}
_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ECC_NIST_P256": ec.SECP256R1,
    "ECC_NIST_P384": ec.SECP384R1,
    "ECC_NIST_P521": ec.SECP521R1,
    "ECC_SECG_P256K1": ec.SECP256K1,
}
ED25519_SPEC = "ECC_NIST_EDWARDS25519"
_ED25519_ALGS = ("ED25519_SHA_512", "ED25519_PH_SHA_512")

SUPPORTED_SPECS: frozenset[str] = frozenset(
    [*_RSA_BITS, *_CURVES, ED25519_SPEC, *_MLDSA, *kem.SUPPORTED_SPECS])
# DataKeyPairSpec minus SM2 (China Regions only).
DATA_KEY_PAIR_SPECS: frozenset[str] = frozenset([*_RSA_BITS, *_CURVES, ED25519_SPEC])

_RSA_SIGN = tuple(
    f"RSASSA_{pad}_SHA_{n}" for pad in ("PSS", "PKCS1_V1_5") for n in (256, 384, 512)
)
SIGNING_ALGORITHMS: dict[str, tuple[str, ...]] = {
    **{spec: _RSA_SIGN for spec in _RSA_BITS},
    "ECC_NIST_P256": ("ECDSA_SHA_256",),
    "ECC_NIST_P384": ("ECDSA_SHA_384",),
    "ECC_NIST_P521": ("ECDSA_SHA_512",),
    "ECC_SECG_P256K1": ("ECDSA_SHA_256",),
    ED25519_SPEC: _ED25519_ALGS,
    "ML_DSA_44": ("ML_DSA_SHAKE_256",),
    "ML_DSA_65": ("ML_DSA_SHAKE_256",),
    "ML_DSA_87": ("ML_DSA_SHAKE_256",),
}
# What this build can actually compute (the table above is what KMS defines).
SUPPORTED_SIGNING_ALGORITHMS: frozenset[str] = frozenset(
    [*_RSA_SIGN, "ECDSA_SHA_256", "ECDSA_SHA_384", "ECDSA_SHA_512", "ED25519_SHA_512"]
    + (["ED25519_PH_SHA_512"] if ED25519PH_SUPPORTED else [])
    + (["ML_DSA_SHAKE_256"] if _MLDSA else [])
)

ENCRYPTION_ALGORITHMS: dict[str, tuple[str, ...]] = {
    spec: ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256") for spec in _RSA_BITS
}
_OAEP_HASH: dict[str, type[hashes.HashAlgorithm]] = {
    "RSAES_OAEP_SHA_1": hashes.SHA1,
    "RSAES_OAEP_SHA_256": hashes.SHA256,
}
# RFC 8017 §7.1.1: k - 2*hLen - 2 -> 214/190, 342/318, 470/446 bytes.
OAEP_MAX_PLAINTEXT: dict[tuple[str, str], int] = {
    (spec, alg): bits // 8 - 2 * h().digest_size - 2
    for spec, bits in _RSA_BITS.items()
    for alg, h in _OAEP_HASH.items()
}

KEY_AGREEMENT_SPECS: dict[str, str] = {  # spec -> curve label used in messages
    "ECC_NIST_P256": "P-256",
    "ECC_NIST_P384": "P-384",
    "ECC_NIST_P521": "P-521",
}

_HASH_BY_SUFFIX: dict[str, type[hashes.HashAlgorithm]] = {
    "SHA_256": hashes.SHA256,
    "SHA_384": hashes.SHA384,
    "SHA_512": hashes.SHA512,
}
_MU_LEN = 64  # FIPS 204 external mu


def _incompatible(algorithm: str, key_spec: str) -> InvalidKeyUsageException:
    return InvalidKeyUsageException(
        f"Algorithm {algorithm} is incompatible with key spec {key_spec}.")


# -- keys -------------------------------------------------------------------------------------
def _new_private(spec: str) -> Any:
    if spec in _RSA_BITS:
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[spec])
    if spec in _CURVES:
        return ec.generate_private_key(_CURVES[spec]())
    if spec == ED25519_SPEC:
        return ed25519.Ed25519PrivateKey.generate()
    if spec in _MLDSA:
        return _MLDSA[spec].generate()
    if spec in kem.SUPPORTED_SPECS:
        return kem.new_private(spec)
    raise UnsupportedOperationException(f"Key spec {spec} is not supported.")


def _der_pair(key: Any) -> tuple[bytes, bytes]:
    private = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return private, public_der(key)


def generate(key_spec: str) -> tuple[bytes, bytes]:
    """New key pair for a KMS key: (PKCS#8 DER private, SubjectPublicKeyInfo DER public)."""
    return _der_pair(_new_private(key_spec))


def generate_data_key_pair(pair_spec: str) -> tuple[bytes, bytes]:
    """GenerateDataKeyPair material: (PKCS#8 DER private, SubjectPublicKeyInfo DER public)."""
    if pair_spec not in DATA_KEY_PAIR_SPECS:
        raise UnsupportedOperationException(
            f"KeyPairSpec {pair_spec} is not supported in this region.")
    return _der_pair(_new_private(pair_spec))


def load_private(der: bytes, *, trusted: bool = False) -> Any:
    """Load a PKCS#8 DER private key once; the caller caches the object.

    ``trusted=True`` skips the RSA consistency checks (~0.5 s for RSA_4096). Use it only
    for material this service generated and read back from its authenticated store;
    imported material must be loaded with ``trusted=False`` at least once.
    """
    return serialization.load_der_private_key(der, password=None,
                                              unsafe_skip_rsa_key_validation=trusted)


def spec_of(key: Any) -> str | None:
    """The KMS key spec a private key object has, or None if it has none."""
    if isinstance(key, rsa.RSAPrivateKey):
        return next((s for s, bits in _RSA_BITS.items() if bits == key.key_size), None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return next((s for s, c in _CURVES.items() if isinstance(key.curve, c)), None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return ED25519_SPEC
    mldsa = next((s for s, cls in _MLDSA.items() if isinstance(key, cls)), None)
    return mldsa or kem.spec_of(key)


def matches_spec(der: bytes, key_spec: str) -> bool:
    """Imported material: a PKCS#8 private key of exactly ``key_spec`` (fully validated)."""
    try:
        return spec_of(load_private(der)) == key_spec
    except (ValueError, TypeError):
        return False


def load_public(der: bytes | bytearray) -> Any:
    return serialization.load_der_public_key(bytes(der))


def public_der(key: Any) -> bytes:
    """DER SubjectPublicKeyInfo of a private or public key object (GetPublicKey)."""
    public = key.public_key() if hasattr(key, "public_key") else key
    return bytes(public.public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo))


# -- Sign / Verify ----------------------------------------------------------------------------
def check_signing_algorithm(key_spec: str, algorithm: str) -> None:
    if algorithm not in SIGNING_ALGORITHMS.get(key_spec, ()):
        raise _incompatible(algorithm, key_spec)


def check_message(key_spec: str, algorithm: str, message: bytes, message_type: str) -> None:
    """Every Sign/Verify input check, in KMS order. Raises; returns nothing."""
    check_signing_algorithm(key_spec, algorithm)
    if message_type not in MESSAGE_TYPES:
        raise ValidationException(f"Message type {message_type} is not valid.")
    if algorithm in _ED25519_ALGS:
        wanted = RAW if algorithm == "ED25519_SHA_512" else DIGEST
        if message_type != wanted:
            raise ValidationException(
                f"Message type {message_type} is incompatible with algorithm {algorithm}.")
    elif algorithm == "ML_DSA_SHAKE_256":
        if message_type == DIGEST:
            raise ValidationException(
                f"Message type DIGEST is incompatible with key spec {key_spec}.")
        if message_type == EXTERNAL_MU:
            if len(message) != _MU_LEN:
                raise ValidationException(f"Digest is invalid length for algorithm {algorithm}.")
            raise UnsupportedOperationException(
                "Message type EXTERNAL_MU is not supported by this service.")
    elif message_type == EXTERNAL_MU:
        raise ValidationException(
            f"Message type EXTERNAL_MU is incompatible with key spec {key_spec}.")
    if message_type == DIGEST:
        if len(message) != _HASH_BY_SUFFIX[algorithm[-7:]]().digest_size:
            raise ValidationException(f"Digest is invalid length for algorithm {algorithm}.")
    if algorithm not in SUPPORTED_SIGNING_ALGORITHMS:
        raise UnsupportedOperationException(
            f"Signing algorithm {algorithm} is not supported by this service.")


def _hash_arg(algorithm: str, message_type: str) -> hashes.HashAlgorithm | Prehashed:
    h = _HASH_BY_SUFFIX[algorithm[-7:]]()
    return Prehashed(h) if message_type == DIGEST else h


def _rsa_padding(algorithm: str) -> padding.AsymmetricPadding:
    if algorithm.startswith("RSASSA_PSS_"):
        h = _HASH_BY_SUFFIX[algorithm[-7:]]()
        return padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)
    return padding.PKCS1v15()


def sign(private_key: Any, key_spec: str, algorithm: str, message: bytes,
         message_type: str = RAW) -> bytes:
    """Sign as KMS does. RSA: PKCS#1 bytes; ECDSA: DER Ecdsa-Sig-Value; Ed25519: 64 bytes."""
    check_message(key_spec, algorithm, message, message_type)
    if algorithm.startswith("RSASSA_"):
        return bytes(private_key.sign(message, _rsa_padding(algorithm),
                                      _hash_arg(algorithm, message_type)))
    if algorithm.startswith("ECDSA_"):
        return bytes(private_key.sign(message, ec.ECDSA(_hash_arg(algorithm, message_type))))
    # ED25519_SHA_512 (pure Ed25519) and ML_DSA_SHAKE_256 (pure ML-DSA, empty context).
    return bytes(private_key.sign(message))


def verify(public_key: Any, key_spec: str, algorithm: str, message: bytes,
           message_type: str, signature: bytes) -> None:
    """Return if valid, else KMSInvalidSignatureException. ``public_key``: object or DER."""
    check_message(key_spec, algorithm, message, message_type)
    try:
        key = load_public(public_key) if isinstance(public_key, bytes | bytearray) else public_key
        if algorithm.startswith("RSASSA_"):
            key.verify(signature, message, _rsa_padding(algorithm),
                       _hash_arg(algorithm, message_type))
        elif algorithm.startswith("ECDSA_"):
            key.verify(signature, message, ec.ECDSA(_hash_arg(algorithm, message_type)))
        else:
            key.verify(signature, message)
    except (InvalidSignature, ValueError):
        raise KMSInvalidSignatureException() from None


# -- RSAES-OAEP -------------------------------------------------------------------------------
def check_encryption_algorithm(key_spec: str, algorithm: str) -> None:
    if algorithm not in ENCRYPTION_ALGORITHMS.get(key_spec, ()):
        raise _incompatible(algorithm, key_spec)


def _oaep(algorithm: str) -> padding.OAEP:
    h = _OAEP_HASH[algorithm]()
    return padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)


def check_plaintext_size(key_spec: str, algorithm: str, plaintext: bytes) -> None:
    check_encryption_algorithm(key_spec, algorithm)
    limit = OAEP_MAX_PLAINTEXT[(key_spec, algorithm)]
    if len(plaintext) > limit:
        raise ValidationException(f"Algorithm {algorithm} and key spec {key_spec} cannot "
                                  f"encrypt data larger than {limit} bytes.")


def rsa_encrypt(public_key: Any, key_spec: str, algorithm: str, plaintext: bytes) -> bytes:
    """RSAES-OAEP with MGF1 over the same hash and an empty label. ``public_key``: object or DER."""
    check_plaintext_size(key_spec, algorithm, plaintext)
    key = load_public(public_key) if isinstance(public_key, bytes | bytearray) else public_key
    return bytes(key.encrypt(plaintext, _oaep(algorithm)))


def rsa_decrypt(private_key: Any, key_spec: str, algorithm: str, ciphertext: bytes) -> bytes:
    check_encryption_algorithm(key_spec, algorithm)
    try:
        return bytes(private_key.decrypt(ciphertext, _oaep(algorithm)))
    except ValueError:
        raise InvalidCiphertextException() from None


# -- ECDH -------------------------------------------------------------------------------------
def check_key_agreement_algorithm(key_spec: str, algorithm: str = "ECDH") -> None:
    if algorithm != "ECDH" or key_spec not in KEY_AGREEMENT_SPECS:
        raise _incompatible(algorithm, key_spec)


def derive_shared_secret(private_key: Any, key_spec: str, peer_public_der: bytes) -> bytes:
    """Raw ECDH secret (the shared point's x-coordinate, field-size bytes, no KDF)."""
    check_key_agreement_algorithm(key_spec)
    curve = KEY_AGREEMENT_SPECS[key_spec]
    bad = ValidationException(f"The public key is not a valid DER-encoded X.509 "
                              f"SubjectPublicKeyInfo for curve {curve}.")
    try:
        peer = serialization.load_der_public_key(bytes(peer_public_der))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise bad from None
    if not isinstance(peer, ec.EllipticCurvePublicKey) or \
            peer.curve.name != _CURVES[key_spec].name:
        raise bad
    try:
        return bytes(private_key.exchange(ec.ECDH(), peer))
    except ValueError:  # e.g. a point OpenSSL refuses to multiply
        raise bad from None
