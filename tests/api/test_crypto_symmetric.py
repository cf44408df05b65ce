"""Symmetric cryptography through a real node and boto3: Encrypt, Decrypt, ReEncrypt,
GenerateDataKey(WithoutPlaintext), GenerateRandom and DryRun, with AWS's errors."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from tests.support.expect import refused

REGION = "us-east-1"
ACCOUNT = "111122223333"
MATERIAL_ID = re.compile(r"[0-9a-f]{64}")
INCORRECT_KEY = (
    "The key ID in the request does not identify a CMK that can perform this operation."
)
DRY_RUN = "The request would have succeeded, but the DryRun option is set."


def invalid_ciphertext(call: Any, **params: Any) -> None:
    """AWS answers every undecryptable blob the same way: no message, nothing to learn."""
    refused(call, "InvalidCiphertextException", "", **params)


def new_key(kms: Any) -> dict[str, Any]:
    md: dict[str, Any] = kms.create_key()["KeyMetadata"]
    return md


@pytest.fixture
def key(kms: Any) -> dict[str, Any]:
    return new_key(kms)


# -- Encrypt / Decrypt ----------------------------------------------------------------------
def test_encrypt_decrypt_round_trip(kms: Any, key: dict[str, Any]) -> None:
    enc = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"attack at dawn")
    assert enc["KeyId"] == key["Arn"]
    assert enc["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    assert b"attack at dawn" not in enc["CiphertextBlob"]

    dec = kms.decrypt(CiphertextBlob=enc["CiphertextBlob"])  # KeyId is optional
    assert dec["Plaintext"] == b"attack at dawn"
    assert dec["KeyId"] == key["Arn"]
    assert dec["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    assert dec["KeyMaterialId"] == key["CurrentKeyMaterialId"]
    assert MATERIAL_ID.fullmatch(dec["KeyMaterialId"])


@pytest.mark.parametrize("size", [1, 4096])
def test_plaintext_size_limits_round_trip(kms: Any, key: dict[str, Any], size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=data)["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == data


def test_encrypting_twice_gives_different_ciphertexts(kms: Any, key: dict[str, Any]) -> None:
    a = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"same")["CiphertextBlob"]
    b = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"same")["CiphertextBlob"]
    assert a != b
    assert kms.decrypt(CiphertextBlob=a)["Plaintext"] == b"same"
    assert kms.decrypt(CiphertextBlob=b)["Plaintext"] == b"same"


def test_every_key_reference_encrypts_and_the_answer_names_the_key_arn(
        kms: Any, key: dict[str, Any]) -> None:
    kms.create_alias(AliasName="alias/enc", TargetKeyId=key["KeyId"])
    refs = [key["KeyId"], key["Arn"], "alias/enc", f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/enc"]
    for ref in refs:
        enc = kms.encrypt(KeyId=ref, Plaintext=b"x")
        assert enc["KeyId"] == key["Arn"], ref
        dec = kms.decrypt(CiphertextBlob=enc["CiphertextBlob"], KeyId=ref)
        assert (dec["Plaintext"], dec["KeyId"]) == (b"x", key["Arn"]), ref


def test_encryption_context_must_match_exactly_but_order_is_free(
        kms: Any, key: dict[str, Any]) -> None:
    context = {"tenant": "acme", "purpose": "backup"}
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"secret",
                       EncryptionContext=context)["CiphertextBlob"]

    reordered = {"purpose": "backup", "tenant": "acme"}
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext=reordered)["Plaintext"] == b"secret"

    for wrong in ({"tenant": "acme"},                                  # a pair missing
                  {**context, "extra": "1"},                           # a pair too many
                  {"tenant": "ACME", "purpose": "backup"},             # values are case-sensitive
                  {"Tenant": "acme", "purpose": "backup"},             # keys as well
                  {"tenant": "acme", "purpose": "restore"}):
        invalid_ciphertext(kms.decrypt, CiphertextBlob=blob, EncryptionContext=wrong)
    invalid_ciphertext(kms.decrypt, CiphertextBlob=blob)  # no context at all


def test_context_given_only_at_decrypt_is_refused(kms: Any, key: dict[str, Any]) -> None:
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"p")["CiphertextBlob"]
    invalid_ciphertext(kms.decrypt, CiphertextBlob=blob, EncryptionContext={"a": "b"})
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={})["Plaintext"] == b"p"


def test_any_flipped_byte_makes_the_ciphertext_invalid(kms: Any, key: dict[str, Any]) -> None:
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"tamper-evident",
                       EncryptionContext={"k": "v"})["CiphertextBlob"]
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        invalid_ciphertext(kms.decrypt, CiphertextBlob=bytes(bad), EncryptionContext={"k": "v"})
    # the untouched blob still decrypts
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"k": "v"})["Plaintext"] \
        == b"tamper-evident"


def test_flipped_bytes_after_the_key_id_are_invalid_even_naming_the_key(
        kms: Any, key: dict[str, Any]) -> None:
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"p" * 40)["CiphertextBlob"]
    after_key_id = 2 + len(key["KeyId"])
    for i in range(after_key_id, len(blob), 7):
        bad = bytearray(blob)
        bad[i] ^= 0x80
        invalid_ciphertext(kms.decrypt, CiphertextBlob=bytes(bad), KeyId=key["KeyId"])


@pytest.mark.parametrize("mangle", [
    lambda b: b[:-1],                 # truncated tag
    lambda b: b + b"\x00",            # trailing garbage
    lambda b: b[:20],                 # a header fragment
    lambda b: b"\x00" * len(b),       # zeros
    lambda b: b"not a kms ciphertext at all",
    lambda b: b"\x01",
])
def test_malformed_ciphertexts_are_invalid(kms: Any, key: dict[str, Any], mangle: Any) -> None:
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"p")["CiphertextBlob"]
    invalid_ciphertext(kms.decrypt, CiphertextBlob=mangle(blob))


def test_decrypt_with_another_keys_id_is_incorrect_key(kms: Any, key: dict[str, Any]) -> None:
    other = new_key(kms)
    kms.create_alias(AliasName="alias/other", TargetKeyId=other["KeyId"])
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"p")["CiphertextBlob"]

    for ref in (other["KeyId"], other["Arn"], "alias/other"):
        refused(kms.decrypt, "IncorrectKeyException", INCORRECT_KEY,
                CiphertextBlob=blob, KeyId=ref)


def test_decrypt_naming_an_unknown_key(kms: Any, key: dict[str, Any]) -> None:
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"p")["CiphertextBlob"]
    kid = str(uuid.uuid4())
    refused(kms.decrypt, "NotFoundException",
            f"Key 'arn:aws:kms:us-east-1:111122223333:key/{kid}' does not exist",
            CiphertextBlob=blob, KeyId=kid)


def test_encrypt_with_unknown_keys_and_aliases(kms: Any) -> None:
    kid = str(uuid.uuid4())
    refused(kms.encrypt, "NotFoundException",
            f"Key 'arn:aws:kms:us-east-1:111122223333:key/{kid}' does not exist",
            KeyId=kid, Plaintext=b"p")
    refused(kms.encrypt, "NotFoundException",
            "Alias arn:aws:kms:us-east-1:111122223333:alias/none is not found.",
            KeyId="alias/none", Plaintext=b"p")
    refused(kms.encrypt, "NotFoundException", "Invalid keyId 'nope'", KeyId="nope",
            Plaintext=b"p")


def test_encrypt_with_an_asymmetric_algorithm_is_invalid_key_usage(
        kms: Any, key: dict[str, Any]) -> None:
    refused(kms.encrypt, "InvalidKeyUsageException",
            "Algorithm RSAES_OAEP_SHA_256 is incompatible with key spec SYMMETRIC_DEFAULT.",
            KeyId=key["KeyId"], Plaintext=b"p", EncryptionAlgorithm="RSAES_OAEP_SHA_256")


def test_plaintext_over_4096_bytes_is_a_validation_error(raw_kms: Any) -> None:
    kid = new_key(raw_kms)["KeyId"]
    refused(raw_kms.encrypt, "ValidationException",
            "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: "
            "Member must have length less than or equal to 4096",
            KeyId=kid, Plaintext=b"x" * 4097)


def test_empty_plaintext_is_a_validation_error(raw_kms: Any) -> None:
    kid = new_key(raw_kms)["KeyId"]
    refused(raw_kms.encrypt, "ValidationException",
            "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: "
            "Member must have length greater than or equal to 1",
            KeyId=kid, Plaintext=b"")


def test_several_violations_are_reported_together(raw_kms: Any) -> None:
    refused(raw_kms.encrypt, "ValidationException",
            "2 validation errors detected: Value null at 'keyId' failed to satisfy constraint: "
            "Member must not be null; Value at 'plaintext' failed to satisfy constraint: "
            "Member must have length less than or equal to 4096",
            Plaintext=b"x" * 4097)


def test_decrypt_without_ciphertext_is_a_validation_error(raw_kms: Any) -> None:
    refused(raw_kms.decrypt, "ValidationException",
            "1 validation error detected: Value null at 'ciphertextBlob' failed to satisfy "
            "constraint: Member must not be null")


# -- Disabled keys --------------------------------------------------------------------------
def test_disabled_key_refuses_every_crypto_operation(kms: Any, key: dict[str, Any]) -> None:
    other = new_key(kms)
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"p")["CiphertextBlob"]
    kms.disable_key(KeyId=key["KeyId"])
    disabled = f"{key['Arn']} is disabled."

    refused(kms.encrypt, "DisabledException", disabled, KeyId=key["KeyId"], Plaintext=b"p")
    refused(kms.decrypt, "DisabledException", disabled, CiphertextBlob=blob)
    refused(kms.decrypt, "DisabledException", disabled, CiphertextBlob=blob, KeyId=key["Arn"])
    refused(kms.generate_data_key, "DisabledException", disabled,
            KeyId=key["KeyId"], KeySpec="AES_256")
    refused(kms.generate_data_key_without_plaintext, "DisabledException", disabled,
            KeyId=key["KeyId"], KeySpec="AES_256")
    # ReEncrypt: from the disabled key, and to it
    refused(kms.re_encrypt, "DisabledException", disabled,
            CiphertextBlob=blob, DestinationKeyId=other["KeyId"])
    other_blob = kms.encrypt(KeyId=other["KeyId"], Plaintext=b"p")["CiphertextBlob"]
    refused(kms.re_encrypt, "DisabledException", disabled,
            CiphertextBlob=other_blob, DestinationKeyId=key["KeyId"])
    # DryRun does not get past the key state either
    refused(kms.encrypt, "DisabledException", disabled,
            KeyId=key["KeyId"], Plaintext=b"p", DryRun=True)


def test_disabled_key_via_alias_names_the_key_arn(kms: Any, key: dict[str, Any]) -> None:
    kms.create_alias(AliasName="alias/off", TargetKeyId=key["KeyId"])
    kms.disable_key(KeyId=key["KeyId"])
    refused(kms.encrypt, "DisabledException", f"{key['Arn']} is disabled.",
            KeyId="alias/off", Plaintext=b"p")


def test_re_enabled_key_decrypts_what_it_encrypted_before(
        kms: Any, key: dict[str, Any]) -> None:
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"kept")["CiphertextBlob"]
    kms.disable_key(KeyId=key["KeyId"])
    kms.enable_key(KeyId=key["KeyId"])
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"kept"


# -- ReEncrypt ------------------------------------------------------------------------------
def test_re_encrypt_to_another_key_and_context(kms: Any, key: dict[str, Any]) -> None:
    dest = new_key(kms)
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"move me",
                       EncryptionContext={"v": "1"})["CiphertextBlob"]

    out = kms.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext={"v": "1"},
                         DestinationKeyId=dest["KeyId"], DestinationEncryptionContext={"v": "2"})
    assert out["SourceKeyId"] == key["Arn"]
    assert out["KeyId"] == dest["Arn"]
    assert out["SourceEncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    assert out["DestinationEncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    assert out["SourceKeyMaterialId"] == key["CurrentKeyMaterialId"]
    assert out["DestinationKeyMaterialId"] == dest["CurrentKeyMaterialId"]

    new_blob = out["CiphertextBlob"]
    dec = kms.decrypt(CiphertextBlob=new_blob, EncryptionContext={"v": "2"})
    assert (dec["Plaintext"], dec["KeyId"]) == (b"move me", dest["Arn"])
    invalid_ciphertext(kms.decrypt, CiphertextBlob=new_blob, EncryptionContext={"v": "1"})
    refused(kms.decrypt, "IncorrectKeyException", INCORRECT_KEY, CiphertextBlob=new_blob,
            KeyId=key["KeyId"], EncryptionContext={"v": "2"})


def test_re_encrypt_via_aliases_names_arns(kms: Any, key: dict[str, Any]) -> None:
    dest = new_key(kms)
    kms.create_alias(AliasName="alias/dest", TargetKeyId=dest["KeyId"])
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"p")["CiphertextBlob"]
    out = kms.re_encrypt(CiphertextBlob=blob, SourceKeyId=key["Arn"],
                         DestinationKeyId="alias/dest")
    assert (out["SourceKeyId"], out["KeyId"]) == (key["Arn"], dest["Arn"])
    assert kms.decrypt(CiphertextBlob=out["CiphertextBlob"])["Plaintext"] == b"p"


def test_re_encrypt_checks_the_source_like_decrypt(kms: Any, key: dict[str, Any]) -> None:
    dest = new_key(kms)
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"p",
                       EncryptionContext={"a": "b"})["CiphertextBlob"]
    invalid_ciphertext(kms.re_encrypt, CiphertextBlob=blob, DestinationKeyId=dest["KeyId"])
    refused(kms.re_encrypt, "IncorrectKeyException", INCORRECT_KEY, CiphertextBlob=blob,
            SourceKeyId=dest["KeyId"], SourceEncryptionContext={"a": "b"},
            DestinationKeyId=dest["KeyId"])
    bad = bytearray(blob)
    bad[-1] ^= 0x01
    invalid_ciphertext(kms.re_encrypt, CiphertextBlob=bytes(bad),
                       SourceEncryptionContext={"a": "b"}, DestinationKeyId=dest["KeyId"])


def test_re_encrypt_to_an_unknown_key(kms: Any, key: dict[str, Any]) -> None:
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"p")["CiphertextBlob"]
    refused(kms.re_encrypt, "NotFoundException",
            "Alias arn:aws:kms:us-east-1:111122223333:alias/gone is not found.",
            CiphertextBlob=blob, DestinationKeyId="alias/gone")


# -- GenerateDataKey ------------------------------------------------------------------------
@pytest.mark.parametrize(("params", "size"), [
    ({"KeySpec": "AES_256"}, 32),
    ({"KeySpec": "AES_128"}, 16),
    ({"NumberOfBytes": 1}, 1),
    ({"NumberOfBytes": 64}, 64),
    ({"NumberOfBytes": 1024}, 1024),
])
def test_generate_data_key_sizes_and_round_trip(kms: Any, key: dict[str, Any],
                                                params: dict[str, Any], size: int) -> None:
    out = kms.generate_data_key(KeyId=key["KeyId"], EncryptionContext={"f": "x"}, **params)
    assert len(out["Plaintext"]) == size
    assert out["KeyId"] == key["Arn"]
    assert out["KeyMaterialId"] == key["CurrentKeyMaterialId"]

    dec = kms.decrypt(CiphertextBlob=out["CiphertextBlob"], EncryptionContext={"f": "x"})
    assert dec["Plaintext"] == out["Plaintext"]
    invalid_ciphertext(kms.decrypt, CiphertextBlob=out["CiphertextBlob"])


def test_data_keys_are_fresh_each_time(kms: Any, key: dict[str, Any]) -> None:
    a = kms.generate_data_key(KeyId=key["KeyId"], KeySpec="AES_256")["Plaintext"]
    b = kms.generate_data_key(KeyId=key["KeyId"], KeySpec="AES_256")["Plaintext"]
    assert a != b


@pytest.mark.parametrize("operation", ["generate_data_key",
                                       "generate_data_key_without_plaintext"])
@pytest.mark.parametrize("params", [{}, {"KeySpec": "AES_256", "NumberOfBytes": 32}])
def test_data_key_needs_exactly_one_of_key_spec_and_number_of_bytes(
        kms: Any, key: dict[str, Any], operation: str, params: dict[str, Any]) -> None:
    refused(getattr(kms, operation), "ValidationException",
            "Please specify either number of bytes or key spec.", KeyId=key["KeyId"], **params)


def test_data_key_size_and_spec_are_validated(raw_kms: Any) -> None:
    kid = new_key(raw_kms)["KeyId"]
    refused(raw_kms.generate_data_key, "ValidationException",
            "1 validation error detected: Value '1025' at 'numberOfBytes' failed to satisfy "
            "constraint: Member must have value less than or equal to 1024",
            KeyId=kid, NumberOfBytes=1025)
    refused(raw_kms.generate_data_key, "ValidationException",
            "1 validation error detected: Value '0' at 'numberOfBytes' failed to satisfy "
            "constraint: Member must have value greater than or equal to 1",
            KeyId=kid, NumberOfBytes=0)
    err = refused(raw_kms.generate_data_key, "ValidationException",
                  KeyId=kid, KeySpec="AES_512")
    message = err["Error"]["Message"]
    assert message.startswith("1 validation error detected: Value 'AES_512' at 'keySpec' "
                              "failed to satisfy constraint: Member must satisfy enum value set")
    assert "AES_256" in message and "AES_128" in message


def test_generate_data_key_via_alias(kms: Any, key: dict[str, Any]) -> None:
    kms.create_alias(AliasName="alias/dk", TargetKeyId=key["KeyId"])
    out = kms.generate_data_key(KeyId="alias/dk", KeySpec="AES_128")
    assert out["KeyId"] == key["Arn"]
    assert kms.decrypt(CiphertextBlob=out["CiphertextBlob"])["Plaintext"] == out["Plaintext"]


def test_generate_data_key_without_plaintext(kms: Any, key: dict[str, Any]) -> None:
    out = kms.generate_data_key_without_plaintext(KeyId=key["KeyId"], KeySpec="AES_256",
                                                  EncryptionContext={"use": "disk"})
    assert "Plaintext" not in out
    assert out["KeyId"] == key["Arn"]
    assert out["KeyMaterialId"] == key["CurrentKeyMaterialId"]
    dec = kms.decrypt(CiphertextBlob=out["CiphertextBlob"], EncryptionContext={"use": "disk"})
    assert len(dec["Plaintext"]) == 32

    out = kms.generate_data_key_without_plaintext(KeyId=key["KeyId"], NumberOfBytes=7)
    assert len(kms.decrypt(CiphertextBlob=out["CiphertextBlob"])["Plaintext"]) == 7


# -- GenerateRandom -------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 32, 1024])
def test_generate_random_sizes(kms: Any, size: int) -> None:
    assert len(kms.generate_random(NumberOfBytes=size)["Plaintext"]) == size


def test_generate_random_is_random(kms: Any) -> None:
    a = kms.generate_random(NumberOfBytes=32)["Plaintext"]
    b = kms.generate_random(NumberOfBytes=32)["Plaintext"]
    assert a != b


def test_generate_random_needs_number_of_bytes(kms: Any) -> None:
    refused(kms.generate_random, "ValidationException", "NumberOfBytes is required.")


@pytest.mark.parametrize(("size", "rule"), [
    (0, "have value greater than or equal to 1"),
    (1025, "have value less than or equal to 1024"),
])
def test_generate_random_size_out_of_range(raw_kms: Any, size: int, rule: str) -> None:
    refused(raw_kms.generate_random, "ValidationException",
            f"1 validation error detected: Value '{size}' at 'numberOfBytes' failed to satisfy "
            f"constraint: Member must {rule}", NumberOfBytes=size)


# -- DryRun ---------------------------------------------------------------------------------
def test_dry_run_answers_dry_run_operation_exception(kms: Any, key: dict[str, Any]) -> None:
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"p")["CiphertextBlob"]
    refused(kms.encrypt, "DryRunOperationException", DRY_RUN,
            KeyId=key["KeyId"], Plaintext=b"p", DryRun=True)
    refused(kms.decrypt, "DryRunOperationException", DRY_RUN, CiphertextBlob=blob, DryRun=True)
    refused(kms.generate_data_key, "DryRunOperationException", DRY_RUN,
            KeyId=key["KeyId"], KeySpec="AES_256", DryRun=True)
    refused(kms.generate_data_key_without_plaintext, "DryRunOperationException", DRY_RUN,
            KeyId=key["KeyId"], NumberOfBytes=16, DryRun=True)
    refused(kms.re_encrypt, "DryRunOperationException", DRY_RUN,
            CiphertextBlob=blob, DestinationKeyId=key["KeyId"], DryRun=True)


def test_dry_run_still_reports_what_would_fail(kms: Any, key: dict[str, Any]) -> None:
    refused(kms.generate_data_key, "ValidationException",
            "Please specify either number of bytes or key spec.",
            KeyId=key["KeyId"], DryRun=True)
    refused(kms.encrypt, "NotFoundException", KeyId="alias/none", Plaintext=b"p", DryRun=True)
    invalid_ciphertext(kms.decrypt, CiphertextBlob=b"garbage", DryRun=True)


def test_decrypt_dry_run_ignoring_the_ciphertext(kms: Any, key: dict[str, Any]) -> None:
    refused(kms.decrypt, "DryRunOperationException", DRY_RUN, KeyId=key["KeyId"],
            DryRun=True, DryRunModifiers=["IGNORE_CIPHERTEXT"])
