"""Rotation and deletion operations: EnableKeyRotation, DisableKeyRotation,
GetKeyRotationStatus, RotateKeyOnDemand, ListKeyRotations, ScheduleKeyDeletion,
CancelKeyDeletion.

Rules: every rule lives in kms.domain.lifecycle; on-demand rotation completes
within the call (OnDemandRotationStartDate is therefore never shown); an imported
key rotates to the material it holds in PENDING_ROTATION.
"""

from __future__ import annotations

from typing import Any

from kms.domain import events as ev
from kms.domain import lifecycle
from kms.domain import multi_region as mr
from kms.domain import multi_region_import as mri
from kms.domain.key import Key, KeyState
from kms.domain.specs import SYMMETRIC
from kms.service import region_ops
from kms.service.core import Call, Service, operation
from kms.service.paging import page
from kms.service.views import seconds
from kms.store.state import key_stream


@operation("EnableKeyRotation", read_only=False)
async def enable_key_rotation(svc: Service, call: Call, p: dict[str, Any]) -> None:
    key = svc.managed_key(call, p["KeyId"])
    region_ops.check_not_replica(svc, key, "EnableKeyRotation")
    decided = lifecycle.enable_rotation(key, p.get("RotationPeriodInDays"), call.at_ms)
    call.emit(key_stream(key.key_id), decided)
    region_ops.share_schedule(svc, call, key, decided)


@operation("DisableKeyRotation", read_only=False)
async def disable_key_rotation(svc: Service, call: Call, p: dict[str, Any]) -> None:
    key = svc.managed_key(call, p["KeyId"])
    region_ops.check_not_replica(svc, key, "DisableKeyRotation")
    decided = lifecycle.disable_rotation(key)
    call.emit(key_stream(key.key_id), decided)
    region_ops.share_schedule(svc, call, key, decided)


@operation("GetKeyRotationStatus", read_only=True)
async def get_key_rotation_status(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key = svc.key_for(call, p["KeyId"], "GetKeyRotationStatus", allow_alias=False)
    lifecycle.check_rotatable(key)
    # A replica's setting is its primary's (synchronized into it by the multi-region layer).
    enabled = key.rotation_enabled and key.state not in (KeyState.PENDING_DELETION,
                                                         KeyState.PENDING_REPLICA_DELETION)
    out: dict[str, Any] = {"KeyRotationEnabled": enabled, "KeyId": key.arn}
    if enabled:
        out["RotationPeriodInDays"] = key.rotation_period_days
        out["NextRotationDate"] = seconds(key.next_rotation_ms)
    return out


@operation("RotateKeyOnDemand", read_only=False)
async def rotate_key_on_demand(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key = svc.managed_key(call, p["KeyId"])
    region_ops.check_not_replica(svc, key, "RotateKeyOnDemand")
    pending = lifecycle.check_on_demand(key, call.at_ms)
    identities = await region_ops.replica_identities(svc, key)
    # Imported keys rotate to the material waiting in PENDING_ROTATION; others to new.
    material = pending or svc.keyring.seal(key.key_id, svc.symmetric_material())
    call.emit(key_stream(key.key_id),
              [lifecycle.rotated(key, material, "ON_DEMAND", call.at_ms)])
    region_ops.share_rotation(svc, call, key, material, "ON_DEMAND", identities)
    call.additional["keyMaterialId"] = material.material_id
    return {"KeyId": key.arn}


@operation("ListKeyRotations", read_only=True)
async def list_key_rotations(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key = svc.key_for(call, p["KeyId"], "ListKeyRotations", allow_alias=False)
    if key.key_spec != SYMMETRIC:
        lifecycle.check_rotatable(key)
    everything = p.get("IncludeKeyMaterial") == "ALL_KEY_MATERIAL"
    rotated = {r.material_id: r for r in key.rotations}
    fenced = _fenced_versions(svc, key)
    entries: list[dict[str, Any]] = []
    for position, material_id in enumerate(_material_ids(key)):
        if material_id in fenced:
            continue
        r = rotated.get(material_id)
        if r is None and not everything:
            continue
        entry = _rotation_entry(key, material_id)
        if entry["KeyMaterialState"] == "PENDING_ROTATION":  # a replica may still lack it
            entry["KeyMaterialState"] = mri.pending_material_state(
                key, svc.state.mrks.get(key.key_id), material_id)
        entry["_position"] = f"{position:08d}"
        if r is not None:
            entry["RotationDate"] = seconds(r.at_ms)
            entry["RotationType"] = r.rotation_type
        entries.append(entry)
    chunk, tail = page(entries, p, lambda e: e["_position"], default=100, maximum=1000,
                       valid=lambda m: len(m) == 8 and m.isdigit())
    return {"Rotations": [{k: v for k, v in e.items() if k != "_position"} for e in chunk],
            **tail}


def _fenced_versions(svc: Service, key: Key) -> frozenset[str]:
    """The versions a demoted old primary made under an epoch a promotion ended: they never
    became part of the key (``kms region conflicts`` reports them; they still decrypt what
    they encrypted here), so its rotation list is the one every member shows."""
    mrk = svc.state.mrks.get(key.key_id) if key.multi_region else None
    if (mrk is None or mrk.origin == "EXTERNAL" or not mrk.conflicts
            or mrk.primary_region == key.region):  # any replica may hold a fenced version
        return frozenset()
    shared = {m.material_id for m in mrk.materials}
    return frozenset(m.material_id for m in key.materials if m.material_id not in shared)


def _material_ids(key: Key) -> list[str]:
    """Every material of the key in the order it was associated: generated ones, then
    (EXTERNAL keys) each import, present or not, the one pending rotation last."""
    if key.origin != "EXTERNAL":
        return [m.material_id for m in key.materials]
    settled = [i.material_id for i in key.imports if not i.pending]
    return settled + [i.material_id for i in key.imports if i.pending]


def _rotation_entry(key: Key, material_id: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"KeyId": key.arn, "KeyMaterialId": material_id}
    imported = key.imported(material_id)
    if imported is not None and imported.pending:
        entry["KeyMaterialState"] = "PENDING_ROTATION"
    elif material_id == key.current_material_id:
        entry["KeyMaterialState"] = "CURRENT"
    else:
        entry["KeyMaterialState"] = "NON_CURRENT"
    if imported is not None:
        if imported.description:
            entry["KeyMaterialDescription"] = imported.description
        entry["ImportState"] = "IMPORTED" if imported.imported else "PENDING_IMPORT"
        if imported.imported:
            entry["ExpirationModel"] = imported.expiration_model
            if imported.valid_to_ms:
                entry["ValidTo"] = seconds(imported.valid_to_ms)
    return entry


@operation("ScheduleKeyDeletion", read_only=False)
async def schedule_key_deletion(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key = svc.managed_key(call, p["KeyId"])
    events = lifecycle.schedule_deletion(key, p.get("PendingWindowInDays"), call.at_ms)
    first = events[0]
    assert isinstance(first, ev.KeyDeletionScheduled)
    # A multi-region primary with replicas waits for them (PendingReplicaDeletion).
    scheduled = mr.schedule_deletion(key, svc.state.mrks.get(key.key_id), first)
    call.emit(key_stream(key.key_id), [scheduled, *events[1:]])
    out: dict[str, Any] = {"KeyId": key.arn}
    if scheduled.awaiting_replicas:
        out["KeyState"] = KeyState.PENDING_REPLICA_DELETION.value
    else:
        out["DeletionDate"] = seconds(scheduled.deletion_ms)
        out["KeyState"] = KeyState.PENDING_DELETION.value
    out["PendingWindowInDays"] = scheduled.window_days
    return out


@operation("CancelKeyDeletion", read_only=False)
async def cancel_key_deletion(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key = svc.key_for(call, p["KeyId"], "CancelKeyDeletion", allow_alias=False)
    call.emit(key_stream(key.key_id), lifecycle.cancel_deletion(key))
    return {"KeyId": key.arn}
