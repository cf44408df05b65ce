"""Symmetric cryptographic operations: Encrypt, Decrypt, ReEncrypt,
GenerateDataKey, GenerateDataKeyWithoutPlaintext, GenerateRandom.

Rules: keys are found, authorized and state-checked through ``Service.key_for``;
usage is checked before any cryptography; a DryRun stops right before the
cryptography with DryRunOperationException; plaintext only travels in replies.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from kms.crypto import asymmetric, symmetric
from kms.crypto import blob as blobfmt
from kms.domain.errors import (
    DRY_RUN_MESSAGE,
    CustomKeyStoreNotFoundException,
    DryRunOperationException,
    IncorrectKeyException,
    InvalidCiphertextException,
    InvalidKeyUsageException,
    ValidationException,
)
from kms.domain.ids import is_key_id
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
    raw = svc.keyring.raw(key.key_id, material, staged=call.staged_keks)
    blob = symmetric.encrypt(raw, key.key_id, material.material_id, plaintext, context)
    call.additional["keyMaterialId"] = material.material_id
    return blob, material.material_id


async def open_ciphertext(svc: Service, call: Call, p: dict[str, Any], *, key_param: str,
                    context_param: str, algorithm_param: str, action: str,
                    ) -> tuple[Key, bytes, str | None, str]:
    """The Decrypt half shared by Decrypt and ReEncrypt: find the key, check, decrypt.
    Returns (key, plaintext, material id or None for RSA, algorithm)."""
    ciphertext = p.get("CiphertextBlob")
    ignore_ciphertext = "IGNORE_CIPHERTEXT" in (p.get("DryRunModifiers") or ())
    if ciphertext is None and not (p.get("DryRun") and ignore_ciphertext):
        raise ValidationException(
            "1 validation error detected: Value null at 'ciphertextBlob' failed to satisfy "
            "constraint: Member must not be null"
        )
    named = p.get(key_param)
    if named is not None:
        key = svc.key_for(call, named, action, allow_alias=True, state_rule=call.operation)
        if key.key_spec != SYMMETRIC:
            # A symmetric ciphertext names its own key: naming another one is
            # IncorrectKeyException, before this key's usage is looked at (as AWS does,
            # even for an HMAC or signing key). Anything else is this key's ciphertext.
            if ciphertext is not None and _names_another_key(ciphertext, key):
                raise IncorrectKeyException(INCORRECT_KEY)
            return await _open_rsa(svc, call, p, key, ciphertext, context_param,
                                   algorithm_param)
        parsed = blobfmt.parse(ciphertext) if ciphertext is not None else None
        if parsed is not None and parsed.key_id != key.key_id:
            raise IncorrectKeyException(INCORRECT_KEY)
    elif ciphertext is not None:
        parsed = blobfmt.parse(ciphertext)
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
    raw = svc.keyring.raw(key.key_id, material, staged=call.staged_keks)
    dry_run(p)
    plaintext = symmetric.decrypt(raw, parsed, p.get(context_param))
    return key, plaintext, material.material_id, SYMMETRIC


def _names_another_key(ciphertext: bytes, key: Key) -> bool:
    try:
        parsed = blobfmt.parse(ciphertext)
    except InvalidCiphertextException:
        return False
    return is_key_id(parsed.key_id) and parsed.key_id != key.key_id


def _rsa_algorithm(key: Key, p: dict[str, Any], context_param: str, algorithm_param: str,
                   operation_name: str) -> str:
    require_usage(key, ENCRYPT_DECRYPT, operation_name)
    algorithm = p.get(algorithm_param, SYMMETRIC)  # as AWS: absent means SYMMETRIC_DEFAULT
    if p.get(context_param):
        raise ValidationException(
            f"{context_param} is not supported with asymmetric KMS key {key.arn}."
        )
    asymmetric.check_encryption_algorithm(key.key_spec, algorithm)
    return str(algorithm)


async def _open_rsa(svc: Service, call: Call, p: dict[str, Any], key: Key, ciphertext: bytes | None,
              context_param: str, algorithm_param: str) -> tuple[Key, bytes, None, str]:
    algorithm = _rsa_algorithm(key, p, context_param, algorithm_param, call.operation)
    dry_run(p)
    assert ciphertext is not None and key.current_material is not None
    private = svc.private_key(call, key, key.current_material)
    plaintext = await asyncio.to_thread(asymmetric.rsa_decrypt, private, key.key_spec, algorithm,
                                        ciphertext)  # private-key RSA: off the event loop
    return key, plaintext, None, algorithm


def seal_for(svc: Service, call: Call, key: Key, plaintext: bytes, p: dict[str, Any],
             context_param: str, algorithm_param: str) -> tuple[bytes, str | None, str]:
    """The Encrypt half shared by Encrypt and ReEncrypt: symmetric blob or RSA-OAEP."""
    if key.key_spec == SYMMETRIC:
        require_symmetric(key, call.operation, p.get(algorithm_param))
        dry_run(p)
        blob, material_id = seal_symmetric(svc, call, key, plaintext, p.get(context_param))
        return blob, material_id, SYMMETRIC
    algorithm = _rsa_algorithm(key, p, context_param, algorithm_param, call.operation)
    asymmetric.check_plaintext_size(key.key_spec, algorithm, plaintext)
    dry_run(p)
    assert key.current_material is not None
    ciphertext = asymmetric.rsa_encrypt(key.current_material.public_key, key.key_spec,
                                        algorithm, plaintext)
    return ciphertext, None, algorithm


@operation("Encrypt", read_only=True)
async def encrypt(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key = svc.key_for(call, p["KeyId"], "Encrypt", allow_alias=True)
    require_usage(key, ENCRYPT_DECRYPT, "Encrypt")
    blob, _, algorithm = seal_for(svc, call, key, p["Plaintext"], p, "EncryptionContext",
                                  "EncryptionAlgorithm")
    return {"CiphertextBlob": blob, "KeyId": key.arn, "EncryptionAlgorithm": algorithm}


@operation("Decrypt", read_only=True)
async def decrypt(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key, plaintext, material_id, algorithm = await open_ciphertext(
        svc, call, p, key_param="KeyId", context_param="EncryptionContext",
        algorithm_param="EncryptionAlgorithm", action="Decrypt",
    )
    out = {"KeyId": key.arn, "Plaintext": plaintext, "EncryptionAlgorithm": algorithm}
    if material_id is not None:
        call.additional["keyMaterialId"] = material_id
        out["KeyMaterialId"] = material_id
    return out


@operation("ReEncrypt", read_only=True)
async def re_encrypt(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    dest = svc.key_for(call, p["DestinationKeyId"], "ReEncryptTo", allow_alias=True,
                       state_rule="ReEncrypt")
    require_usage(dest, ENCRYPT_DECRYPT, "ReEncrypt")
    source, plaintext, source_material, source_algorithm = await open_ciphertext(
        svc, call, p, key_param="SourceKeyId", context_param="SourceEncryptionContext",
        algorithm_param="SourceEncryptionAlgorithm", action="ReEncryptFrom",
    )
    blob, dest_material, dest_algorithm = seal_for(
        svc, call, dest, plaintext, p, "DestinationEncryptionContext",
        "DestinationEncryptionAlgorithm",
    )
    call.additional.pop("keyMaterialId", None)
    out: dict[str, Any] = {
        "CiphertextBlob": blob, "SourceKeyId": source.arn, "KeyId": dest.arn,
        "SourceEncryptionAlgorithm": source_algorithm,
        "DestinationEncryptionAlgorithm": dest_algorithm,
    }
    if source_material is not None:
        out["SourceKeyMaterialId"] = call.additional["sourceKeyMaterialId"] = source_material
    if dest_material is not None:
        out["DestinationKeyMaterialId"] = call.additional["destinationKeyMaterialId"] = \
            dest_material
    return out


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
    authz.authorize(call, "GenerateRandom", None, account=svc.account)
    if "CustomKeyStoreId" in p:
        raise CustomKeyStoreNotFoundException(
            "Custom key stores are not supported by this service."
        )
    if "NumberOfBytes" not in p:
        raise ValidationException("NumberOfBytes is required.")
    return {"Plaintext": os.urandom(p["NumberOfBytes"])}
