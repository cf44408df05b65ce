"""Asymmetric and HMAC operations: Sign, Verify, GetPublicKey, DeriveSharedSecret,
GenerateMac, VerifyMac, GenerateDataKeyPair, GenerateDataKeyPairWithoutPlaintext.

Rules: usage is checked before the algorithm, the algorithm before the message;
RSA key generation and RSA signing run in a worker thread so the loop keeps
answering; verification failures raise (never SignatureValid/MacValid false).
"""

from __future__ import annotations

import asyncio
from typing import Any

from kms.crypto import asymmetric, mac
from kms.domain.errors import InvalidKeyUsageException, ValidationException
from kms.domain.key import Key
from kms.domain.specs import (
    ALGORITHM_FIELD,
    GENERATE_VERIFY_MAC,
    KEY_AGREEMENT,
    SIGN_VERIFY,
    SPECS,
)
from kms.service.core import Call, Service, operation
from kms.service.crypto_ops import dry_run, require_symmetric, require_usage, seal_symmetric


def _material(key: Key) -> Any:
    material = key.current_material
    assert material is not None  # an Enabled key always has material
    return material


def _is_rsa(key: Key) -> bool:
    return SPECS[key.key_spec].family == "rsa"


def _signing(svc: Service, call: Call, p: dict[str, Any]) -> tuple[Key, str, str, Any]:
    """What Sign and Verify share: the key, its checks, and its private key object."""
    key = svc.key_for(call, p["KeyId"], call.operation, allow_alias=True)
    require_usage(key, SIGN_VERIFY, call.operation)
    algorithm, message_type = p["SigningAlgorithm"], p.get("MessageType", "RAW")
    asymmetric.check_message(key.key_spec, algorithm, p["Message"], message_type)
    dry_run(p)
    return key, algorithm, message_type, svc.private_key(call, key, _material(key))


@operation("Sign", read_only=True)
async def sign(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key, algorithm, message_type, private = _signing(svc, call, p)
    args = (private, key.key_spec, algorithm, p["Message"], message_type)
    signature = (await asyncio.to_thread(asymmetric.sign, *args) if _is_rsa(key)
                 else asymmetric.sign(*args))
    return {"KeyId": key.arn, "Signature": signature, "SigningAlgorithm": algorithm}


@operation("Verify", read_only=True)
async def verify(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key, algorithm, message_type, private = _signing(svc, call, p)
    asymmetric.verify(private.public_key(), key.key_spec, algorithm, p["Message"], message_type,
                      p["Signature"])
    return {"KeyId": key.arn, "SignatureValid": True, "SigningAlgorithm": algorithm}


@operation("GetPublicKey", read_only=True)
async def get_public_key(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key = svc.key_for(call, p["KeyId"], "GetPublicKey", allow_alias=True)
    spec = SPECS[key.key_spec]
    if spec.family in ("symmetric", "hmac"):
        raise InvalidKeyUsageException(
            f"{key.arn} key spec is {key.key_spec} which is not valid for GetPublicKey."
        )
    out: dict[str, Any] = {"KeyId": key.arn, "PublicKey": _material(key).public_key,
                           "KeySpec": key.key_spec, "KeyUsage": key.key_usage}
    if spec.in_cmk_spec:
        out["CustomerMasterKeySpec"] = key.key_spec
    out[ALGORITHM_FIELD[key.key_usage]] = list(spec.usages[key.key_usage])
    return out


@operation("DeriveSharedSecret", read_only=True)
async def derive_shared_secret(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key = svc.key_for(call, p["KeyId"], "DeriveSharedSecret", allow_alias=True)
    require_usage(key, KEY_AGREEMENT, "DeriveSharedSecret")
    asymmetric.check_key_agreement_algorithm(key.key_spec, p["KeyAgreementAlgorithm"])
    dry_run(p)
    try:
        secret = asymmetric.derive_shared_secret(svc.private_key(call, key, _material(key)),
                                                 key.key_spec, p["PublicKey"])
    except ValidationException:
        raise ValidationException("") from None  # AWS: an invalid PublicKey, empty message
    return {"KeyId": key.arn, "SharedSecret": secret, "KeyAgreementAlgorithm": "ECDH",
            "KeyOrigin": key.origin}


def _mac_key(svc: Service, call: Call, p: dict[str, Any], op: str) -> tuple[Key, bytes]:
    key = svc.key_for(call, p["KeyId"], op, allow_alias=True)
    require_usage(key, GENERATE_VERIFY_MAC, op)
    mac.check_mac_algorithm(key.key_spec, p["MacAlgorithm"])
    dry_run(p)
    return key, svc.keyring.raw(key.key_id, _material(key), staged=call.staged_keks)


@operation("GenerateMac", read_only=True)
async def generate_mac(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key, raw = _mac_key(svc, call, p, "GenerateMac")
    return {"Mac": mac.generate_mac(raw, p["MacAlgorithm"], p["Message"]),
            "MacAlgorithm": p["MacAlgorithm"], "KeyId": key.arn}


@operation("VerifyMac", read_only=True)
async def verify_mac(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key, raw = _mac_key(svc, call, p, "VerifyMac")
    mac.verify_mac(raw, p["MacAlgorithm"], p["Message"], p["Mac"])
    return {"KeyId": key.arn, "MacValid": True, "MacAlgorithm": p["MacAlgorithm"]}


async def _data_key_pair(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key = svc.key_for(call, p["KeyId"], call.operation, allow_alias=True)
    require_symmetric(key, call.operation, None)
    pair_spec = p["KeyPairSpec"]
    if pair_spec not in asymmetric.DATA_KEY_PAIR_SPECS:
        asymmetric.generate_data_key_pair(pair_spec)  # raises AWS's error for the spec
    dry_run(p)
    private, public = await asyncio.to_thread(asymmetric.generate_data_key_pair, pair_spec)
    blob, material_id = seal_symmetric(svc, call, key, private, p.get("EncryptionContext"))
    return {"PrivateKeyCiphertextBlob": blob, "PrivateKeyPlaintext": private,
            "PublicKey": public, "KeyId": key.arn, "KeyPairSpec": pair_spec,
            "KeyMaterialId": material_id}


@operation("GenerateDataKeyPair", read_only=True)
async def generate_data_key_pair(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    return await _data_key_pair(svc, call, p)


@operation("GenerateDataKeyPairWithoutPlaintext", read_only=True)
async def generate_data_key_pair_without_plaintext(svc: Service, call: Call,
                                                   p: dict[str, Any]) -> dict[str, Any]:
    out = await _data_key_pair(svc, call, p)
    del out["PrivateKeyPlaintext"]
    return out
