"""Key specs: which usages each allows and which algorithms each usage reports.

One table (reference §5.1) that CreateKey, DescribeKey, GetPublicKey and every
crypto handler read. Pure data, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

SYMMETRIC = "SYMMETRIC_DEFAULT"
ENCRYPT_DECRYPT = "ENCRYPT_DECRYPT"
SIGN_VERIFY = "SIGN_VERIFY"
GENERATE_VERIFY_MAC = "GENERATE_VERIFY_MAC"
KEY_AGREEMENT = "KEY_AGREEMENT"
ENCAPSULATE_DECAPSULATE = "ENCAPSULATE_DECAPSULATE"

_RSA_ENC = ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256")
_RSA_SIGN = (
    "RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
    "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512",
)


@dataclass(frozen=True, slots=True)
class Spec:
    name: str
    usages: dict[str, tuple[str, ...]]  # usage -> algorithms reported for it
    family: str  # "symmetric" | "rsa" | "ecc" | "hmac" | "ed25519" | "mldsa" | "mlkem" | "sm2"
    in_cmk_spec: bool = True  # CustomerMasterKeySpec has the same value

    @property
    def default_usage(self) -> str | None:
        return ENCRYPT_DECRYPT if self.family == "symmetric" else None


SPECS: dict[str, Spec] = {
    s.name: s
    for s in (
        Spec(SYMMETRIC, {ENCRYPT_DECRYPT: (SYMMETRIC,)}, "symmetric"),
        *(
            Spec(f"RSA_{n}", {ENCRYPT_DECRYPT: _RSA_ENC, SIGN_VERIFY: _RSA_SIGN}, "rsa")
            for n in (2048, 3072, 4096)
        ),
        Spec("ECC_NIST_P256", {SIGN_VERIFY: ("ECDSA_SHA_256",), KEY_AGREEMENT: ("ECDH",)}, "ecc"),
        Spec("ECC_NIST_P384", {SIGN_VERIFY: ("ECDSA_SHA_384",), KEY_AGREEMENT: ("ECDH",)}, "ecc"),
        Spec("ECC_NIST_P521", {SIGN_VERIFY: ("ECDSA_SHA_512",), KEY_AGREEMENT: ("ECDH",)}, "ecc"),
        Spec("ECC_SECG_P256K1", {SIGN_VERIFY: ("ECDSA_SHA_256",)}, "ecc"),
        Spec(
            "ECC_NIST_EDWARDS25519",
            {SIGN_VERIFY: ("ED25519_SHA_512", "ED25519_PH_SHA_512")},
            "ed25519",
            in_cmk_spec=False,
        ),
        *(
            Spec(f"ML_DSA_{n}", {SIGN_VERIFY: ("ML_DSA_SHAKE_256",)}, "mldsa", in_cmk_spec=False)
            for n in (44, 65, 87)
        ),
        *(
            Spec(f"ML_KEM_{n}", {ENCAPSULATE_DECAPSULATE: ("ML_KEM",)}, "mlkem",
                 in_cmk_spec=False)
            for n in (512, 768, 1024)
        ),
        *(
            Spec(f"HMAC_{n}", {GENERATE_VERIFY_MAC: (f"HMAC_SHA_{n}",)}, "hmac")
            for n in (224, 256, 384, 512)
        ),
        Spec("SM2", {ENCRYPT_DECRYPT: ("SM2PKE",), SIGN_VERIFY: ("SM2DSA",),
                     KEY_AGREEMENT: ("ECDH",)}, "sm2"),
    )
}

# KeyMetadata / GetPublicKey member that lists the algorithms of each usage.
ALGORITHM_FIELD = {
    ENCRYPT_DECRYPT: "EncryptionAlgorithms",
    SIGN_VERIFY: "SigningAlgorithms",
    GENERATE_VERIFY_MAC: "MacAlgorithms",
    KEY_AGREEMENT: "KeyAgreementAlgorithms",
    ENCAPSULATE_DECAPSULATE: "EncapsulationAlgorithms",
}


def algorithms(key_spec: str, key_usage: str) -> tuple[str, ...]:
    return SPECS[key_spec].usages.get(key_usage, ())
