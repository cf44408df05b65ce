"""Symmetric cryptographic operations: Encrypt, Decrypt, ReEncrypt,
GenerateDataKey, GenerateDataKeyWithoutPlaintext, GenerateRandom.

Rules: keys are found, authorized and state-checked through ``Service.key_for``;
usage is checked before any cryptography; a DryRun stops right before the
cryptography with DryRunOperationException; plaintext only travels in replies.
"""

from __future__ import annotations

import os
from typing import Any

from kms.crypto import blob as blobfmt
from kms.crypto import symmetric
from kms.domain.errors import (
    DRY_RUN_MESSAGE,
    CustomKeyStoreNotFoundException,
    DryRunOperationException,
    IncorrectKeyException,
    InvalidCiphertextException,
    InvalidKeyUsageException,
    ValidationException,
)
from kms.domain.key import Key
from kms.domain.specs import ENCRYPT_DECRYPT, SYMMETRIC
from kms.service import authz
from kms.service.core import Call, Service, operation

INCORRECT_KEY = (
    "The key ID in the request does not identify a CMK that can perform this operation."
)
_DATA_KEY_BYTES = {"AES_256": 32, "AES_128": 16}


def require_usage(key: Key, usage: str, operation_name: str) -> None:
    if key.key_usage != usage:
        raise InvalidKeyUsageException(
            f"{key.arn} key usage is {key.key_usage} which is not valid for {operation_name}."
        )


def require_symmetric(key: Key, operation_name: str, algorithm: str | None) -> None:
    require_usage(key, ENCRYPT_DECRYPT, operation_name)
    if key.key_spec != SYMMETRIC:
        raise InvalidKeyUsageException(
            f"{key.arn} key spec is {key.key_spec} which is not valid for {operation_name}."
        )
    if algorithm not in (None, SYMMETRIC):
        raise InvalidKeyUsageException(
            f"Algorithm {algorithm} is incompatible with key spec {key.key_spec}."
        )


def dry_run(p: dict[str, Any]) -> None:
    if p.get("DryRun"):
        raise DryRunOperationException(DRY_RUN_MESSAGE)


def seal_symmetric(svc: Service, call: Call, key: Key, plaintext: bytes,
                   context: dict[str, str] | None) -> tuple[bytes, str]:
    material = key.current_material
    assert material is not None  # Enabled symmetric keys always have material
    raw = svc.keyring.raw(key.key_id, material)
    blob = symmetric.encrypt(raw, key.key_id, material.material_id, plaintext, context)
    call.additional["keyMaterialId"] = material.material_id
    return blob, material.material_id


def open_symmetric(svc: Service, call: Call, p: dict[str, Any], *, key_param: str,
                   context_param: str, algorithm_param: str, action: str,
                   ) -> tuple[Key, bytes, str]:
    """The Decrypt half shared by Decrypt and ReEncrypt: find the key, check, decrypt."""
    ciphertext = p.get("CiphertextBlob")
    ignore_ciphertext = "IGNORE_CIPHERTEXT" in (p.get("DryRunModifiers") or ())
    if ciphertext is None and not (p.get("DryRun") and ignore_ciphertext):
        raise ValidationException(
            "1 validation error detected: Value null at 'ciphertextBlob' failed to satisfy "
            "constraint: Member must not be null"
        )
    named = p.get(key_param)
    parsed = blobfmt.parse(ciphertext) if ciphertext is not None else None
    if named is not None:
        key = svc.key_for(call, named, action, allow_alias=True, state_rule=call.operation)
        if parsed is not None and parsed.key_id != key.key_id:
            raise IncorrectKeyException(INCORRECT_KEY)
    elif parsed is not None:
        if parsed.key_id not in svc.state.keys:
            raise InvalidCiphertextException()
        key = svc.key_for(call, parsed.key_id, action, allow_alias=False,
                          state_rule=call.operation)
    else:
        raise ValidationException("KeyId is required when the ciphertext is ignored.")
    require_symmetric(key, call.operation, p.get(algorithm_param))
    if parsed is None:  # DryRun with IGNORE_CIPHERTEXT
        raise DryRunOperationException(DRY_RUN_MESSAGE)
    material = key.material(parsed.material_id)
    if material is None:
        raise InvalidCiphertextException()
    raw = svc.keyring.raw(key.key_id, material)
    dry_run(p)
    plaintext = symmetric.decrypt(raw, parsed, p.get(context_param))
    return key, plaintext, material.material_id


@operation("Encrypt", read_only=True)
async def encrypt(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key = svc.key_for(call, p["KeyId"], "Encrypt", allow_alias=True)
    require_symmetric(key, "Encrypt", p.get("EncryptionAlgorithm"))
    dry_run(p)
    blob, _ = seal_symmetric(svc, call, key, p["Plaintext"], p.get("EncryptionContext"))
    return {"CiphertextBlob": blob, "KeyId": key.arn, "EncryptionAlgorithm": SYMMETRIC}


@operation("Decrypt", read_only=True)
async def decrypt(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key, plaintext, material_id = open_symmetric(
        svc, call, p, key_param="KeyId", context_param="EncryptionContext",
        algorithm_param="EncryptionAlgorithm", action="Decrypt",
    )
    call.additional["keyMaterialId"] = material_id
    return {"KeyId": key.arn, "Plaintext": plaintext, "EncryptionAlgorithm": SYMMETRIC,
            "KeyMaterialId": material_id}


@operation("ReEncrypt", read_only=True)
async def re_encrypt(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    dest = svc.key_for(call, p["DestinationKeyId"], "ReEncryptTo", allow_alias=True,
                       state_rule="ReEncrypt")
    require_symmetric(dest, "ReEncrypt", p.get("DestinationEncryptionAlgorithm"))
    source, plaintext, source_material = open_symmetric(
        svc, call, p, key_param="SourceKeyId", context_param="SourceEncryptionContext",
        algorithm_param="SourceEncryptionAlgorithm", action="ReEncryptFrom",
    )
    blob, dest_material = seal_symmetric(svc, call, dest, plaintext,
                                         p.get("DestinationEncryptionContext"))
    call.additional.update(sourceKeyMaterialId=source_material,
                           destinationKeyMaterialId=dest_material)
    call.additional.pop("keyMaterialId", None)
    return {
        "CiphertextBlob": blob, "SourceKeyId": source.arn, "KeyId": dest.arn,
        "SourceEncryptionAlgorithm": SYMMETRIC, "DestinationEncryptionAlgorithm": SYMMETRIC,
        "SourceKeyMaterialId": source_material, "DestinationKeyMaterialId": dest_material,
    }


def _data_key(svc: Service, call: Call, p: dict[str, Any]) -> tuple[Key, bytes, bytes, str]:
    key = svc.key_for(call, p["KeyId"], call.operation, allow_alias=True)
    require_symmetric(key, call.operation, None)
    has_spec, has_n = "KeySpec" in p, "NumberOfBytes" in p
    if has_spec == has_n:
        raise ValidationException("Please specify either number of bytes or key spec.")
    dry_run(p)
    plaintext = os.urandom(_DATA_KEY_BYTES[p["KeySpec"]] if has_spec else p["NumberOfBytes"])
    blob, material_id = seal_symmetric(svc, call, key, plaintext, p.get("EncryptionContext"))
    return key, plaintext, blob, material_id


@operation("GenerateDataKey", read_only=True)
async def generate_data_key(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key, plaintext, blob, material_id = _data_key(svc, call, p)
    return {"CiphertextBlob": blob, "Plaintext": plaintext, "KeyId": key.arn,
            "KeyMaterialId": material_id}


@operation("GenerateDataKeyWithoutPlaintext", read_only=True)
async def generate_data_key_without_plaintext(svc: Service, call: Call,
                                              p: dict[str, Any]) -> dict[str, Any]:
    key, _, blob, material_id = _data_key(svc, call, p)
    return {"CiphertextBlob": blob, "KeyId": key.arn, "KeyMaterialId": material_id}


@operation("GenerateRandom", read_only=True)
async def generate_random(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    authz.authorize(call.caller, "GenerateRandom", None, account=svc.account)
    if "CustomKeyStoreId" in p:
        raise CustomKeyStoreNotFoundException(
            "Custom key stores are not supported by this service."
        )
    if "NumberOfBytes" not in p:
        raise ValidationException("NumberOfBytes is required.")
    return {"Plaintext": os.urandom(p["NumberOfBytes"])}
