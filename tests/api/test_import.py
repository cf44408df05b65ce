"""Imported key material (Origin EXTERNAL) through a real node and boto3:
GetParametersForImport, ImportKeyMaterial, DeleteImportedKeyMaterial, expiry driven by
the dev clock, and material wrapped offline with ``cryptography`` as a customer would."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from tests.support.expect import advance
from tests.support.expect import refused_message as refused

DAY = 86_400
MATERIAL_ID = re.compile(r"[0-9a-f]{64}")
ALGORITHMS = ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_1",
              "RSA_AES_KEY_WRAP_SHA_256")
KEY_BITS = {"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}


def wrap(algorithm: str, public_der: bytes, material: bytes) -> bytes:
    """What a customer does offline with the public key of GetParametersForImport."""
    public = serialization.load_der_public_key(public_der)
    assert isinstance(public, rsa.RSAPublicKey)
    digest: hashes.HashAlgorithm = hashes.SHA1() if algorithm.endswith("SHA_1") \
        else hashes.SHA256()
    oaep = padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)
    if algorithm.startswith("RSAES_OAEP"):
        return public.encrypt(material, oaep)
    aes_key = os.urandom(32)
    return public.encrypt(aes_key, oaep) + aes_key_wrap_with_padding(aes_key, material)


def import_material(kms: Any, key_id: str, material: bytes, *,
                    algorithm: str = "RSAES_OAEP_SHA_256", spec: str = "RSA_2048",
                    **params: Any) -> dict[str, Any]:
    """GetParametersForImport, wrap offline, ImportKeyMaterial (DOES_NOT_EXPIRE unless
    told otherwise); returns the ImportKeyMaterial response."""
    got = kms.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm=algorithm,
                                        WrappingKeySpec=spec)
    params.setdefault("ExpirationModel", "KEY_MATERIAL_DOES_NOT_EXPIRE")
    response: dict[str, Any] = kms.import_key_material(
        KeyId=key_id, ImportToken=got["ImportToken"],
        EncryptedKeyMaterial=wrap(algorithm, got["PublicKey"], material), **params)
    return response


def new_external(kms: Any, **params: Any) -> dict[str, Any]:
    md: dict[str, Any] = kms.create_key(Origin="EXTERNAL", **params)["KeyMetadata"]
    return md


def state_of(kms: Any, key_id: str) -> str:
    return str(kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"])


def pending_import(arn: str) -> str:
    return f"{arn} is pending import."


# -- CreateKey Origin=EXTERNAL ----------------------------------------------------------------
def test_an_external_key_starts_pending_import_without_material(kms: Any) -> None:
    md = new_external(kms, Description="byok")

    assert md["Origin"] == "EXTERNAL"
    assert md["KeyState"] == "PendingImport"
    assert md["Enabled"] is False
    assert "CurrentKeyMaterialId" not in md
    assert "ExpirationModel" not in md and "ValidTo" not in md
    assert kms.describe_key(KeyId=md["KeyId"])["KeyMetadata"] == md


# -- the wrapping algorithms ------------------------------------------------------------------
CASES = [(a, "RSA_2048") for a in ALGORITHMS] + [
    ("RSAES_OAEP_SHA_256", "RSA_3072"),
    ("RSA_AES_KEY_WRAP_SHA_256", "RSA_4096"),
]


@pytest.mark.parametrize(("algorithm", "spec"), CASES)
def test_import_with_each_wrapping_algorithm_and_key_spec(kms: Any, server: Any,
                                                          algorithm: str, spec: str) -> None:
    md = new_external(kms)
    key_id = md["KeyId"]

    got = kms.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm=algorithm,
                                        WrappingKeySpec=spec)
    now = advance(server, 0)
    assert got["KeyId"] == md["Arn"]
    assert got["ParametersValidTo"].timestamp() == pytest.approx(now + DAY, abs=60)
    public = serialization.load_der_public_key(got["PublicKey"])
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == KEY_BITS[spec]
    assert 1 <= len(got["ImportToken"]) <= 6144

    material = os.urandom(32)
    imported = kms.import_key_material(
        KeyId=key_id, ImportToken=got["ImportToken"],
        EncryptedKeyMaterial=wrap(algorithm, got["PublicKey"], material),
        ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")

    assert imported["KeyId"] == md["Arn"]
    assert MATERIAL_ID.fullmatch(imported["KeyMaterialId"])
    described = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert described["KeyState"] == "Enabled" and described["Enabled"] is True
    assert described["CurrentKeyMaterialId"] == imported["KeyMaterialId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"imported")["CiphertextBlob"]
    opened = kms.decrypt(CiphertextBlob=blob)
    assert opened["Plaintext"] == b"imported"
    assert opened["KeyMaterialId"] == imported["KeyMaterialId"]


def test_describe_key_shows_the_expiration_model(kms: Any, server: Any) -> None:
    forever = new_external(kms)["KeyId"]
    import_material(kms, forever, os.urandom(32))
    expiring = new_external(kms)["KeyId"]
    valid_to = advance(server, 0) + 3 * DAY
    import_material(kms, expiring, os.urandom(32), ExpirationModel="KEY_MATERIAL_EXPIRES",
                    ValidTo=valid_to)

    md = kms.describe_key(KeyId=forever)["KeyMetadata"]
    assert md["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE" and "ValidTo" not in md
    md = kms.describe_key(KeyId=expiring)["KeyMetadata"]
    assert md["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"
    assert md["ValidTo"].timestamp() == pytest.approx(valid_to, abs=1)


def test_the_wrapping_key_spec_and_algorithm_are_checked(raw_kms: Any) -> None:
    key_id = raw_kms.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]

    refused(raw_kms.get_parameters_for_import, "ValidationException", KeyId=key_id,
            WrappingAlgorithm="RSAES_OAEP_SHA_512", WrappingKeySpec="RSA_2048")
    refused(raw_kms.get_parameters_for_import, "ValidationException", KeyId=key_id,
            WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_1024")


# -- ImportKeyMaterial rules -----------------------------------------------------------------
def test_reimporting_the_same_material_keeps_its_id_and_other_material_is_refused(
        kms: Any) -> None:
    key_id = new_external(kms)["KeyId"]
    material = os.urandom(32)
    first = import_material(kms, key_id, material)
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]

    again = import_material(kms, key_id, material, algorithm="RSA_AES_KEY_WRAP_SHA_1")
    assert again["KeyMaterialId"] == first["KeyMaterialId"]
    assert state_of(kms, key_id) == "Enabled"
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"

    with pytest.raises(ClientError) as info:
        import_material(kms, key_id, os.urandom(32))
    assert info.value.response["Error"]["Code"] == "IncorrectKeyMaterialException"
    assert kms.decrypt(CiphertextBlob=blob)["KeyMaterialId"] == first["KeyMaterialId"]


def test_the_same_bytes_in_two_keys_are_two_materials(kms: Any) -> None:
    material = os.urandom(32)
    a = import_material(kms, new_external(kms)["KeyId"], material)
    b = import_material(kms, new_external(kms)["KeyId"], material)

    assert a["KeyMaterialId"] != b["KeyMaterialId"]


@pytest.mark.parametrize("model", ["KEY_MATERIAL_EXPIRES", None])
def test_expiring_material_needs_valid_to(kms: Any, model: str | None) -> None:
    key_id = new_external(kms)["KeyId"]
    got = kms.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                        WrappingKeySpec="RSA_2048")
    params: dict[str, Any] = {"ExpirationModel": model} if model else {}

    refused(kms.import_key_material, "ValidationException",
            "A validTo date must be set if the ExpirationModel is KEY_MATERIAL_EXPIRES",
            KeyId=key_id, ImportToken=got["ImportToken"],
            EncryptedKeyMaterial=wrap("RSAES_OAEP_SHA_256", got["PublicKey"], os.urandom(32)),
            **params)

    assert state_of(kms, key_id) == "PendingImport"


@pytest.mark.parametrize(("model", "valid_to_days"), [
    ("KEY_MATERIAL_DOES_NOT_EXPIRE", 3),  # ValidTo must be omitted
    ("KEY_MATERIAL_EXPIRES", -1),         # in the past
    ("KEY_MATERIAL_EXPIRES", 366),        # more than 365 days out
])
def test_valid_to_must_fit_the_model(kms: Any, server: Any, model: str,
                                     valid_to_days: int) -> None:
    key_id = new_external(kms)["KeyId"]
    valid_to = advance(server, 0) + valid_to_days * DAY

    with pytest.raises(ClientError) as info:
        import_material(kms, key_id, os.urandom(32), ExpirationModel=model, ValidTo=valid_to)

    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert state_of(kms, key_id) == "PendingImport"


def test_an_import_token_expires_after_24_hours(kms: Any, server: Any) -> None:
    key_id = new_external(kms)["KeyId"]
    got = kms.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                        WrappingKeySpec="RSA_2048")
    wrapped = wrap("RSAES_OAEP_SHA_256", got["PublicKey"], os.urandom(32))

    advance(server, DAY + 1)

    refused(kms.import_key_material, "ExpiredImportTokenException", KeyId=key_id,
            ImportToken=got["ImportToken"], EncryptedKeyMaterial=wrapped,
            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    assert state_of(kms, key_id) == "PendingImport"


def test_an_import_token_is_good_until_it_expires(kms: Any, server: Any) -> None:
    key_id = new_external(kms)["KeyId"]
    got = kms.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                        WrappingKeySpec="RSA_2048")

    advance(server, DAY - 600)

    kms.import_key_material(KeyId=key_id, ImportToken=got["ImportToken"],
                            EncryptedKeyMaterial=wrap("RSAES_OAEP_SHA_256", got["PublicKey"],
                                                      os.urandom(32)),
                            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    assert state_of(kms, key_id) == "Enabled"


def test_an_import_token_belongs_to_its_key(kms: Any) -> None:
    mine = new_external(kms)["KeyId"]
    other = new_external(kms)["KeyId"]
    got = kms.get_parameters_for_import(KeyId=other, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                        WrappingKeySpec="RSA_2048")

    refused(kms.import_key_material, "InvalidImportTokenException", KeyId=mine,
            ImportToken=got["ImportToken"],
            EncryptedKeyMaterial=wrap("RSAES_OAEP_SHA_256", got["PublicKey"], os.urandom(32)),
            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    refused(kms.import_key_material, "InvalidImportTokenException", KeyId=mine,
            ImportToken=b"not a token", EncryptedKeyMaterial=b"x" * 256,
            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")


@pytest.mark.parametrize("algorithm", ["RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_256"])
def test_material_that_does_not_unwrap_is_an_invalid_ciphertext(kms: Any,
                                                                algorithm: str) -> None:
    key_id = new_external(kms)["KeyId"]
    got = kms.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm=algorithm,
                                        WrappingKeySpec="RSA_2048")
    wrong_hash = "RSAES_OAEP_SHA_1" if algorithm.startswith("RSAES") else \
        "RSA_AES_KEY_WRAP_SHA_1"
    for wrapped in (os.urandom(256), os.urandom(300), b"\x01",
                    wrap(wrong_hash, got["PublicKey"], os.urandom(32))):
        refused(kms.import_key_material, "InvalidCiphertextException", KeyId=key_id,
                ImportToken=got["ImportToken"], EncryptedKeyMaterial=wrapped,
                ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    assert state_of(kms, key_id) == "PendingImport"


def test_a_symmetric_key_takes_256_bit_material_only(kms: Any) -> None:
    key_id = new_external(kms)["KeyId"]

    with pytest.raises(ClientError) as info:
        import_material(kms, key_id, os.urandom(16))

    assert info.value.response["Error"]["Code"] == "IncorrectKeyMaterialException"
    assert state_of(kms, key_id) == "PendingImport"


# -- DeleteImportedKeyMaterial and expiry -----------------------------------------------------
def test_deleting_imported_material_and_importing_it_again(kms: Any) -> None:
    md = new_external(kms)
    key_id, arn = md["KeyId"], md["Arn"]
    material = os.urandom(32)
    material_id = import_material(kms, key_id, material)["KeyMaterialId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"survives")["CiphertextBlob"]

    response = kms.delete_imported_key_material(KeyId=key_id)

    assert response["KeyId"] == arn
    described = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert described["KeyState"] == "PendingImport" and described["Enabled"] is False
    assert described["CurrentKeyMaterialId"] == material_id  # AWS keeps showing it
    assert "ExpirationModel" not in described
    assert response["KeyMaterialId"] == material_id
    refused(kms.encrypt, "KMSInvalidStateException", pending_import(arn), KeyId=key_id,
            Plaintext=b"x")
    refused(kms.decrypt, "KMSInvalidStateException", pending_import(arn), CiphertextBlob=blob)
    refused(kms.generate_data_key, "KMSInvalidStateException", pending_import(arn),
            KeyId=key_id, KeySpec="AES_256")
    kms.delete_imported_key_material(KeyId=key_id)  # again: no effect
    assert state_of(kms, key_id) == "PendingImport"

    again = import_material(kms, key_id, material)

    assert again["KeyMaterialId"] == material_id
    assert state_of(kms, key_id) == "Enabled"
    opened = kms.decrypt(CiphertextBlob=blob)
    assert opened["Plaintext"] == b"survives" and opened["KeyMaterialId"] == material_id


def test_deleting_material_of_a_disabled_key_leaves_it_pending_import(kms: Any) -> None:
    key_id = new_external(kms)["KeyId"]
    material = os.urandom(32)
    import_material(kms, key_id, material)
    kms.disable_key(KeyId=key_id)

    kms.delete_imported_key_material(KeyId=key_id)
    assert state_of(kms, key_id) == "PendingImport"

    import_material(kms, key_id, material)
    assert state_of(kms, key_id) == "Enabled"


def test_deleting_material_of_a_key_pending_deletion_keeps_it_pending_deletion(
        kms: Any) -> None:
    key_id = new_external(kms)["KeyId"]
    import_material(kms, key_id, os.urandom(32))
    kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)

    kms.delete_imported_key_material(KeyId=key_id)

    assert state_of(kms, key_id) == "PendingDeletion"


def test_expiring_material_is_deleted_at_valid_to(kms: Any, server: Any) -> None:
    md = new_external(kms)
    key_id, arn = md["KeyId"], md["Arn"]
    material = os.urandom(32)
    valid_to = advance(server, 0) + 2 * DAY
    imported = import_material(kms, key_id, material, ExpirationModel="KEY_MATERIAL_EXPIRES",
                               ValidTo=valid_to)
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"until then")["CiphertextBlob"]
    [entry] = kms.list_key_rotations(KeyId=key_id,
                                     IncludeKeyMaterial="ALL_KEY_MATERIAL")["Rotations"]
    assert entry["KeyMaterialId"] == imported["KeyMaterialId"]
    assert entry["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"
    assert entry["ValidTo"].timestamp() == pytest.approx(valid_to, abs=1)

    advance(server, 2 * DAY - 60)
    assert state_of(kms, key_id) == "Enabled"
    advance(server, 120)

    assert state_of(kms, key_id) == "PendingImport"
    refused(kms.decrypt, "KMSInvalidStateException", pending_import(arn), CiphertextBlob=blob)
    import_material(kms, key_id, material)  # now without expiry
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"until then"
    advance(server, 30 * DAY)
    assert state_of(kms, key_id) == "Enabled"


# -- keys whose material KMS generated --------------------------------------------------------
def test_import_operations_refuse_a_key_whose_material_kms_generated(kms: Any) -> None:
    md = kms.create_key()["KeyMetadata"]
    message = f"{md['Arn']} origin is AWS_KMS which is not valid for this operation."

    refused(kms.get_parameters_for_import, "UnsupportedOperationException", message,
            KeyId=md["KeyId"], WrappingAlgorithm="RSAES_OAEP_SHA_256",
            WrappingKeySpec="RSA_2048")
    refused(kms.import_key_material, "UnsupportedOperationException", message,
            KeyId=md["KeyId"], ImportToken=os.urandom(32), EncryptedKeyMaterial=b"x" * 256,
            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    refused(kms.delete_imported_key_material, "UnsupportedOperationException", message,
            KeyId=md["KeyId"])
    assert state_of(kms, md["KeyId"]) == "Enabled"


# -- asymmetric and HMAC material -------------------------------------------------------------
def test_an_imported_ecc_private_key_signs_for_its_own_public_key(kms: Any) -> None:
    md = new_external(kms, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    assert md["KeyState"] == "PendingImport"
    private = ec.generate_private_key(ec.SECP256R1())
    pkcs8 = private.private_bytes(serialization.Encoding.DER,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    public_der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    imported = import_material(kms, md["KeyId"], pkcs8, algorithm="RSA_AES_KEY_WRAP_SHA_256")

    assert imported["KeyId"] == md["Arn"]
    assert state_of(kms, md["KeyId"]) == "Enabled"
    assert kms.get_public_key(KeyId=md["KeyId"])["PublicKey"] == public_der
    message = b"signed by my own key"
    signature = kms.sign(KeyId=md["KeyId"], Message=message,
                         SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    private.public_key().verify(signature, message, ec.ECDSA(hashes.SHA256()))  # raises if bad
    assert kms.verify(KeyId=md["KeyId"], Message=message, Signature=signature,
                      SigningAlgorithm="ECDSA_SHA_256")["SignatureValid"] is True


def test_an_asymmetric_key_takes_a_private_key_of_its_own_spec_only(kms: Any) -> None:
    key_id = new_external(kms, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyId"]
    wrong = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())

    for material in (wrong, os.urandom(64)):
        with pytest.raises(ClientError) as info:
            import_material(kms, key_id, material, algorithm="RSA_AES_KEY_WRAP_SHA_256")
        assert info.value.response["Error"]["Code"] == "IncorrectKeyMaterialException"
    assert state_of(kms, key_id) == "PendingImport"


def test_imported_hmac_material_macs_like_offline_hmac(kms: Any) -> None:
    md = new_external(kms, KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
    material = os.urandom(32)

    import_material(kms, md["KeyId"], material)

    message = b"authenticate me"
    expected = hmac.new(material, message, hashlib.sha256).digest()
    got = kms.generate_mac(KeyId=md["KeyId"], Message=message, MacAlgorithm="HMAC_SHA_256")
    assert got["Mac"] == expected
    assert kms.verify_mac(KeyId=md["KeyId"], Message=message, Mac=expected,
                          MacAlgorithm="HMAC_SHA_256")["MacValid"] is True


# -- ImportType NEW_KEY_MATERIAL and on-demand rotation of imported material ----------------
def entries(kms: Any, key_id: str, everything: bool = True) -> list[dict[str, Any]]:
    params = {"IncludeKeyMaterial": "ALL_KEY_MATERIAL"} if everything else {}
    out: list[dict[str, Any]] = kms.list_key_rotations(KeyId=key_id, **params)["Rotations"]
    return out


def current_id(kms: Any, key_id: str) -> str:
    return str(kms.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"])


def test_new_key_material_rotates_on_demand_and_every_material_still_decrypts(
        kms: Any, server: Any) -> None:
    md = new_external(kms)
    key_id, arn = md["KeyId"], md["Arn"]
    first = import_material(kms, key_id, os.urandom(32),
                            KeyMaterialDescription="first")["KeyMaterialId"]
    old_blob = kms.encrypt(KeyId=key_id, Plaintext=b"old")["CiphertextBlob"]
    assert entries(kms, key_id, everything=False) == []
    assert entries(kms, key_id) == [{
        "KeyId": arn, "KeyMaterialId": first, "KeyMaterialDescription": "first",
        "ImportState": "IMPORTED", "KeyMaterialState": "CURRENT",
        "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}]

    valid_to = advance(server, 0) + 30 * DAY
    second = import_material(kms, key_id, os.urandom(32), ImportType="NEW_KEY_MATERIAL",
                             ExpirationModel="KEY_MATERIAL_EXPIRES", ValidTo=valid_to,
                             KeyMaterialDescription="second")["KeyMaterialId"]

    assert second != first
    assert current_id(kms, key_id) == first  # pending until RotateKeyOnDemand
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["KeyMaterialId"] == first
    pending = entries(kms, key_id)[1]
    assert pending["KeyMaterialId"] == second
    assert pending["KeyMaterialState"] == "PENDING_ROTATION"
    assert pending["ImportState"] == "IMPORTED"
    assert pending["KeyMaterialDescription"] == "second"
    assert pending["ValidTo"].timestamp() == pytest.approx(valid_to, abs=1)
    assert "RotationDate" not in pending and "RotationType" not in pending
    assert entries(kms, key_id, everything=False) == []

    assert kms.rotate_key_on_demand(KeyId=key_id)["KeyId"] == arn

    assert current_id(kms, key_id) == second
    new_blob = kms.encrypt(KeyId=key_id, Plaintext=b"new")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=new_blob)["KeyMaterialId"] == second
    opened = kms.decrypt(CiphertextBlob=old_blob)
    assert (opened["Plaintext"], opened["KeyMaterialId"]) == (b"old", first)
    [rotation] = entries(kms, key_id, everything=False)
    assert rotation["KeyMaterialId"] == second and rotation["KeyMaterialState"] == "CURRENT"
    assert rotation["RotationType"] == "ON_DEMAND" and "RotationDate" in rotation
    listed = entries(kms, key_id)
    assert [(e["KeyMaterialId"], e["KeyMaterialState"]) for e in listed] == [
        (first, "NON_CURRENT"), (second, "CURRENT")]
    described = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert described["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"
    assert described["ValidTo"].timestamp() == pytest.approx(valid_to, abs=1)


def test_rotate_on_demand_needs_material_pending_rotation(kms: Any) -> None:
    md = new_external(kms)
    import_material(kms, md["KeyId"], os.urandom(32))

    refused(kms.rotate_key_on_demand, "KMSInvalidStateException",
            f"No available key material pending rotation for the key: {md['Arn']}.",
            KeyId=md["KeyId"])
    assert len(entries(kms, md["KeyId"])) == 1


def test_only_one_material_may_wait_for_rotation(kms: Any) -> None:
    key_id = new_external(kms)["KeyId"]
    import_material(kms, key_id, os.urandom(32))
    pending = import_material(kms, key_id, os.urandom(32),
                              ImportType="NEW_KEY_MATERIAL")["KeyMaterialId"]
    third = os.urandom(32)

    message = refused(kms.import_key_material, "KMSInvalidStateException",
                      **_import_request(kms, key_id, third, ImportType="NEW_KEY_MATERIAL"))

    third_id = re.search(r"New key material \(id: ([0-9a-f]{64})\)", message)
    assert third_id is not None
    assert message == (f"New key material (id: {third_id.group(1)}) cannot be imported into "
                       f"KMS key {key_id}, because another key material (id: {pending}) is "
                       "pending rotation.")
    assert len(entries(kms, key_id)) == 2

    # Pending material is not permanently associated: it may be deleted and replaced.
    gone = kms.delete_imported_key_material(KeyId=key_id, KeyMaterialId=pending)
    assert gone["KeyMaterialId"] == pending
    assert state_of(kms, key_id) == "Enabled"
    assert [e["KeyMaterialState"] for e in entries(kms, key_id)] == ["CURRENT"]
    replaced = import_material(kms, key_id, third, ImportType="NEW_KEY_MATERIAL")
    assert replaced["KeyMaterialId"] == third_id.group(1)
    kms.rotate_key_on_demand(KeyId=key_id)
    assert current_id(kms, key_id) == third_id.group(1)


def _import_request(kms: Any, key_id: str, material: bytes, **params: Any) -> dict[str, Any]:
    got = kms.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                        WrappingKeySpec="RSA_2048")
    params.setdefault("ExpirationModel", "KEY_MATERIAL_DOES_NOT_EXPIRE")
    return {"KeyId": key_id, "ImportToken": got["ImportToken"],
            "EncryptedKeyMaterial": wrap("RSAES_OAEP_SHA_256", got["PublicKey"], material),
            **params}


def test_import_type_rules(raw_kms: Any) -> None:
    kms = raw_kms
    key_id = new_external(kms)["KeyId"]
    material = os.urandom(32)
    first = import_material(kms, key_id, material)["KeyMaterialId"]

    refused(kms.import_key_material, "ValidationException",
            "You cannot specify a key material ID with ImportType set to NEW_KEY_MATERIAL.",
            **_import_request(kms, key_id, os.urandom(32), ImportType="NEW_KEY_MATERIAL",
                              KeyMaterialId=first))
    # EXISTING_KEY_MATERIAL (the default once a key has material) takes known bytes only,
    # and a KeyMaterialId given must be theirs.
    refused(kms.import_key_material, "IncorrectKeyMaterialException",
            **_import_request(kms, key_id, os.urandom(32),
                              ImportType="EXISTING_KEY_MATERIAL"))
    refused(kms.import_key_material, "IncorrectKeyMaterialException",
            **_import_request(kms, key_id, material, KeyMaterialId="0" * 64))
    again = import_material(kms, key_id, material, KeyMaterialId=first,
                            ImportType="EXISTING_KEY_MATERIAL")
    assert again["KeyMaterialId"] == first
    # The same bytes are not new material.
    refused(kms.import_key_material, "IncorrectKeyMaterialException",
            **_import_request(kms, key_id, material, ImportType="NEW_KEY_MATERIAL"))
    assert len(entries(kms, key_id)) == 1

    # Asymmetric and HMAC keys take one material for life and no ImportType.
    hmac_key = new_external(kms, KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyId"]
    refused(kms.import_key_material, "UnsupportedOperationException",
            **_import_request(kms, hmac_key, os.urandom(32), ImportType="NEW_KEY_MATERIAL"))
    assert state_of(kms, hmac_key) == "PendingImport"


def test_deleting_a_non_current_material_waits_for_it_again(kms: Any) -> None:
    md = new_external(kms)
    key_id, arn = md["KeyId"], md["Arn"]
    old_material = os.urandom(32)
    first = import_material(kms, key_id, old_material)["KeyMaterialId"]
    old_blob = kms.encrypt(KeyId=key_id, Plaintext=b"old")["CiphertextBlob"]
    second = import_material(kms, key_id, os.urandom(32),
                             ImportType="NEW_KEY_MATERIAL")["KeyMaterialId"]
    kms.rotate_key_on_demand(KeyId=key_id)
    new_blob = kms.encrypt(KeyId=key_id, Plaintext=b"new")["CiphertextBlob"]

    kms.delete_imported_key_material(KeyId=key_id, KeyMaterialId=first)

    # Any permanently associated material missing makes the whole key wait for it.
    assert state_of(kms, key_id) == "PendingImport"
    assert current_id(kms, key_id) == second
    assert [(e["KeyMaterialId"], e["ImportState"]) for e in entries(kms, key_id)] == [
        (first, "PENDING_IMPORT"), (second, "IMPORTED")]
    refused(kms.decrypt, "KMSInvalidStateException", pending_import(arn), CiphertextBlob=new_blob)
    refused(kms.import_key_material, "IncorrectKeyMaterialException",
            **_import_request(kms, key_id, os.urandom(32)))

    import_material(kms, key_id, old_material)  # EXISTING_KEY_MATERIAL by default

    assert state_of(kms, key_id) == "Enabled"
    assert kms.decrypt(CiphertextBlob=old_blob)["Plaintext"] == b"old"
    assert kms.decrypt(CiphertextBlob=new_blob)["Plaintext"] == b"new"
    assert current_id(kms, key_id) == second
