"""ML-KEM operations: Encapsulate and Decapsulate on ENCAPSULATE_DECAPSULATE keys.

Rules: key state, then key usage, then the algorithm, then the ciphertext's length, then
DryRun; the shared secret and the ciphertext are blobs, so they never reach the audit
fact (kms.audit.cloudtrail's loggable_params drops bytes). GetPublicKey serves these
keys in asymmetric_ops.
"""

from __future__ import annotations

from typing import Any

from kms.crypto import kem
from kms.domain.errors import InvalidCiphertextException
from kms.domain.key import Key
from kms.domain.specs import ENCAPSULATE_DECAPSULATE
from kms.service.core import Call, Service, operation
from kms.service.crypto_ops import dry_run, require_usage


def _kem_key(svc: Service, call: Call, p: dict[str, Any]) -> tuple[Key, Any]:
    """The key and its ML-KEM private key object, after every check but DryRun."""
    key = svc.key_for(call, p["KeyId"], call.operation, allow_alias=True)
    require_usage(key, ENCAPSULATE_DECAPSULATE, call.operation)
    kem.check_algorithm(key.key_spec, p["EncapsulationAlgorithm"])
    material = key.current_material
    assert material is not None  # an Enabled key always has material
    return key, material


@operation("Encapsulate", read_only=True)
async def encapsulate(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key, material = _kem_key(svc, call, p)
    dry_run(p)
    public = svc.private_key(call, key, material).public_key()
    secret, ciphertext = kem.encapsulate(public, key.key_spec)
    return {"KeyId": key.arn, "SharedSecret": secret, "SharedSecretCiphertextBlob": ciphertext,
            "EncapsulationAlgorithm": kem.ALGORITHM}


@operation("Decapsulate", read_only=True)
async def decapsulate(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key, material = _kem_key(svc, call, p)
    ciphertext = p["SharedSecretCiphertextBlob"]
    if len(ciphertext) != kem.CIPHERTEXT_BYTES[key.key_spec]:
        raise InvalidCiphertextException()
    dry_run(p)
    secret = kem.decapsulate(svc.private_key(call, key, material), key.key_spec, ciphertext)
    return {"KeyId": key.arn, "SharedSecret": secret, "EncapsulationAlgorithm": kem.ALGORITHM}
