"""Import wrapping: the RSA key pairs of GetParametersForImport, and unwrapping of
the material callers wrapped offline.

Rules: RSAES_OAEP_SHA_1/256 wrap the material directly; RSA_AES_KEY_WRAP_SHA_1/256
wrap an ephemeral AES key with RSA-OAEP, then the material with AES key wrap with
padding (RFC 5649). Every unwrap failure is InvalidCiphertextException.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

from kms.domain.errors import InvalidCiphertextException, UnsupportedOperationException

ALGORITHMS = ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_1",
              "RSA_AES_KEY_WRAP_SHA_256")
KEY_BITS = {"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}


def check(algorithm: str, key_spec: str) -> None:
    if algorithm not in ALGORITHMS:
        raise UnsupportedOperationException(
            f"Wrapping algorithm {algorithm} is not supported; use one of {', '.join(ALGORITHMS)}."
        )
    if key_spec not in KEY_BITS:
        raise UnsupportedOperationException(f"Wrapping key spec {key_spec} is not supported.")


def new_wrapping_key(key_spec: str) -> tuple[bytes, bytes]:
    """(private PKCS#8 DER, public SPKI DER); slow for RSA_4096: run it in a thread."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS[key_spec])
    return (
        private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
        private.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo),
    )


def unwrap(algorithm: str, private_der: bytes, wrapped: bytes) -> bytes:
    private = serialization.load_der_private_key(private_der, password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    digest: hashes.HashAlgorithm = hashes.SHA1() if algorithm.endswith("SHA_1") else hashes.SHA256()
    oaep = padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)
    try:
        if algorithm.startswith("RSAES_OAEP"):
            return private.decrypt(wrapped, oaep)
        size = private.key_size // 8
        aes_key = private.decrypt(wrapped[:size], oaep)
        return aes_key_unwrap_with_padding(aes_key, wrapped[size:])
    except (ValueError, InvalidUnwrap):
        raise InvalidCiphertextException() from None


def imported_material_id(key_id: str, material: bytes) -> str:
    """Deterministic: the same bytes imported again get the same KeyMaterialId."""
    tagged = b"kms-imported-material\x00" + key_id.encode() + b"\x00" + material
    return hashlib.sha256(tagged).hexdigest()
