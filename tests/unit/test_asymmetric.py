"""Asymmetric crypto (kms.crypto.asymmetric): interop with plain `cryptography` in both
directions, DIGEST == RAW of the hash, exact KMS error messages, RSA-OAEP limits, ECDH
and data key pairs. Each key spec is generated once per module (RSA_4096 takes ~1 s)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, padding, rsa

from kms.crypto import asymmetric as asym
from kms.crypto import kem
from kms.domain.errors import (
    InvalidCiphertextException,
    InvalidKeyUsageException,
    KMSInvalidSignatureException,
    UnsupportedOperationException,
    ValidationException,
)

MESSAGE = b"The quick brown fox jumps over the lazy dog"
SPECS = sorted(asym.SUPPORTED_SPECS)
RSA_SPECS = ["RSA_2048", "RSA_3072", "RSA_4096"]
NIST = {"ECC_NIST_P256": ec.SECP256R1(), "ECC_NIST_P384": ec.SECP384R1(),
        "ECC_NIST_P521": ec.SECP521R1()}
SIGN_PAIRS = [(spec, alg) for spec in SPECS for alg in asym.SIGNING_ALGORITHMS.get(spec, ())
              if alg in asym.SUPPORTED_SIGNING_ALGORITHMS]
DIGEST_PAIRS = [(s, a) for s, a in SIGN_PAIRS if a.startswith(("RSASSA_", "ECDSA_"))]
HASHLIB = {"SHA_256": hashlib.sha256, "SHA_384": hashlib.sha384, "SHA_512": hashlib.sha512}
ML_KEM_PRIVATE = {"ML_KEM_768": mlkem.MLKEM768PrivateKey,
                  "ML_KEM_1024": mlkem.MLKEM1024PrivateKey}
HASHES = {"SHA_256": hashes.SHA256, "SHA_384": hashes.SHA384, "SHA_512": hashes.SHA512}


class Key:
    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.private_der, self.public_der = asym.generate(spec)
        self.private = asym.load_private(self.private_der)
        self.public = asym.load_public(self.public_der)


@pytest.fixture(scope="module")
def key() -> Callable[[str], Key]:
    cache: dict[str, Key] = {}

    def get(spec: str) -> Key:
        if spec not in cache:
            cache[spec] = Key(spec)
        return cache[spec]

    return get


# -- independent reference implementation: plain cryptography calls --------------------------
def _offline_args(alg: str) -> tuple[Any, ...]:
    if alg.startswith("RSASSA_PSS_"):
        h = HASHES[alg[-7:]]()
        return (padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
    if alg.startswith("RSASSA_PKCS1_V1_5_"):
        return (padding.PKCS1v15(), HASHES[alg[-7:]]())
    if alg.startswith("ECDSA_"):
        return (ec.ECDSA(HASHES[alg[-7:]]()),)
    return ()  # Ed25519, ML-DSA


def offline_verify(public_der: bytes, alg: str, message: bytes, signature: bytes) -> None:
    serialization.load_der_public_key(public_der).verify(  # type: ignore[union-attr]
        signature, message, *_offline_args(alg))


def offline_sign(private_der: bytes, alg: str, message: bytes) -> bytes:
    priv = serialization.load_der_private_key(private_der, None)
    return priv.sign(message, *_offline_args(alg))  # type: ignore[union-attr,call-arg]


def digest_of(alg: str, message: bytes) -> bytes:
    return HASHLIB[alg[-7:]](message).digest()


# -- generation -------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", SPECS)
def test_generate_gives_pkcs8_and_matching_spki(key: Callable[[str], Key], spec: str) -> None:
    k = key(spec)
    assert k.private_der.startswith(b"\x30") and k.public_der.startswith(b"\x30")
    priv = serialization.load_der_private_key(k.private_der, None)
    assert priv.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo,
    ) == k.public_der
    assert asym.public_der(k.private) == asym.public_der(k.public) == k.public_der
    if spec in RSA_SPECS:
        assert isinstance(priv, rsa.RSAPrivateKey)
        assert priv.key_size == int(spec[4:]) and priv.public_key().public_numbers().e == 65537
    elif spec.startswith("ECC_NIST_P") or spec == "ECC_SECG_P256K1":
        assert isinstance(priv, ec.EllipticCurvePrivateKey)
        want = {"ECC_SECG_P256K1": "secp256k1", **{s: c.name for s, c in NIST.items()}}[spec]
        assert priv.curve.name == want
    elif spec == "ECC_NIST_EDWARDS25519":
        assert isinstance(priv, ed25519.Ed25519PrivateKey) and len(k.public_der) == 44
    elif spec.startswith("ML_KEM_"):
        assert isinstance(priv, ML_KEM_PRIVATE[spec])
        assert len(k.private_der) == 86  # PKCS#8 holding the 64-byte seed
    assert asym.spec_of(priv) == spec


def test_sm2_and_non_asymmetric_specs_are_refused() -> None:
    for spec in ("SM2", "HMAC_256", "SYMMETRIC_DEFAULT"):
        with pytest.raises(UnsupportedOperationException):
            asym.generate(spec)


def test_trusted_load_gives_the_same_key(key: Callable[[str], Key]) -> None:
    k = key("RSA_2048")
    fast = asym.load_private(k.private_der, trusted=True)
    assert asym.public_der(fast) == k.public_der
    sig = asym.sign(fast, "RSA_2048", "RSASSA_PKCS1_V1_5_SHA_256", MESSAGE)
    assert sig == asym.sign(k.private, "RSA_2048", "RSASSA_PKCS1_V1_5_SHA_256", MESSAGE)


# -- Sign / Verify interop --------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "alg"), SIGN_PAIRS)
def test_signature_verifies_offline(key: Callable[[str], Key], spec: str, alg: str) -> None:
    k = key(spec)
    sig = asym.sign(k.private, spec, alg, MESSAGE, "RAW")
    offline_verify(k.public_der, alg, MESSAGE, sig)
    asym.verify(k.public, spec, alg, MESSAGE, "RAW", sig)
    asym.verify(k.public_der, spec, alg, MESSAGE, "RAW", sig)  # DER is accepted too
    with pytest.raises(InvalidSignature):
        offline_verify(k.public_der, alg, MESSAGE + b"!", sig)


@pytest.mark.parametrize(("spec", "alg"), SIGN_PAIRS)
def test_offline_signature_verifies(key: Callable[[str], Key], spec: str, alg: str) -> None:
    k = key(spec)
    sig = offline_sign(k.private_der, alg, MESSAGE)
    asym.verify(k.public_der, spec, alg, MESSAGE, "RAW", sig)


@pytest.mark.parametrize(("spec", "alg"), SIGN_PAIRS)
def test_bad_signatures_are_one_error(key: Callable[[str], Key], spec: str, alg: str) -> None:
    k = key(spec)
    sig = asym.sign(k.private, spec, alg, MESSAGE)
    flipped = sig[:-1] + bytes([sig[-1] ^ 1])
    cases = [(MESSAGE, flipped), (MESSAGE + b"!", sig), (MESSAGE, b""), (MESSAGE, b"\x30\x03xyz"),
             (MESSAGE, sig + b"\x00"), (MESSAGE, sig[:10])]
    for message, signature in cases:
        with pytest.raises(KMSInvalidSignatureException) as err:
            asym.verify(k.public, spec, alg, message, "RAW", signature)
        assert err.value.message == ""


@pytest.mark.parametrize(("spec", "alg"), DIGEST_PAIRS)
def test_digest_signing_matches_raw(key: Callable[[str], Key], spec: str, alg: str) -> None:
    k = key(spec)
    digest = digest_of(alg, MESSAGE)
    sig = asym.sign(k.private, spec, alg, digest, "DIGEST")
    offline_verify(k.public_der, alg, MESSAGE, sig)  # a DIGEST signature is a RAW signature of m
    asym.verify(k.public, spec, alg, MESSAGE, "RAW", sig)
    asym.verify(k.public, spec, alg, digest, "DIGEST", sig)
    raw_sig = asym.sign(k.private, spec, alg, MESSAGE, "RAW")
    asym.verify(k.public, spec, alg, digest, "DIGEST", raw_sig)
    with pytest.raises(KMSInvalidSignatureException):  # hashing twice is a different message
        asym.verify(k.public, spec, alg, digest, "RAW", sig)
    if "PKCS1_V1_5" in alg:  # deterministic: the bytes are equal
        assert raw_sig == sig


@pytest.mark.parametrize(("spec", "alg"), DIGEST_PAIRS)
def test_wrong_digest_length(key: Callable[[str], Key], spec: str, alg: str) -> None:
    k = key(spec)
    n = len(digest_of(alg, b""))
    for bad in (n - 1, n + 1, 20):
        for call in (lambda m: asym.sign(k.private, spec, alg, m, "DIGEST"),
                     lambda m: asym.verify(k.public, spec, alg, m, "DIGEST", b"x" * 64)):
            with pytest.raises(ValidationException) as err:
                call(b"\x01" * bad)
            assert err.value.message == f"Digest is invalid length for algorithm {alg}."


def test_pss_salt_is_the_digest_length(key: Callable[[str], Key]) -> None:
    k = key("RSA_2048")
    priv = serialization.load_der_private_key(k.private_der, None)
    for alg in ("RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512"):
        h = HASHES[alg[-7:]]()
        sig = asym.sign(k.private, "RSA_2048", alg, MESSAGE)
        k.public.verify(sig, MESSAGE, padding.PSS(padding.MGF1(h), h.digest_size), h)
        other = priv.sign(MESSAGE, padding.PSS(padding.MGF1(h), 0), h)  # type: ignore[union-attr,call-arg]
        with pytest.raises(KMSInvalidSignatureException):
            asym.verify(k.public, "RSA_2048", alg, MESSAGE, "RAW", other)


@pytest.mark.parametrize(("spec", "alg"), [
    ("ECC_NIST_P256", "ECDSA_SHA_384"), ("ECC_NIST_P384", "ECDSA_SHA_256"),
    ("ECC_NIST_P521", "ECDSA_SHA_384"), ("ECC_SECG_P256K1", "ECDSA_SHA_512"),
    ("RSA_2048", "ECDSA_SHA_256"), ("RSA_2048", "ED25519_SHA_512"),
    ("RSA_2048", "RSAES_OAEP_SHA_256"), ("ECC_NIST_EDWARDS25519", "ECDSA_SHA_512"),
    ("ECC_NIST_P256", "ED25519_SHA_512"), ("ML_DSA_44", "ECDSA_SHA_256"),
    ("ECC_NIST_P256", "ML_DSA_SHAKE_256"), ("SYMMETRIC_DEFAULT", "RSASSA_PSS_SHA_256"),
])
def test_algorithm_must_fit_the_key_spec(spec: str, alg: str) -> None:
    with pytest.raises(InvalidKeyUsageException) as err:
        asym.check_signing_algorithm(spec, alg)
    assert err.value.message == f"Algorithm {alg} is incompatible with key spec {spec}."
    with pytest.raises(InvalidKeyUsageException):  # checked before anything else
        asym.sign(None, spec, alg, b"\x00" * 7, "DIGEST")


def test_ed25519_known_answer_rfc8032() -> None:
    # RFC 8032 §7.1, TEST 1 (empty message)
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    expected = bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc6"
        "1e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
    der = ed25519.Ed25519PrivateKey.from_private_bytes(seed).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    priv = asym.load_private(der)
    spec = "ECC_NIST_EDWARDS25519"
    assert asym.sign(priv, spec, "ED25519_SHA_512", b"") == expected
    assert asym.public_der(priv)[-32:].hex() == \
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    asym.verify(asym.public_der(priv), spec, "ED25519_SHA_512", b"", "RAW", expected)


def test_ed25519_message_type_rules(key: Callable[[str], Key]) -> None:
    k, spec = key("ECC_NIST_EDWARDS25519"), "ECC_NIST_EDWARDS25519"
    digest = hashlib.sha512(MESSAGE).digest()
    for alg, mt in (("ED25519_SHA_512", "DIGEST"), ("ED25519_PH_SHA_512", "RAW"),
                    ("ED25519_SHA_512", "EXTERNAL_MU")):
        with pytest.raises(ValidationException) as err:
            asym.sign(k.private, spec, alg, digest, mt)
        assert err.value.message == f"Message type {mt} is incompatible with algorithm {alg}."
    with pytest.raises(ValidationException) as err:
        asym.sign(k.private, spec, "ED25519_PH_SHA_512", digest[:32], "DIGEST")
    assert err.value.message == "Digest is invalid length for algorithm ED25519_PH_SHA_512."
    if not asym.ED25519PH_SUPPORTED:
        with pytest.raises(UnsupportedOperationException):
            asym.sign(k.private, spec, "ED25519_PH_SHA_512", digest, "DIGEST")


def test_external_mu_and_ml_dsa_message_types(key: Callable[[str], Key]) -> None:
    k = key("ECC_NIST_P256")
    with pytest.raises(ValidationException) as err:
        asym.sign(k.private, "ECC_NIST_P256", "ECDSA_SHA_256", b"\x00" * 64, "EXTERNAL_MU")
    assert err.value.message == (
        "Message type EXTERNAL_MU is incompatible with key spec ECC_NIST_P256.")
    with pytest.raises(ValidationException):
        asym.sign(k.private, "ECC_NIST_P256", "ECDSA_SHA_256", MESSAGE, "HASHED")
    if "ML_DSA_44" not in asym.SUPPORTED_SPECS:
        pytest.skip("no ML-DSA in this cryptography build")
    m = key("ML_DSA_44")
    assert len(m.public_der) == 1334
    assert len(asym.sign(m.private, "ML_DSA_44", "ML_DSA_SHAKE_256", MESSAGE)) == 2420
    with pytest.raises(ValidationException) as err:
        asym.sign(m.private, "ML_DSA_44", "ML_DSA_SHAKE_256", b"\x00" * 64, "DIGEST")
    assert err.value.message == "Message type DIGEST is incompatible with key spec ML_DSA_44."
    with pytest.raises(ValidationException):
        asym.sign(m.private, "ML_DSA_44", "ML_DSA_SHAKE_256", b"\x00" * 63, "EXTERNAL_MU")
    with pytest.raises(UnsupportedOperationException):
        asym.sign(m.private, "ML_DSA_44", "ML_DSA_SHAKE_256", b"\x00" * 64, "EXTERNAL_MU")


# -- ML-KEM -----------------------------------------------------------------------------------
def test_ml_kem_specs_this_build_supports() -> None:
    assert kem.SUPPORTED_SPECS == {"ML_KEM_768", "ML_KEM_1024"} <= asym.SUPPORTED_SPECS
    assert "ML_KEM_512" not in asym.SUPPORTED_SPECS  # cryptography has no ML-KEM-512
    with pytest.raises(UnsupportedOperationException):
        asym.generate("ML_KEM_512")


@pytest.mark.parametrize("spec", sorted(kem.SUPPORTED_SPECS))
def test_ml_kem_interoperates_with_plain_cryptography(key: Callable[[str], Key],
                                                      spec: str) -> None:
    k = key(spec)
    offline_public = serialization.load_der_public_key(k.public_der)
    offline_private = serialization.load_der_private_key(k.private_der, None)
    secret, ciphertext = offline_public.encapsulate()  # type: ignore[union-attr]
    assert kem.decapsulate(k.private, spec, ciphertext) == secret
    secret, ciphertext = kem.encapsulate(k.public, spec)
    assert len(secret) == 32 and len(ciphertext) == kem.CIPHERTEXT_BYTES[spec]
    assert offline_private.decapsulate(ciphertext) == secret  # type: ignore[union-attr]


@pytest.mark.parametrize("spec", sorted(kem.SUPPORTED_SPECS))
def test_ml_kem_decapsulate_refuses_only_the_wrong_length(key: Callable[[str], Key],
                                                          spec: str) -> None:
    k, size = key(spec), kem.CIPHERTEXT_BYTES[spec]
    for length in (0, 1, size - 1, size + 1):
        with pytest.raises(InvalidCiphertextException) as err:
            kem.decapsulate(k.private, spec, b"\x01" * length)
        assert err.value.message == ""
    assert len(kem.decapsulate(k.private, spec, b"\x01" * size)) == 32  # implicit rejection
    with pytest.raises(InvalidKeyUsageException) as bad:
        kem.check_algorithm("ECC_NIST_P256", "ML_KEM")
    assert bad.value.message == "Algorithm ML_KEM is incompatible with key spec ECC_NIST_P256."


# -- RSAES-OAEP -------------------------------------------------------------------------------
OAEP = ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]
LIMITS = {("RSA_2048", OAEP[0]): 214, ("RSA_2048", OAEP[1]): 190,
          ("RSA_3072", OAEP[0]): 342, ("RSA_3072", OAEP[1]): 318,
          ("RSA_4096", OAEP[0]): 470, ("RSA_4096", OAEP[1]): 446}


def _offline_oaep(alg: str) -> padding.OAEP:
    h = hashes.SHA1() if alg.endswith("SHA_1") else hashes.SHA256()
    return padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)


def test_oaep_limits_table() -> None:
    assert asym.OAEP_MAX_PLAINTEXT == LIMITS


@pytest.mark.parametrize("spec", RSA_SPECS)
@pytest.mark.parametrize("alg", OAEP)
def test_oaep_interop_and_limits(key: Callable[[str], Key], spec: str, alg: str) -> None:
    k = key(spec)
    limit = LIMITS[(spec, alg)]
    offline_ct = k.public.encrypt(b"hello", _offline_oaep(alg))
    assert asym.rsa_decrypt(k.private, spec, alg, offline_ct) == b"hello"
    full = bytes(range(256)) * 2
    ct = asym.rsa_encrypt(k.public_der, spec, alg, full[:limit])
    assert len(ct) == int(spec[4:]) // 8
    priv = serialization.load_der_private_key(k.private_der, None)
    assert priv.decrypt(ct, _offline_oaep(alg)) == full[:limit]  # type: ignore[union-attr]
    with pytest.raises(ValidationException) as err:
        asym.rsa_encrypt(k.public, spec, alg, full[: limit + 1])
    assert err.value.message == (f"Algorithm {alg} and key spec {spec} cannot encrypt data "
                                 f"larger than {limit} bytes.")


def test_oaep_failures_are_one_error(key: Callable[[str], Key]) -> None:
    k, spec = key("RSA_2048"), "RSA_2048"
    ct = asym.rsa_encrypt(k.public, spec, "RSAES_OAEP_SHA_256", b"secret")
    other = asym.rsa_encrypt(key("RSA_3072").public, "RSA_3072", "RSAES_OAEP_SHA_256", b"secret")
    for bad, alg in ((ct[:-1] + bytes([ct[-1] ^ 1]), "RSAES_OAEP_SHA_256"),
                     (ct, "RSAES_OAEP_SHA_1"), (ct[:-1], "RSAES_OAEP_SHA_256"),
                     (b"", "RSAES_OAEP_SHA_256"), (b"\xff" * 256, "RSAES_OAEP_SHA_256"),
                     (other, "RSAES_OAEP_SHA_256")):
        with pytest.raises(InvalidCiphertextException) as err:
            asym.rsa_decrypt(k.private, spec, alg, bad)
        assert err.value.message == ""


def test_encryption_algorithm_must_fit_the_key_spec(key: Callable[[str], Key]) -> None:
    for spec, alg in (("RSA_2048", "SYMMETRIC_DEFAULT"), ("RSA_2048", "SM2PKE"),
                      ("ECC_NIST_P256", "RSAES_OAEP_SHA_256")):
        with pytest.raises(InvalidKeyUsageException) as err:
            asym.rsa_encrypt(None, spec, alg, b"x")
        assert err.value.message == f"Algorithm {alg} is incompatible with key spec {spec}."
        with pytest.raises(InvalidKeyUsageException):
            asym.rsa_decrypt(None, spec, alg, b"x")


# -- ECDH -------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", sorted(NIST))
def test_ecdh_matches_offline(key: Callable[[str], Key], spec: str) -> None:
    k = key(spec)
    peer = ec.generate_private_key(NIST[spec])
    peer_der = peer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    secret = asym.derive_shared_secret(k.private, spec, peer_der)
    assert secret == peer.exchange(ec.ECDH(), k.public)
    assert len(secret) == (NIST[spec].key_size + 7) // 8  # 32 / 48 / 66


@pytest.mark.parametrize("spec", sorted(NIST))
def test_ecdh_refuses_foreign_peer_keys(key: Callable[[str], Key], spec: str) -> None:
    k = key(spec)
    label = {"ECC_NIST_P256": "P-256", "ECC_NIST_P384": "P-384", "ECC_NIST_P521": "P-521"}[spec]
    wrong_curve = "ECC_NIST_P384" if spec == "ECC_NIST_P256" else "ECC_NIST_P256"
    bad = [key(wrong_curve).public_der, key("ECC_SECG_P256K1").public_der,
           key("ECC_NIST_EDWARDS25519").public_der, key("RSA_2048").public_der,
           b"", b"\x30\x00", k.public_der[:-1], k.public_der + b"\x00",
           k.public_der[:-4] + b"\x00\x00\x00\x00"]  # point not on the curve
    for peer in bad:
        with pytest.raises(ValidationException) as err:
            asym.derive_shared_secret(k.private, spec, peer)
        assert err.value.message == ("The public key is not a valid DER-encoded X.509 "
                                     f"SubjectPublicKeyInfo for curve {label}.")


def test_ecdh_only_on_nist_curves() -> None:
    for spec in ("ECC_SECG_P256K1", "ECC_NIST_EDWARDS25519", "RSA_2048"):
        with pytest.raises(InvalidKeyUsageException) as err:
            asym.derive_shared_secret(None, spec, b"")
        assert err.value.message == f"Algorithm ECDH is incompatible with key spec {spec}."


# -- data key pairs ---------------------------------------------------------------------------
@pytest.mark.parametrize("spec", sorted(asym.DATA_KEY_PAIR_SPECS))
def test_data_key_pair_halves_match(spec: str) -> None:
    private_der, public_der = asym.generate_data_key_pair(spec)
    priv = serialization.load_der_private_key(private_der, None)
    assert priv.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo,
    ) == public_der
    serialization.load_der_public_key(public_der)


def test_data_key_pair_specs() -> None:
    assert asym.DATA_KEY_PAIR_SPECS == {
        "RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521",
        "ECC_SECG_P256K1", "ECC_NIST_EDWARDS25519"}
    for spec in ("SM2", "ML_DSA_44", "HMAC_256"):
        with pytest.raises(UnsupportedOperationException):
            asym.generate_data_key_pair(spec)
