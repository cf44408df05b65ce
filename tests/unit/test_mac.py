"""HMAC keys (kms.crypto.mac): RFC 4231 known answers, key lengths, spec/algorithm pairing
and the single KMSInvalidMacException for every mismatch."""

from __future__ import annotations

import pytest

from kms.crypto import mac
from kms.domain.errors import InvalidKeyUsageException, KMSInvalidMacException, ValidationException

# RFC 4231 §4.2 (test case 1) and §4.3 (test case 2)
RFC4231 = [
    (b"\x0b" * 20, b"Hi There", {
        "HMAC_SHA_224": "896fb1128abbdf196832107cd49df33f47b4b1169912ba4f53684b22",
        "HMAC_SHA_256": "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        "HMAC_SHA_384": "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c"
                        "faea9ea9076ede7f4af152e8b2fa9cb6",
        "HMAC_SHA_512": "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
                        "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
    }),
    (b"Jefe", b"what do ya want for nothing?", {
        "HMAC_SHA_224": "a30e01098bc6dbbf45690f3a7e9e6d0f8bbea2a39e6148008fd05e44",
        "HMAC_SHA_256": "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        "HMAC_SHA_384": "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
                        "8e2240ca5e69e2c78b3239ecfab21649",
        "HMAC_SHA_512": "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
                        "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
    }),
]
CASES = [(k, m, alg, out) for k, m, outs in RFC4231 for alg, out in outs.items()]
PAIRS = {"HMAC_224": "HMAC_SHA_224", "HMAC_256": "HMAC_SHA_256",
         "HMAC_384": "HMAC_SHA_384", "HMAC_512": "HMAC_SHA_512"}


@pytest.mark.parametrize(("key", "message", "alg", "expected"), CASES)
def test_rfc4231(key: bytes, message: bytes, alg: str, expected: str) -> None:
    assert mac.generate_mac(key, alg, message).hex() == expected
    mac.verify_mac(key, alg, message, bytes.fromhex(expected))


@pytest.mark.parametrize(("spec", "alg"), sorted(PAIRS.items()))
def test_key_and_mac_lengths(spec: str, alg: str) -> None:
    key = mac.new_hmac_key(spec)
    assert len(key) == int(spec[5:]) // 8 == mac.MAC_LENGTH[alg]
    assert key != mac.new_hmac_key(spec)
    assert len(mac.generate_mac(key, alg, b"m")) == len(key)
    mac.check_mac_algorithm(spec, alg)
    assert mac.MAC_ALGORITHMS[spec] == (alg,)


def test_unknown_spec_or_algorithm() -> None:
    with pytest.raises(ValidationException):
        mac.new_hmac_key("RSA_2048")
    with pytest.raises(ValidationException):
        mac.generate_mac(b"k", "HMAC_SHA_1", b"m")


@pytest.mark.parametrize("spec", sorted(PAIRS))
@pytest.mark.parametrize("alg", sorted(PAIRS.values()))
def test_algorithm_must_match_the_spec(spec: str, alg: str) -> None:
    if PAIRS[spec] == alg:
        mac.check_mac_algorithm(spec, alg)
        return
    with pytest.raises(InvalidKeyUsageException) as err:
        mac.check_mac_algorithm(spec, alg)
    assert err.value.message == f"Algorithm {alg} is incompatible with key spec {spec}."


def test_symmetric_key_spec_has_no_mac_algorithm() -> None:
    with pytest.raises(InvalidKeyUsageException) as err:
        mac.check_mac_algorithm("SYMMETRIC_DEFAULT", "HMAC_SHA_256")
    assert err.value.message == (
        "Algorithm HMAC_SHA_256 is incompatible with key spec SYMMETRIC_DEFAULT.")


@pytest.mark.parametrize("alg", sorted(PAIRS.values()))
def test_mismatch_is_one_error(alg: str) -> None:
    key, message = b"k" * 32, b"message"
    good = mac.generate_mac(key, alg, message)
    bad = [good[:-1] + bytes([good[-1] ^ 1]), good[:-1], good + b"\x00", b"", b"\x00" * len(good)]
    for m in bad:
        with pytest.raises(KMSInvalidMacException) as err:
            mac.verify_mac(key, alg, message, m)
        assert err.value.message == ""
    for k, msg in ((b"K" * 32, message), (key, message + b"!")):
        with pytest.raises(KMSInvalidMacException):
            mac.verify_mac(k, alg, msg, good)
    mac.verify_mac(key, alg, message, good)
