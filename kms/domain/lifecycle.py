"""Keys over time: rotation, scheduled deletion, imported material, and what the
scheduler finds due.

Rules: pure; the current time arrives as ``now_ms``; new material arrives sealed.
Symmetric AWS_KMS keys rotate automatically and on demand; symmetric EXTERNAL keys on
demand only, to material imported as NEW_KEY_MATERIAL; the on-demand quota is 25 per key
(the API reference's figure; guide versions say 10 or 50); deletion waits 7-30 days.
"""

from __future__ import annotations

from dataclasses import dataclass

from kms.domain import events as ev
from kms.domain.errors import (
    AccessDeniedException,
    ConflictException,
    ExpiredImportTokenException,
    IncorrectKeyMaterialException,
    InvalidImportTokenException,
    KMSInvalidStateException,
    LimitExceededException,
    NotFoundException,
    UnsupportedOperationException,
    ValidationException,
)
from kms.domain.key import Key, KeyState, check_state
from kms.domain.specs import SYMMETRIC

DAY_MS = 86_400_000
DEFAULT_ROTATION_DAYS = 365
MAX_ON_DEMAND_ROTATIONS = 25
CONFLICT_WINDOW_MS = 20 * 60_000
DEFAULT_PENDING_WINDOW_DAYS = 30
IMPORT_PARAMETERS_TTL_MS = DAY_MS
MAX_VALID_TO_MS = 365 * DAY_MS


def _not_for_origin(key: Key) -> UnsupportedOperationException:
    return UnsupportedOperationException(
        f"{key.arn} origin is {key.origin} which is not valid for this operation."
    )


def check_rotatable(key: Key) -> None:
    """Rotation applies to symmetric keys whose material KMS generated."""
    if key.origin != "AWS_KMS":
        raise _not_for_origin(key)
    if key.key_spec != SYMMETRIC:
        raise UnsupportedOperationException(
            f"{key.arn} key spec is {key.key_spec} which is not valid for this operation."
        )


def _managed_by_aws(key: Key, action: str) -> None:
    if key.key_manager == "AWS":
        raise AccessDeniedException(
            f"{key.arn} is an AWS managed key; kms:{action} is not allowed on it."
        )


# -- rotation -------------------------------------------------------------------------------
def enable_rotation(key: Key, period_days: int | None, now_ms: int) -> list[ev.Event]:
    check_rotatable(key)
    check_state("EnableKeyRotation", key)
    _managed_by_aws(key, "EnableKeyRotation")
    days = period_days or DEFAULT_ROTATION_DAYS
    if not 90 <= days <= 2560:
        raise ValidationException(
            f"1 validation error detected: Value '{days}' at 'rotationPeriodInDays' failed to "
            "satisfy constraint: Member must have value between 90 and 2560"
        )
    # A running schedule keeps its anchor (when rotation was enabled, or the last automatic
    # rotation): calling again only changes the period, and on-demand rotations never count.
    base = key.next_rotation_ms - key.rotation_period_days * DAY_MS if key.rotation_enabled \
        else now_ms
    return [ev.KeyRotationEnabled(key.key_id, days, base + days * DAY_MS)]


def disable_rotation(key: Key) -> list[ev.Event]:
    check_rotatable(key)
    check_state("DisableKeyRotation", key)
    _managed_by_aws(key, "DisableKeyRotation")
    return [ev.KeyRotationDisabled(key.key_id)] if key.rotation_enabled else []


def check_on_demand(key: Key, now_ms: int) -> ev.Material | None:
    """RotateKeyOnDemand's checks, in AWS's order: key state, then spec (an empty
    message), then, for imported material, the material waiting in PENDING_ROTATION
    (returned: it becomes current), then who manages the key and the quotas."""
    check_state("RotateKeyOnDemand", key)
    if key.key_spec != SYMMETRIC:
        raise UnsupportedOperationException("")
    pending: ev.Material | None = None
    if key.origin == "EXTERNAL":
        waiting = key.pending_material
        pending = key.material(waiting.material_id) if waiting else None
        if pending is None:
            raise KMSInvalidStateException(
                f"No available key material pending rotation for the key: {key.arn}."
            )
    elif key.origin != "AWS_KMS":
        raise _not_for_origin(key)
    _managed_by_aws(key, "RotateKeyOnDemand")
    if sum(1 for r in key.rotations if r.rotation_type == "ON_DEMAND") >= MAX_ON_DEMAND_ROTATIONS:
        raise LimitExceededException(
            "The on-demand rotations limit has been reached for the given keyId. No more "
            f"on-demand rotations can be performed for this key: {key.arn}"
        )
    if key.rotation_enabled and key.next_rotation_ms - now_ms < CONFLICT_WINDOW_MS:
        raise ConflictException(
            f"{key.arn} has an automatic rotation due within 20 minutes; try again later."
        )
    return pending


def rotated(key: Key, material: ev.Material, rotation_type: str, now_ms: int) -> ev.KeyRotated:
    """The rotation event; an automatic one restarts the schedule, on-demand leaves it."""
    nxt = key.next_rotation_ms
    if rotation_type == "AUTOMATIC":
        nxt = now_ms + key.rotation_period_days * DAY_MS
    return ev.KeyRotated(key.key_id, material, rotation_type, nxt)


# -- deletion -------------------------------------------------------------------------------
def schedule_deletion(key: Key, window_days: int | None, now_ms: int) -> list[ev.Event]:
    days = DEFAULT_PENDING_WINDOW_DAYS if window_days is None else window_days
    if not 7 <= days <= 30:
        bound = "greater than or equal to 7" if days < 7 else "less than or equal to 30"
        raise ValidationException(
            f"1 validation error detected: Value '{days}' at 'pendingWindowInDays' failed to "
            f"satisfy constraint: Member must have value {bound}"
        )
    _managed_by_aws(key, "ScheduleKeyDeletion")
    check_state("ScheduleKeyDeletion", key)
    return [ev.KeyDeletionScheduled(key.key_id, days, now_ms + days * DAY_MS)]


def cancel_deletion(key: Key) -> list[ev.Event]:
    check_state("CancelKeyDeletion", key)
    return [ev.KeyDeletionCancelled(key.key_id)]


# -- imported material ----------------------------------------------------------------------
def check_external(key: Key) -> None:
    if key.origin != "EXTERNAL":
        raise _not_for_origin(key)


def import_parameters(key: Key, token: str) -> ev.ImportParametersIssued:
    for p in key.import_parameters:
        if p.token_id == token:
            return p
    raise InvalidImportTokenException("The import token is not valid for this KMS key.")


def check_import(key: Key, params: ev.ImportParametersIssued, now_ms: int,
                 expiration_model: str | None, valid_to_ms: int | None) -> tuple[str, int]:
    """The expiry rules of ImportKeyMaterial; returns (model, valid_to_ms or 0)."""
    check_state("ImportKeyMaterial", key)
    if params.valid_to_ms <= now_ms:
        raise ExpiredImportTokenException("The import token has expired.")
    model = expiration_model or "KEY_MATERIAL_EXPIRES"
    if model == "KEY_MATERIAL_EXPIRES":
        if valid_to_ms is None:
            raise ValidationException(
                "A validTo date must be set if the ExpirationModel is KEY_MATERIAL_EXPIRES"
            )
        if valid_to_ms <= now_ms or valid_to_ms > now_ms + MAX_VALID_TO_MS:
            raise ValidationException(
                "The ValidTo date must be in the future and no more than 365 days from now."
            )
        return model, valid_to_ms
    if valid_to_ms is not None:
        raise ValidationException(
            "A validTo date cannot be set if the ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE"
        )
    return model, 0


@dataclass(frozen=True, slots=True)
class ImportDecision:
    pending: bool  # NEW_KEY_MATERIAL for a key that has material: PENDING_ROTATION
    description: str


def check_import_type(key: Key, import_type: str | None, named_material_id: str | None,
                      description: str | None) -> None:
    """The ImportType parameters' own rules: symmetric keys only; no KeyMaterialId with
    NEW_KEY_MATERIAL."""
    if key.key_spec != SYMMETRIC and (import_type is not None or named_material_id is not None
                                      or description is not None):
        raise UnsupportedOperationException(
            "ImportType, KeyMaterialId and KeyMaterialDescription are only valid for "
            "symmetric encryption keys."
        )
    kind = import_type or ("EXISTING_KEY_MATERIAL" if key.imports else "NEW_KEY_MATERIAL")
    if kind == "NEW_KEY_MATERIAL" and named_material_id is not None:
        raise ValidationException(
            "You cannot specify a key material ID with ImportType set to NEW_KEY_MATERIAL."
        )


def decide_import(key: Key, material_id: str, import_type: str | None,
                  named_material_id: str | None, description: str | None) -> ImportDecision:
    """ImportType's rules. NEW_KEY_MATERIAL is the default for a key that never had
    material, EXISTING_KEY_MATERIAL afterwards; asymmetric and HMAC keys take one
    material for life and no ImportType at all."""
    symmetric = key.key_spec == SYMMETRIC
    check_import_type(key, import_type, named_material_id, description)
    kind = import_type or ("EXISTING_KEY_MATERIAL" if key.imports else "NEW_KEY_MATERIAL")
    known = key.imported(material_id)
    if kind == "EXISTING_KEY_MATERIAL":
        if known is None or (named_material_id is not None
                             and named_material_id != material_id):
            raise IncorrectKeyMaterialException(
                "The key material you are importing is not the same as the key material "
                "previously imported into this KMS key."
            )
        return ImportDecision(False, description or "")
    if not key.imports:  # the first material: current and permanent
        return ImportDecision(False, description or "")
    if not symmetric:
        raise IncorrectKeyMaterialException(
            "The key material you are importing is not the same as the key material "
            "previously imported into this KMS key."
        )
    waiting = key.pending_material
    if waiting is not None:
        raise KMSInvalidStateException(
            f"New key material (id: {material_id}) cannot be imported into KMS key "
            f"{key.key_id}, because another key material (id: {waiting.material_id}) is "
            "pending rotation."
        )
    if known is not None:
        raise IncorrectKeyMaterialException(
            f"Key material (id: {material_id}) is already associated with KMS key "
            f"{key.key_id}; import it with ImportType EXISTING_KEY_MATERIAL."
        )
    return ImportDecision(True, description or "")


def material_to_delete(key: Key, material_id: str | None) -> str:
    """DeleteImportedKeyMaterial's target: the named material, or the current one."""
    check_external(key)
    check_state("DeleteImportedKeyMaterial", key)
    if material_id is None:
        return key.current_material_id
    if key.imported(material_id) is None:
        raise NotFoundException(
            f"Key material (id: {material_id}) is not associated with KMS key {key.key_id}."
        )
    return material_id


def delete_imported(key: Key, material_id: str, *, expired: bool = False) -> list[ev.Event]:
    """The deletion event, or nothing if that material is not present."""
    if not material_id or key.material(material_id) is None:
        return []
    return [ev.KeyMaterialDeleted(key.key_id, expired=expired, material_id=material_id)]


# -- what falls due -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Due:
    key_id: str
    action: str  # "delete" | "rotate" | "expire"


def due(key: Key, now_ms: int) -> Due | None:
    if key.state is KeyState.PENDING_DELETION and key.deletion_ms <= now_ms:
        return Due(key.key_id, "delete")
    expiring = key.next_expiry()
    if expiring is not None and expiring.valid_to_ms <= now_ms:
        return Due(key.key_id, "expire")
    if (key.state is KeyState.ENABLED and key.rotation_enabled
            and key.next_rotation_ms <= now_ms):
        return Due(key.key_id, "rotate")
    return None
