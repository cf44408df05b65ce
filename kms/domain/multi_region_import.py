"""Imported material (Origin EXTERNAL) of multi-region keys: what a replica may import,
how the primary's pending material shows, when it may rotate, and what a replica does to
follow the primary's rotations.

Rules: pure; material bytes never travel between regions, only KeyMaterialIds on the
shared stream (``ImportedMaterialPending``, ``ReplicaMaterialImported``,
``ImportedMaterialRotated``, ``ImportedMaterialWithdrawn`` in kms.domain.multi_region); new
material enters the primary only; each replica imports the same bytes and makes its own
copy current when the primary rotates.
"""

from __future__ import annotations

from kms.domain import events as ev
from kms.domain import lifecycle
from kms.domain.errors import (
    IncorrectKeyMaterialException,
    KMSInvalidStateException,
    UnsupportedOperationException,
)
from kms.domain.key import Key
from kms.domain.multi_region import CurrentMaterialRestored, MultiRegionKey, is_primary


def replica_import(key: Key, mrk: MultiRegionKey, material_id: str, import_type: str | None,
                   named_material_id: str | None, description: str | None,
                   ) -> lifecycle.ImportDecision:
    """ImportKeyMaterial into a replica of an EXTERNAL primary: only the primary's own
    material (the same bytes give the same KeyMaterialId in every region,
    kms.crypto.wrapping), never new material; the primary's pending material waits here in
    PENDING_ROTATION for the primary's RotateKeyOnDemand."""
    lifecycle.check_import_type(key, import_type, named_material_id, description)
    if material_id not in mrk.imported_ids or (named_material_id is not None
                                               and named_material_id != material_id):
        raise IncorrectKeyMaterialException(
            "The key material you are importing is not the same as the key material of the "
            f"primary key {mrk.primary_arn}.")
    if import_type == "NEW_KEY_MATERIAL" and key.imports:
        raise UnsupportedOperationException(
            f"{key.arn} is not a multi-Region primary key. ImportKeyMaterial with ImportType "
            "NEW_KEY_MATERIAL is not supported on multi-Region replica keys; import new key "
            f"material into the primary key {mrk.primary_arn}, then the same key material "
            "here with ImportType EXISTING_KEY_MATERIAL.")
    known = key.imported(material_id)
    pending = known.pending if known is not None else material_id == mrk.pending_import
    return lifecycle.ImportDecision(pending, description or "")


def pending_material_state(key: Key, mrk: MultiRegionKey | None, material_id: str) -> str:
    """ListKeyRotations' KeyMaterialState of material waiting for rotation: on a primary,
    PENDING_MULTI_REGION_IMPORT_AND_ROTATION while a replica has not imported it."""
    if is_primary(key, mrk) and mrk is not None and mrk.lacking_import(material_id):
        return "PENDING_MULTI_REGION_IMPORT_AND_ROTATION"
    return "PENDING_ROTATION"


def check_imported_rotation(key: Key, mrk: MultiRegionKey | None, material_id: str) -> None:
    """RotateKeyOnDemand of an EXTERNAL primary: the material it would rotate to must be in
    every replica first. AWS publishes no text for this refusal; it is the one it gives
    when no material is PENDING_ROTATION, which this material is not yet."""
    if key.origin == "EXTERNAL" and is_primary(key, mrk) and mrk is not None and (
            mrk.lacking_import(material_id)):
        raise KMSInvalidStateException(
            f"No available key material pending rotation for the key: {key.arn}.")


def imported_to_follow(key: Key, mrk: MultiRegionKey) -> list[ev.Event]:
    """What a replica of an EXTERNAL primary does to match the primary's rotations: each
    rotation to a material it holds and has not followed is recorded (KeyRotated, its own
    copy), then the primary's current material, if held here, is made current."""
    if is_primary(key, mrk) or mrk.origin != "EXTERNAL":
        return []
    followed = {r.material_id for r in key.rotations}
    out: list[ev.Event] = []
    current = key.current_material_id
    for mid, rotation_type, at_ms in mrk.imported_rotations:
        material = key.material(mid)
        if mid in followed or material is None:
            continue
        # The primary's rotation time, so ListKeyRotations is the same in every member.
        out.append(ev.KeyRotated(key.key_id, material, rotation_type, key.next_rotation_ms,
                                 at_ms))
        current = mid
    target = mrk.current_import
    if target and target != current and key.material(target) is not None:
        out.append(CurrentMaterialRestored(key.key_id, target))
    return out


def withdrawn_here(key: Key, mrk: MultiRegionKey) -> list[str]:
    """The materials a replica holds pending that the primary no longer names (its pending
    material deleted before rotation): they go here too."""
    if is_primary(key, mrk) or mrk.origin != "EXTERNAL":
        return []
    return [i.material_id for i in key.imports
            if i.pending and i.imported and i.material_id not in mrk.imported_ids]
