"""What the reference says about asymmetric KMS keys (kms_api.md §4.4 and §5.1) as tables,
and the offline side of the asymmetric API tests: signing and verifying with `cryptography`,
public keys as DER SPKI, OAEP paddings, and the module fixtures' key creation.

Rules: expected values come from the reference, never from the server's own tables; ML-DSA
cases are skipped where this cryptography build cannot check them offline.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

try:  # cryptography >= 46 built against OpenSSL >= 3.5
    from cryptography.hazmat.primitives.asymmetric import mldsa

    mldsa.MLDSA44PrivateKey.generate()
    HAVE_MLDSA = True
except Exception:  # pragma: no cover - depends on the build
    HAVE_MLDSA = False

# -- what the reference says (§5.1) ---------------------------------------------------------
ENCRYPT, SIGN, MAC, AGREE = "ENCRYPT_DECRYPT", "SIGN_VERIFY", "GENERATE_VERIFY_MAC", "KEY_AGREEMENT"
USAGES = (ENCRYPT, SIGN, MAC, AGREE)
FIELD = {ENCRYPT: "EncryptionAlgorithms", SIGN: "SigningAlgorithms",
         MAC: "MacAlgorithms", AGREE: "KeyAgreementAlgorithms"}

RSA_SIGNING = ("RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
               "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384",
               "RSASSA_PKCS1_V1_5_SHA_512")
RSA_ENCRYPTION = ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256")
RSA_BITS = {"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}
CURVES = {"ECC_NIST_P256": "secp256r1", "ECC_NIST_P384": "secp384r1",
          "ECC_NIST_P521": "secp521r1", "ECC_SECG_P256K1": "secp256k1"}
LOCAL_CURVES: dict[str, Any] = {"ECC_NIST_P256": ec.SECP256R1, "ECC_NIST_P384": ec.SECP384R1,
                "ECC_NIST_P521": ec.SECP521R1, "ECC_SECG_P256K1": ec.SECP256K1}
MLDSA_SPECS = ("ML_DSA_44", "ML_DSA_65", "ML_DSA_87")
MLDSA_SIGNATURE_BYTES = {"ML_DSA_44": 2420, "ML_DSA_65": 3309, "ML_DSA_87": 4627}

# spec -> usage -> algorithms DescribeKey/GetPublicKey report for that usage
ALLOWED: dict[str, dict[str, tuple[str, ...]]] = {
    **{spec: {ENCRYPT: RSA_ENCRYPTION, SIGN: RSA_SIGNING} for spec in RSA_BITS},
    "ECC_NIST_P256": {SIGN: ("ECDSA_SHA_256",), AGREE: ("ECDH",)},
    "ECC_NIST_P384": {SIGN: ("ECDSA_SHA_384",), AGREE: ("ECDH",)},
    "ECC_NIST_P521": {SIGN: ("ECDSA_SHA_512",), AGREE: ("ECDH",)},
    "ECC_SECG_P256K1": {SIGN: ("ECDSA_SHA_256",)},
    "ECC_NIST_EDWARDS25519": {SIGN: ("ED25519_SHA_512", "ED25519_PH_SHA_512")},
    **{spec: {SIGN: ("ML_DSA_SHAKE_256",)} for spec in MLDSA_SPECS},
}
NO_CMK_SPEC = {"ECC_NIST_EDWARDS25519", *MLDSA_SPECS}  # CustomerMasterKeySpec lacks these
ALL_SIGNING = tuple(dict.fromkeys(a for u in ALLOWED.values() for a in u.get(SIGN, ())))

PAIRS = [(spec, usage) for spec, usages in ALLOWED.items() for usage in usages]
FORBIDDEN = [(spec, usage) for spec, usages in ALLOWED.items()
             for usage in USAGES if usage not in usages]
SIGN_SPECS = [spec for spec, usages in ALLOWED.items() if SIGN in usages]
# every (spec, algorithm) this node must compute; ED25519_PH_SHA_512 is tested separately
SIGN_CASES = [(spec, alg) for spec in SIGN_SPECS for alg in ALLOWED[spec][SIGN]
              if alg != "ED25519_PH_SHA_512"]
DIGEST_CASES = [(s, a) for s, a in SIGN_CASES if a.startswith(("RSASSA_", "ECDSA_"))]
OAEP_LIMITS = {("RSA_2048", "RSAES_OAEP_SHA_1"): 214, ("RSA_2048", "RSAES_OAEP_SHA_256"): 190,
               ("RSA_3072", "RSAES_OAEP_SHA_1"): 342, ("RSA_3072", "RSAES_OAEP_SHA_256"): 318,
               ("RSA_4096", "RSAES_OAEP_SHA_1"): 470, ("RSA_4096", "RSAES_OAEP_SHA_256"): 446}
KA_SPECS = ("ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521")
SHARED_SECRET_BYTES = {"ECC_NIST_P256": 32, "ECC_NIST_P384": 48, "ECC_NIST_P521": 66}
MESSAGE = b"The quick brown fox jumps over the lazy dog"


def needs_mldsa(spec: str) -> Any:
    return pytest.mark.skipif(spec.startswith("ML_DSA") and not HAVE_MLDSA,
                              reason="this cryptography build has no ML-DSA")


def spec_params(cases: list[Any]) -> list[Any]:
    """Parametrize values, skipping ML-DSA cases when ML-DSA cannot be checked offline."""
    out = []
    for case in cases:
        values = case if isinstance(case, tuple) else (case,)
        out.append(pytest.param(*values, marks=needs_mldsa(values[0])))
    return out


# -- helpers ----------------------------------------------------------------------------------
def hash_for(algorithm: str) -> hashes.HashAlgorithm:
    factories: dict[str, Any] = {"SHA_256": hashes.SHA256, "SHA_384": hashes.SHA384,
                                 "SHA_512": hashes.SHA512}
    h: hashes.HashAlgorithm = factories[algorithm[-7:]]()
    return h


def digest(algorithm: str, message: bytes) -> bytes:
    h = hashes.Hash(hash_for(algorithm))
    h.update(message)
    return h.finalize()


def pss(algorithm: str, salt: int | None = None) -> padding.PSS:
    h = hash_for(algorithm)
    return padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size if salt is None else salt)


def offline_verify(public: Any, algorithm: str, message: bytes, signature: bytes) -> None:
    """Raise InvalidSignature unless ``signature`` is AWS's encoding of a valid signature."""
    if algorithm.startswith("RSASSA_PSS_"):
        public.verify(signature, message, pss(algorithm), hash_for(algorithm))
    elif algorithm.startswith("RSASSA_PKCS1_V1_5_"):
        public.verify(signature, message, padding.PKCS1v15(), hash_for(algorithm))
    elif algorithm.startswith("ECDSA_"):
        public.verify(signature, message, ec.ECDSA(hash_for(algorithm)))
    else:  # ED25519_SHA_512 (pure Ed25519) and ML_DSA_SHAKE_256 (pure ML-DSA, empty context)
        public.verify(signature, message)


def offline_sign(private: Any, algorithm: str, message: bytes) -> bytes:
    if algorithm.startswith("RSASSA_PSS_"):
        return bytes(private.sign(message, pss(algorithm), hash_for(algorithm)))
    if algorithm.startswith("RSASSA_PKCS1_V1_5_"):
        return bytes(private.sign(message, padding.PKCS1v15(), hash_for(algorithm)))
    if algorithm.startswith("ECDSA_"):
        return bytes(private.sign(message, ec.ECDSA(hash_for(algorithm))))
    return bytes(private.sign(message))


def spki(key: Any) -> bytes:
    public = key.public_key() if hasattr(key, "public_key") else key
    return bytes(public.public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo))


def new_local_private(spec: str) -> Any:
    if spec in RSA_BITS:
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS[spec])
    if spec in LOCAL_CURVES:
        return ec.generate_private_key(LOCAL_CURVES[spec]())
    if spec == "ECC_NIST_EDWARDS25519":
        return ed25519.Ed25519PrivateKey.generate()
    return getattr(mldsa, f"MLDSA{spec[-2:]}PrivateKey").generate()


def assert_public_key_of_spec(public: Any, spec: str) -> None:
    if spec in RSA_BITS:
        assert isinstance(public, rsa.RSAPublicKey)
        assert public.key_size == RSA_BITS[spec]
        assert public.public_numbers().e == 65537
    elif spec in CURVES:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.curve.name == CURVES[spec]
    elif spec == "ECC_NIST_EDWARDS25519":
        assert isinstance(public, ed25519.Ed25519PublicKey)
    else:
        assert type(public).__name__ == f"MLDSA{spec[-2:]}PublicKey"


def flipped(data: bytes, index: int | None = None) -> bytes:
    out = bytearray(data)
    out[len(out) // 2 if index is None else index] ^= 0x01
    return bytes(out)



def oaep(algorithm: str) -> padding.OAEP:
    h: hashes.HashAlgorithm = hashes.SHA1() if algorithm.endswith("SHA_1") else hashes.SHA256()
    return padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)


# -- the module fixtures' keys --------------------------------------------------------------
def create_keys(client: Any, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """CreateKey's KeyMetadata for every (spec, usage) pair, created once, in parallel."""
    def create(pair: tuple[str, str]) -> dict[str, Any]:
        spec, usage = pair
        md: dict[str, Any] = client.create_key(KeySpec=spec, KeyUsage=usage,
                                               Description=f"{spec} {usage}")["KeyMetadata"]
        return md

    with ThreadPoolExecutor(max_workers=6) as pool:
        return dict(zip(pairs, pool.map(create, pairs), strict=True))


class PublicKeys:
    """A key's public key object, from GetPublicKey's DER, fetched once per key. One per test
    module: each module resets the node, which may give the same key id out again."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def __call__(self, client: Any, md: dict[str, Any]) -> Any:
        if md["KeyId"] not in self._cache:
            der = client.get_public_key(KeyId=md["KeyId"])["PublicKey"]
            self._cache[md["KeyId"]] = serialization.load_der_public_key(der)
        return self._cache[md["KeyId"]]
