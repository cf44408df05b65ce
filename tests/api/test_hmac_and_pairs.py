"""HMAC keys (GenerateMac / VerifyMac) and data key pairs (GenerateDataKeyPair,
GenerateDataKeyPairWithoutPlaintext) through a real node and boto3.

The node is reset once for this module and each key is created once: the per-test-reset
`kms` fixture is deliberately not used here. Expected values come from the reference
(kms_api.md §4.4 and §5.1), not from the server's own tables.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from tests.support.expect import refused

# key spec -> (its one MAC algorithm, MAC length in bytes, hashlib name)
HMAC_SPECS = {"HMAC_224": ("HMAC_SHA_224", 28, "sha224"),
              "HMAC_256": ("HMAC_SHA_256", 32, "sha256"),
              "HMAC_384": ("HMAC_SHA_384", 48, "sha384"),
              "HMAC_512": ("HMAC_SHA_512", 64, "sha512")}
MAC_ALGORITHMS = [alg for alg, _, _ in HMAC_SPECS.values()]
ALGORITHM_FIELDS = ("EncryptionAlgorithms", "SigningAlgorithms", "MacAlgorithms",
                    "KeyAgreementAlgorithms")
PAIR_SPECS = ("RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384",
              "ECC_NIST_P521", "ECC_SECG_P256K1", "ECC_NIST_EDWARDS25519")
RSA_BITS = {"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}
CURVES = {"ECC_NIST_P256": "secp256r1", "ECC_NIST_P384": "secp384r1",
          "ECC_NIST_P521": "secp521r1", "ECC_SECG_P256K1": "secp256k1"}
MESSAGE = b"Pack my box with five dozen liquor jugs"
CONTEXT = {"purpose": "data-key-pair", "tenant": "acme"}


def flipped(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def spki(key: Any) -> bytes:
    public = key.public_key() if hasattr(key, "public_key") else key
    return bytes(public.public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo))


# -- module fixtures: one reset, keys created once ----------------------------------------------
@pytest.fixture(scope="module")
def hmac_keys(client: Any) -> dict[str, dict[str, Any]]:
    return {spec: client.create_key(KeySpec=spec, KeyUsage="GENERATE_VERIFY_MAC",
                                    Description=spec)["KeyMetadata"]
            for spec in HMAC_SPECS}


@pytest.fixture(scope="module")
def symmetric(client: Any) -> dict[str, Any]:
    md: dict[str, Any] = client.create_key(Description="wrapping key")["KeyMetadata"]
    return md


@pytest.fixture(scope="module")
def signer(client: Any) -> dict[str, Any]:
    md: dict[str, Any] = client.create_key(KeySpec="ECC_NIST_P256",
                                           KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    return md


# -- HMAC keys: CreateKey / DescribeKey ---------------------------------------------------------
@pytest.mark.parametrize("spec", list(HMAC_SPECS))
def test_hmac_key_reports_exactly_its_one_mac_algorithm(
        client: Any, hmac_keys: dict[str, dict[str, Any]], spec: str) -> None:
    created = hmac_keys[spec]
    described = client.describe_key(KeyId=created["KeyId"])["KeyMetadata"]
    assert described == created
    for md in (created, described):
        assert md["KeySpec"] == spec
        assert md["CustomerMasterKeySpec"] == spec
        assert md["KeyUsage"] == "GENERATE_VERIFY_MAC"
        assert md["KeyState"] == "Enabled"
        assert md["MacAlgorithms"] == [HMAC_SPECS[spec][0]]
        for other in set(ALGORITHM_FIELDS) - {"MacAlgorithms"}:
            assert other not in md, other


@pytest.mark.parametrize("spec", list(HMAC_SPECS))
def test_hmac_spec_without_key_usage_is_refused(client: Any, spec: str) -> None:
    refused(client.create_key, "ValidationException",
            "You must specify a KeyUsage value for all KMS keys except for symmetric "
            "encryption keys.", KeySpec=spec)


@pytest.mark.parametrize("spec", list(HMAC_SPECS))
@pytest.mark.parametrize("usage", ["ENCRYPT_DECRYPT", "SIGN_VERIFY", "KEY_AGREEMENT"])
def test_hmac_spec_with_another_usage_is_refused(client: Any, spec: str, usage: str) -> None:
    response = refused(client.create_key, "ValidationException", KeySpec=spec, KeyUsage=usage)
    assert response["Error"]["Message"]


# -- GenerateMac / VerifyMac --------------------------------------------------------------------
@pytest.mark.parametrize("spec", list(HMAC_SPECS))
def test_generate_mac_is_deterministic_sized_and_verifies(
        client: Any, hmac_keys: dict[str, dict[str, Any]], spec: str) -> None:
    md = hmac_keys[spec]
    algorithm, length, _ = HMAC_SPECS[spec]
    first = client.generate_mac(KeyId=md["KeyId"], Message=MESSAGE, MacAlgorithm=algorithm)
    assert (first["KeyId"], first["MacAlgorithm"]) == (md["Arn"], algorithm)
    assert len(first["Mac"]) == length
    assert client.generate_mac(KeyId=md["Arn"], Message=MESSAGE,
                               MacAlgorithm=algorithm)["Mac"] == first["Mac"]
    others = {client.generate_mac(KeyId=md["KeyId"], Message=m, MacAlgorithm=algorithm)["Mac"]
              for m in (MESSAGE + b".", MESSAGE[:-1], b"\x00", b"\x00" * 4096)}
    assert len(others) == 4 and first["Mac"] not in others

    out = client.verify_mac(KeyId=md["KeyId"], Message=MESSAGE, Mac=first["Mac"],
                            MacAlgorithm=algorithm)
    assert out == {**out, "KeyId": md["Arn"], "MacValid": True, "MacAlgorithm": algorithm}


@pytest.mark.parametrize("spec", list(HMAC_SPECS))
def test_a_wrong_mac_is_kms_invalid_mac_never_false(
        client: Any, hmac_keys: dict[str, dict[str, Any]], spec: str) -> None:
    md = hmac_keys[spec]
    algorithm = HMAC_SPECS[spec][0]
    mac = client.generate_mac(KeyId=md["KeyId"], Message=MESSAGE, MacAlgorithm=algorithm)["Mac"]
    for message, bad in ((MESSAGE, flipped(mac, 0)),
                         (MESSAGE, flipped(mac, len(mac) - 1)),
                         (MESSAGE, mac[:-1]),                # truncated
                         (MESSAGE, mac + b"\x00"),           # extended
                         (MESSAGE, mac[:16]),                # a prefix
                         (MESSAGE + b"!", mac)):             # another message
        refused(client.verify_mac, "KMSInvalidMacException", "", KeyId=md["KeyId"],
                Message=message, Mac=bad, MacAlgorithm=algorithm)


def test_two_keys_of_the_same_spec_give_different_macs(
        client: Any, hmac_keys: dict[str, dict[str, Any]]) -> None:
    other = client.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    a = client.generate_mac(KeyId=hmac_keys["HMAC_256"]["KeyId"], Message=MESSAGE,
                            MacAlgorithm="HMAC_SHA_256")["Mac"]
    b = client.generate_mac(KeyId=other["KeyId"], Message=MESSAGE,
                            MacAlgorithm="HMAC_SHA_256")["Mac"]
    assert a != b
    refused(client.verify_mac, "KMSInvalidMacException", "", KeyId=other["KeyId"],
            Message=MESSAGE, Mac=a, MacAlgorithm="HMAC_SHA_256")


@pytest.mark.parametrize("spec", list(HMAC_SPECS))
def test_a_mac_algorithm_of_another_spec_is_invalid_key_usage(
        client: Any, hmac_keys: dict[str, dict[str, Any]], spec: str) -> None:
    md = hmac_keys[spec]
    for algorithm in MAC_ALGORITHMS:
        if algorithm == HMAC_SPECS[spec][0]:
            continue
        message = f"Algorithm {algorithm} is incompatible with key spec {spec}."
        refused(client.generate_mac, "InvalidKeyUsageException", message, KeyId=md["KeyId"],
                Message=MESSAGE, MacAlgorithm=algorithm)
        refused(client.verify_mac, "InvalidKeyUsageException", message, KeyId=md["KeyId"],
                Message=MESSAGE, Mac=b"\x00" * 32, MacAlgorithm=algorithm)


def test_the_documented_mac_mismatch_message(
        client: Any, hmac_keys: dict[str, dict[str, Any]]) -> None:
    refused(client.generate_mac, "InvalidKeyUsageException",
            "Algorithm HMAC_SHA_256 is incompatible with key spec HMAC_224.",
            KeyId=hmac_keys["HMAC_224"]["KeyId"], Message=MESSAGE, MacAlgorithm="HMAC_SHA_256")


def test_mac_operations_on_keys_of_another_usage_are_invalid_key_usage(
        client: Any, symmetric: dict[str, Any], signer: dict[str, Any]) -> None:
    for md, usage in ((symmetric, "ENCRYPT_DECRYPT"), (signer, "SIGN_VERIFY")):
        refused(client.generate_mac, "InvalidKeyUsageException",
                f"{md['Arn']} key usage is {usage} which is not valid for GenerateMac.",
                KeyId=md["KeyId"], Message=MESSAGE, MacAlgorithm="HMAC_SHA_256")
        refused(client.verify_mac, "InvalidKeyUsageException",
                f"{md['Arn']} key usage is {usage} which is not valid for VerifyMac.",
                KeyId=md["KeyId"], Message=MESSAGE, Mac=b"\x00" * 32,
                MacAlgorithm="HMAC_SHA_256")


def test_hmac_keys_refuse_the_other_key_operations(
        client: Any, hmac_keys: dict[str, dict[str, Any]]) -> None:
    md = hmac_keys["HMAC_256"]
    usage = f"{md['Arn']} key usage is GENERATE_VERIFY_MAC which is not valid for"
    refused(client.encrypt, "InvalidKeyUsageException", f"{usage} Encrypt.",
            KeyId=md["KeyId"], Plaintext=b"p")
    refused(client.sign, "InvalidKeyUsageException", f"{usage} Sign.",
            KeyId=md["KeyId"], Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_256")
    refused(client.generate_data_key, "InvalidKeyUsageException", KeyId=md["KeyId"],
            KeySpec="AES_256")
    with pytest.raises(ClientError) as info:  # no public half
        client.get_public_key(KeyId=md["KeyId"])
    assert info.value.response["Error"]["Code"] in ("InvalidKeyUsageException",
                                                     "UnsupportedOperationException")


def test_mac_message_bounds_are_checked_by_the_server(
        raw: Any, hmac_keys: dict[str, dict[str, Any]]) -> None:
    kid = hmac_keys["HMAC_512"]["KeyId"]
    assert len(raw.generate_mac(KeyId=kid, Message=b"m" * 4096,
                                MacAlgorithm="HMAC_SHA_512")["Mac"]) == 64
    for message in (b"", b"m" * 4097):
        refused(raw.generate_mac, "ValidationException", KeyId=kid, Message=message,
                MacAlgorithm="HMAC_SHA_512")
    refused(raw.generate_mac, "ValidationException", KeyId=kid, Message=MESSAGE,
            MacAlgorithm="HMAC_SHA_1")
    refused(raw.verify_mac, "ValidationException", KeyId=kid, Message=MESSAGE,
            MacAlgorithm="HMAC_SHA_512")  # no Mac


def test_mac_dry_run_stops_before_the_mac(
        client: Any, hmac_keys: dict[str, dict[str, Any]]) -> None:
    kid = hmac_keys["HMAC_384"]["KeyId"]
    dry = "The request would have succeeded, but the DryRun option is set."
    refused(client.generate_mac, "DryRunOperationException", dry, KeyId=kid, Message=MESSAGE,
            MacAlgorithm="HMAC_SHA_384", DryRun=True)
    refused(client.verify_mac, "DryRunOperationException", dry, KeyId=kid, Message=MESSAGE,
            Mac=b"\x00" * 48, MacAlgorithm="HMAC_SHA_384", DryRun=True)
    # DryRun does not hide a usage error
    refused(client.generate_mac, "InvalidKeyUsageException", KeyId=kid, Message=MESSAGE,
            MacAlgorithm="HMAC_SHA_256", DryRun=True)


def _import_hmac(client: Any, spec: str, material: bytes) -> str:
    kid: str = client.create_key(KeySpec=spec, KeyUsage="GENERATE_VERIFY_MAC",
                                 Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    params = client.get_parameters_for_import(KeyId=kid, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                              WrappingKeySpec="RSA_2048")
    wrapping: Any = serialization.load_der_public_key(params["PublicKey"])
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    client.import_key_material(KeyId=kid, ImportToken=params["ImportToken"],
                               EncryptedKeyMaterial=wrapping.encrypt(material, oaep),
                               ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    return kid


@pytest.mark.parametrize("spec", list(HMAC_SPECS))
def test_generate_mac_is_rfc_2104_hmac_of_imported_material(client: Any, spec: str) -> None:
    """KMS-generated material is secret, so import known material and compare offline."""
    algorithm, length, name = HMAC_SPECS[spec]
    material = os.urandom(length)
    kid = _import_hmac(client, spec, material)
    for message in (MESSAGE, b"\x00", os.urandom(4096)):
        expected = hmac.new(material, message, name).digest()
        assert client.generate_mac(KeyId=kid, Message=message,
                                   MacAlgorithm=algorithm)["Mac"] == expected
        assert client.verify_mac(KeyId=kid, Message=message, Mac=expected,
                                 MacAlgorithm=algorithm)["MacValid"] is True
    # a MAC computed offline with any other key is refused
    refused(client.verify_mac, "KMSInvalidMacException", "", KeyId=kid, Message=MESSAGE,
            Mac=hmac.new(os.urandom(length), MESSAGE, name).digest(), MacAlgorithm=algorithm)


def test_disabled_hmac_key_refuses_mac_operations(client: Any) -> None:
    md = client.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    mac = client.generate_mac(KeyId=md["KeyId"], Message=MESSAGE,
                              MacAlgorithm="HMAC_SHA_256")["Mac"]
    client.disable_key(KeyId=md["KeyId"])
    refused(client.generate_mac, "DisabledException", f"{md['Arn']} is disabled.",
            KeyId=md["KeyId"], Message=MESSAGE, MacAlgorithm="HMAC_SHA_256")
    refused(client.verify_mac, "DisabledException", f"{md['Arn']} is disabled.",
            KeyId=md["KeyId"], Message=MESSAGE, Mac=mac, MacAlgorithm="HMAC_SHA_256")
    client.enable_key(KeyId=md["KeyId"])
    assert client.generate_mac(KeyId=md["KeyId"], Message=MESSAGE,
                               MacAlgorithm="HMAC_SHA_256")["Mac"] == mac  # same material


def test_hmac_digest_sanity() -> None:
    """The expected lengths above are the hash output sizes."""
    for _, length, name in HMAC_SPECS.values():
        assert hashlib.new(name).digest_size == length


# -- GenerateDataKeyPair ------------------------------------------------------------------------
def assert_private_key_of_spec(private: Any, spec: str) -> None:
    if spec in RSA_BITS:
        assert isinstance(private, rsa.RSAPrivateKey)
        assert private.key_size == RSA_BITS[spec]
        assert private.public_key().public_numbers().e == 65537
    elif spec in CURVES:
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.curve.name == CURVES[spec]
    else:
        assert isinstance(private, ed25519.Ed25519PrivateKey)


def assert_key_pair_works(private: Any, public_der: bytes, spec: str) -> None:
    """The private key signs what the returned public key verifies."""
    public: Any = serialization.load_der_public_key(public_der)
    if spec in RSA_BITS:
        sig = private.sign(MESSAGE, padding.PKCS1v15(), hashes.SHA256())
        public.verify(sig, MESSAGE, padding.PKCS1v15(), hashes.SHA256())
    elif spec in CURVES:
        sig = private.sign(MESSAGE, ec.ECDSA(hashes.SHA256()))
        public.verify(sig, MESSAGE, ec.ECDSA(hashes.SHA256()))
    else:
        public.verify(private.sign(MESSAGE), MESSAGE)


@pytest.mark.parametrize("spec", PAIR_SPECS)
def test_generate_data_key_pair(client: Any, symmetric: dict[str, Any], spec: str) -> None:
    out = client.generate_data_key_pair(KeyId=symmetric["KeyId"], KeyPairSpec=spec,
                                        EncryptionContext=CONTEXT)
    assert out["KeyId"] == symmetric["Arn"]
    assert out["KeyPairSpec"] == spec
    assert out["KeyMaterialId"] == symmetric["CurrentKeyMaterialId"]

    pkcs8 = out["PrivateKeyPlaintext"]
    private = serialization.load_der_private_key(pkcs8, password=None)
    assert_private_key_of_spec(private, spec)
    # canonical PKCS#8 DER, and the public key is exactly its SubjectPublicKeyInfo
    assert private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()) == pkcs8
    assert spki(private) == out["PublicKey"]
    assert_key_pair_works(private, out["PublicKey"], spec)

    dec = client.decrypt(CiphertextBlob=out["PrivateKeyCiphertextBlob"],
                         EncryptionContext=dict(reversed(CONTEXT.items())))
    assert dec["Plaintext"] == pkcs8
    assert dec["KeyId"] == symmetric["Arn"]
    assert dec["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    assert pkcs8 not in out["PrivateKeyCiphertextBlob"]
    # the encryption context is bound to the encrypted private key
    for wrong in ({}, {"purpose": "data-key-pair"}, {**CONTEXT, "tenant": "ACME"}):
        refused(client.decrypt, "InvalidCiphertextException", "",
                CiphertextBlob=out["PrivateKeyCiphertextBlob"], EncryptionContext=wrong)


@pytest.mark.parametrize("spec", PAIR_SPECS)
def test_generate_data_key_pair_without_plaintext(
        client: Any, symmetric: dict[str, Any], spec: str) -> None:
    out = client.generate_data_key_pair_without_plaintext(
        KeyId=symmetric["KeyId"], KeyPairSpec=spec, EncryptionContext=CONTEXT)
    assert "PrivateKeyPlaintext" not in out
    assert out["KeyId"] == symmetric["Arn"]
    assert out["KeyPairSpec"] == spec
    assert out["KeyMaterialId"] == symmetric["CurrentKeyMaterialId"]

    pkcs8 = client.decrypt(CiphertextBlob=out["PrivateKeyCiphertextBlob"], KeyId=symmetric["Arn"],
                           EncryptionContext=CONTEXT)["Plaintext"]
    private = serialization.load_der_private_key(pkcs8, password=None)
    assert_private_key_of_spec(private, spec)
    assert spki(private) == out["PublicKey"]
    assert_key_pair_works(private, out["PublicKey"], spec)


def test_each_data_key_pair_is_new(client: Any, symmetric: dict[str, Any]) -> None:
    publics = {client.generate_data_key_pair(KeyId=symmetric["KeyId"],
                                             KeyPairSpec="ECC_NIST_P256")["PublicKey"]
               for _ in range(3)}
    publics.add(client.generate_data_key_pair_without_plaintext(
        KeyId=symmetric["KeyId"], KeyPairSpec="ECC_NIST_P256")["PublicKey"])
    assert len(publics) == 4


def test_sm2_data_key_pairs_are_refused_outside_china(
        client: Any, symmetric: dict[str, Any]) -> None:
    for call in (client.generate_data_key_pair, client.generate_data_key_pair_without_plaintext):
        response = refused(call, "UnsupportedOperationException", KeyId=symmetric["KeyId"],
                           KeyPairSpec="SM2")
        assert "SM2" in response["Error"]["Message"]


def test_data_key_pair_specs_outside_the_enum_are_refused_by_the_server(
        raw: Any, symmetric: dict[str, Any]) -> None:
    for spec in ("ML_DSA_44", "HMAC_256", "RSA_1024"):
        refused(raw.generate_data_key_pair, "ValidationException", KeyId=symmetric["KeyId"],
                KeyPairSpec=spec)
    refused(raw.generate_data_key_pair, "ValidationException", KeyId=symmetric["KeyId"])


def test_data_key_pair_with_a_key_that_cannot_wrap_is_invalid_key_usage(
        client: Any, signer: dict[str, Any], hmac_keys: dict[str, dict[str, Any]]) -> None:
    rsa_enc = client.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]
    hmac_key = hmac_keys["HMAC_256"]
    for call, op in ((client.generate_data_key_pair, "GenerateDataKeyPair"),
                     (client.generate_data_key_pair_without_plaintext,
                      "GenerateDataKeyPairWithoutPlaintext")):
        refused(call, "InvalidKeyUsageException",
                f"{signer['Arn']} key usage is SIGN_VERIFY which is not valid for {op}.",
                KeyId=signer["KeyId"], KeyPairSpec="ECC_NIST_P256")
        refused(call, "InvalidKeyUsageException",
                f"{hmac_key['Arn']} key usage is GENERATE_VERIFY_MAC which is not valid "
                f"for {op}.", KeyId=hmac_key["KeyId"], KeyPairSpec="ECC_NIST_P256")
        # an asymmetric ENCRYPT_DECRYPT key has the right usage but cannot wrap
        refused(call, "InvalidKeyUsageException", KeyId=rsa_enc["KeyId"],
                KeyPairSpec="ECC_NIST_P256")


def test_data_key_pair_with_a_disabled_wrapping_key_is_disabled(client: Any) -> None:
    md = client.create_key()["KeyMetadata"]
    client.disable_key(KeyId=md["KeyId"])
    for call in (client.generate_data_key_pair, client.generate_data_key_pair_without_plaintext):
        refused(call, "DisabledException", f"{md['Arn']} is disabled.", KeyId=md["KeyId"],
                KeyPairSpec="ECC_NIST_P256")
    client.enable_key(KeyId=md["KeyId"])
    assert client.generate_data_key_pair(KeyId=md["KeyId"], KeyPairSpec="ECC_NIST_P256")


def test_data_key_pair_dry_run(client: Any, symmetric: dict[str, Any]) -> None:
    refused(client.generate_data_key_pair, "DryRunOperationException",
            "The request would have succeeded, but the DryRun option is set.",
            KeyId=symmetric["KeyId"], KeyPairSpec="RSA_2048", DryRun=True)

