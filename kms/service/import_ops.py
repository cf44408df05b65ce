"""Imported key material (Origin EXTERNAL): GetParametersForImport,
ImportKeyMaterial, DeleteImportedKeyMaterial.

Rules: a wrapping private key is sealed like any material and lives 24 hours;
the imported bytes are checked against the key spec before anything is stored;
each imported material is sealed under its own vault entry, destroyed with it.
Asymmetric and HMAC keys take one material for life; symmetric keys take more
with ImportType NEW_KEY_MATERIAL, for RotateKeyOnDemand (kms.domain.lifecycle).
Multi-region keys: new material enters the primary only; each replica takes the same bytes
(kms.domain.multi_region.replica_import), and the shared stream carries only their ids.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from kms.crypto import asymmetric, mac, wrapping
from kms.crypto.keyring import material_vault_id
from kms.domain import events as ev
from kms.domain import key as keys
from kms.domain import lifecycle
from kms.domain import multi_region as mr
from kms.domain import multi_region_import as mri
from kms.domain.errors import IncorrectKeyMaterialException, InvalidImportTokenException
from kms.domain.key import Key, check_state
from kms.domain.specs import SPECS
from kms.service.core import Call, Service, operation
from kms.service.views import seconds
from kms.store.log import VaultChange
from kms.store.state import key_stream


@operation("GetParametersForImport", read_only=False)
async def get_parameters_for_import(svc: Service, call: Call,
                                    p: dict[str, Any]) -> dict[str, Any]:
    key = svc.managed_key(call, p["KeyId"])
    lifecycle.check_external(key)
    check_state("GetParametersForImport", key)
    algorithm, spec = p["WrappingAlgorithm"], p["WrappingKeySpec"]
    wrapping.check(algorithm, spec)
    private_der, public_der = await asyncio.to_thread(wrapping.new_wrapping_key, spec)
    token = os.urandom(32).hex()
    sealed = svc.keyring.seal(key.key_id, private_der, public_der, material_id=token,
                              staged=call.staged_keks)
    valid_to = call.at_ms + lifecycle.IMPORT_PARAMETERS_TTL_MS
    call.emit(key_stream(key.key_id),
              [ev.ImportParametersIssued(key.key_id, token, algorithm, spec, sealed, valid_to)])
    return {"KeyId": key.arn, "ImportToken": bytes.fromhex(token), "PublicKey": public_der,
            "ParametersValidTo": seconds(valid_to)}


def _check_material(key_spec: str, raw: bytes) -> bytes:
    """The imported bytes must be material of the key's spec; returns the public key DER
    of asymmetric material (b"" otherwise). Slow for RSA: called in a worker thread."""
    family = SPECS[key_spec].family
    if family == "symmetric":
        ok = len(raw) == 32
    elif family == "hmac":
        ok = mac.valid_imported_length(key_spec, len(raw))
    else:
        ok = asymmetric.matches_spec(raw, key_spec)
    if not ok:
        raise IncorrectKeyMaterialException(
            f"The imported key material is not valid for key spec {key_spec}."
        )
    if family in ("symmetric", "hmac"):
        return b""
    return asymmetric.public_der(asymmetric.load_private(raw, trusted=True))


@operation("ImportKeyMaterial", read_only=False)
async def import_key_material(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key = svc.managed_key(call, p["KeyId"])
    lifecycle.check_external(key)
    token = p["ImportToken"]
    if len(token) != 32:
        raise InvalidImportTokenException("The import token is not valid for this KMS key.")
    params = lifecycle.import_parameters(key, token.hex())
    model, valid_to = lifecycle.check_import(
        key, params, call.at_ms, p.get("ExpirationModel"),
        int(p["ValidTo"] * 1000) if "ValidTo" in p else None,
    )
    private_der = svc.keyring.raw(key.key_id, params.sealed_private_key,
                                  staged=call.staged_keks)
    raw = await asyncio.to_thread(wrapping.unwrap, params.wrapping_algorithm, private_der,
                                  p["EncryptedKeyMaterial"])
    public = await asyncio.to_thread(_check_material, key.key_spec, raw)
    material_id = wrapping.imported_material_id(key.key_id, raw)
    mrk = svc.state.mrks.get(key.key_id)
    args = (material_id, p.get("ImportType"), p.get("KeyMaterialId"),
            p.get("KeyMaterialDescription"))
    if mr.is_replica(key, mrk):
        assert mrk is not None
        decision = mri.replica_import(key, mrk, *args)
    else:
        decision = lifecycle.decide_import(key, *args)
    material = _seal_imported(svc, call, key.key_id, material_id, raw, public,
                              present=key.material(material_id) is not None)
    imported = ev.KeyMaterialImported(key.key_id, material, model, valid_to,
                                      decision.description, decision.pending)
    call.emit(key_stream(key.key_id), [imported])
    if mr.is_replica(key, mrk):  # material the primary already rotated to: current here too
        assert mrk is not None
        call.emit(key_stream(key.key_id),
                  mri.imported_to_follow(keys.apply(key, imported, call.at_ms), mrk))
    _share_import(svc, call, key, mrk, material_id, decision.pending)
    call.additional["keyMaterialId"] = material_id
    return {"KeyId": key.arn, "KeyMaterialId": material_id}


def _share_import(svc: Service, call: Call, key: Key, mrk: mr.MultiRegionKey | None,
                  material_id: str, pending: bool) -> None:
    """A multi-region key's import, on its shared stream by id only (never the bytes): a
    primary names its new material (and that it waits for rotation); a replica says it
    holds the primary's pending material (so the primary can rotate once all do)."""
    if mrk is None or not key.multi_region:
        return
    stream = mr.mrk_stream(key.key_id)
    shared: list[ev.Event] = []
    if mr.is_primary(key, mrk):
        if pending and mrk.pending_import != material_id:
            shared.append(mr.ImportedMaterialPending(key.key_id, material_id, mrk.epoch))
        elif material_id not in mrk.imported_ids:
            shared.append(ev.ImportedMaterialNamed(key.key_id, material_id, mrk.epoch))
    elif (material_id == mrk.pending_import
          and (svc.region, material_id) not in mrk.imported_in):
        shared.append(mr.ReplicaMaterialImported(key.key_id, svc.region, material_id))
    if shared:
        call.seen.setdefault(stream, svc.log.version(stream))
        call.emit(stream, shared)


def _seal_imported(svc: Service, call: Call, key_id: str, material_id: str, raw: bytes,
                   public: bytes, *, present: bool) -> ev.Material:
    """Imported material is sealed under a KEK of its own, so that deleting it destroys
    that vault entry and with it every sealed copy in the log. Material imported again
    while present keeps its entry; material imported after its deletion gets a new one."""
    vault_id = material_vault_id(key_id, material_id)
    if not (present and vault_id in svc.log.vault):
        svc.new_kek(call, vault_id)
    return svc.keyring.seal(key_id, raw, public, material_id=material_id, vault_id=vault_id,
                            staged=call.staged_keks)


@operation("DeleteImportedKeyMaterial", read_only=False)
async def delete_imported_key_material(svc: Service, call: Call,
                                       p: dict[str, Any]) -> dict[str, Any]:
    key = svc.managed_key(call, p["KeyId"])
    material_id = lifecycle.material_to_delete(key, p.get("KeyMaterialId"))
    destroy_material(svc, call, key, material_id)
    out: dict[str, Any] = {"KeyId": key.arn}
    if material_id:
        out["KeyMaterialId"] = material_id
    return out


def destroy_material(svc: Service, call: Call, key: Key, material_id: str, *,
                     expired: bool = False) -> None:
    """Delete one imported material: the event and, in the same transaction, its vault
    entry (crypto-shredding every sealed copy; the keyring drops its caches on commit)."""
    events = lifecycle.delete_imported(key, material_id, expired=expired)
    call.emit(key_stream(key.key_id), events)
    mrk = svc.state.mrks.get(key.key_id)
    waiting = key.imported(material_id)
    if events and waiting is not None and waiting.pending and mr.is_primary(key, mrk):
        assert mrk is not None  # the replicas' copies of pending material go with it
        stream = mr.mrk_stream(key.key_id)
        call.seen.setdefault(stream, svc.log.version(stream))
        call.emit(stream, [mr.ImportedMaterialWithdrawn(key.key_id, material_id, mrk.epoch)])
    material = key.material(material_id) if events else None
    if material is not None and material.vault_id:
        call.vault.append(VaultChange(material.vault_id, None))
