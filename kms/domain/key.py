"""The Key aggregate: state folded from events, and decisions that return events.

Rules: no I/O, no clock, no randomness: time arrives in envelopes and commands,
material arrives sealed. ``STATE_RULES`` is the one key-state x operation table
(reference Appendix B) that every handler consults through ``check_state``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

from kms.domain import events as ev
from kms.domain.errors import (
    DisabledException,
    KMSError,
    KMSInvalidStateException,
    LimitExceededException,
    TagException,
)
from kms.domain.ids import key_arn


@dataclass(frozen=True, slots=True)
class Rotation:
    material_id: str
    at_ms: int
    rotation_type: str  # AUTOMATIC | ON_DEMAND


class KeyState(Enum):
    CREATING = "Creating"
    ENABLED = "Enabled"
    DISABLED = "Disabled"
    PENDING_DELETION = "PendingDeletion"
    PENDING_IMPORT = "PendingImport"
    PENDING_REPLICA_DELETION = "PendingReplicaDeletion"
    UNAVAILABLE = "Unavailable"
    UPDATING = "Updating"


@dataclass(frozen=True, slots=True)
class Key:
    key_id: str
    account: str
    region: str
    arn: str
    created_at_ms: int
    description: str
    key_spec: str
    key_usage: str
    origin: str
    key_manager: str
    multi_region: bool
    policy: str
    tags: ev.Tags
    state: KeyState
    materials: tuple[ev.Material, ...]
    rotations: tuple[Rotation, ...] = ()
    rotation_period_days: int = 0  # 0: automatic rotation is off
    next_rotation_ms: int = 0
    deletion_ms: int = 0
    pending_window_days: int = 0
    expiration_model: str = ""  # imported material only
    valid_to_ms: int = 0
    imported_material_id: str = ""  # the one material an EXTERNAL key may ever hold
    import_parameters: tuple[ev.ImportParametersIssued, ...] = ()

    @property
    def rotation_enabled(self) -> bool:
        return self.rotation_period_days > 0

    @property
    def current_material(self) -> ev.Material | None:
        return self.materials[-1] if self.materials else None

    def material(self, material_id: str) -> ev.Material | None:
        for m in self.materials:
            if m.material_id == material_id:
                return m
        return None


# -- the key-state x operation table --------------------------------------------------------
# Columns: Enabled Disabled PendingDeletion(+PendingReplicaDeletion) PendingImport Creating
# Updating. "ok" allows; "dis" = DisabledException "<arn> is disabled."; "inv" =
# KMSInvalidStateException naming the state; "npd" = "... is not pending deletion ...".
_TABLE = """
CancelKeyDeletion     npd npd ok  npd npd npd
CreateAlias           ok  ok  inv ok  ok  ok
CreateGrant           ok  dis inv inv inv ok
Decrypt               ok  dis inv inv inv ok
DeleteAlias           ok  ok  ok  ok  ok  ok
DescribeKey           ok  ok  ok  ok  ok  ok
DisableKey            ok  ok  inv inv inv inv
EnableKey             ok  ok  inv inv inv inv
Encrypt               ok  dis inv inv inv ok
GenerateDataKey       ok  dis inv inv inv ok
GenerateDataKeyWithoutPlaintext      ok dis inv inv inv ok
GenerateDataKeyPair   ok  dis inv inv inv ok
GenerateDataKeyPairWithoutPlaintext  ok dis inv inv inv ok
GenerateMac           ok  dis inv inv inv ok
VerifyMac             ok  dis inv inv inv ok
Sign                  ok  dis inv inv inv ok
Verify                ok  dis inv inv inv ok
GetPublicKey          ok  dis inv inv inv ok
DeriveSharedSecret    ok  dis inv inv inv ok
GetKeyPolicy          ok  ok  ok  ok  ok  ok
PutKeyPolicy          ok  ok  ok  ok  ok  ok
ListAliases           ok  ok  ok  ok  ok  ok
ListGrants            ok  ok  ok  ok  ok  ok
ListKeyPolicies       ok  ok  ok  ok  ok  ok
ListResourceTags      ok  ok  ok  ok  ok  ok
ReEncrypt             ok  dis inv inv inv ok
ReplicateKey          ok  dis inv inv inv inv
RetireGrant           ok  ok  ok  ok  ok  ok
RevokeGrant           ok  ok  ok  ok  ok  ok
ScheduleKeyDeletion   ok  ok  inv ok  ok  inv
TagResource           ok  ok  inv ok  ok  ok
UntagResource         ok  ok  inv ok  ok  ok
UpdateAlias           ok  ok  inv ok  ok  ok
UpdateKeyDescription  ok  ok  inv ok  ok  ok
UpdatePrimaryRegion   ok  dis inv inv inv ok
EnableKeyRotation     ok  dis inv inv inv ok
DisableKeyRotation    ok  dis inv inv inv ok
GetKeyRotationStatus  ok  ok  ok  ok  ok  ok
RotateKeyOnDemand     ok  dis inv inv inv inv
ListKeyRotations      ok  ok  ok  ok  ok  ok
GetParametersForImport      ok ok inv ok inv inv
ImportKeyMaterial     ok  ok  inv ok  inv ok
DeleteImportedKeyMaterial   ok ok ok ok inv inv
"""
_COLUMNS = (
    KeyState.ENABLED,
    KeyState.DISABLED,
    KeyState.PENDING_DELETION,
    KeyState.PENDING_IMPORT,
    KeyState.CREATING,
    KeyState.UPDATING,
)
STATE_RULES: dict[str, dict[KeyState, str]] = {}
for _line in _TABLE.strip().splitlines():
    _op, *_cells = _line.split()
    STATE_RULES[_op] = dict(zip(_COLUMNS, _cells, strict=True))
    STATE_RULES[_op][KeyState.PENDING_REPLICA_DELETION] = STATE_RULES[_op][
        KeyState.PENDING_DELETION
    ]
    STATE_RULES[_op][KeyState.UNAVAILABLE] = "inv"

_STATE_PHRASE = {
    KeyState.DISABLED: "is disabled.",
    KeyState.PENDING_DELETION: "is pending deletion.",
    KeyState.PENDING_REPLICA_DELETION: "is pending replica deletion.",
    KeyState.PENDING_IMPORT: "is pending import.",
    KeyState.CREATING: "is creating.",
    KeyState.UPDATING: "is updating.",
    KeyState.UNAVAILABLE: "is unavailable.",
    KeyState.ENABLED: "is enabled.",
}


def state_error(key: Key, verdict: str) -> KMSError:
    if verdict == "dis":
        return DisabledException(f"{key.arn} is disabled.")
    if verdict == "npd":
        return KMSInvalidStateException(
            f"{key.arn} is not pending deletion (or pending replica deletion)."
        )
    return KMSInvalidStateException(f"{key.arn} {_STATE_PHRASE[key.state]}")


def check_state(operation: str, key: Key) -> None:
    verdict = STATE_RULES[operation][key.state]
    if verdict != "ok":
        raise state_error(key, verdict)


# -- decisions ------------------------------------------------------------------------------
MAX_TAGS = 50
MAX_IMPORT_PARAMETERS = 10


def enable(key: Key) -> list[ev.Event]:
    check_state("EnableKey", key)
    return [] if key.state is KeyState.ENABLED else [ev.KeyEnabled(key.key_id)]


def disable(key: Key) -> list[ev.Event]:
    check_state("DisableKey", key)
    return [] if key.state is KeyState.DISABLED else [ev.KeyDisabled(key.key_id)]


def update_description(key: Key, description: str) -> list[ev.Event]:
    check_state("UpdateKeyDescription", key)
    return [ev.KeyDescriptionUpdated(key.key_id, description)]


def check_tags(tags: ev.Tags, existing: ev.Tags = ()) -> None:
    """Tag rules shared by CreateKey and TagResource, in AWS's order and words: duplicates,
    then the request's count, then the reserved prefix (any case), then the key's total."""
    keys = {k for k, _ in tags}
    if len(keys) < len(tags):
        raise TagException("Duplicate tag keys")
    if len(tags) > MAX_TAGS:
        raise TagException("Too many tags")
    for k in keys:
        if k.lower().startswith("aws:"):
            raise TagException("Tags beginning with aws: are reserved")
    if len(keys | {k for k, _ in existing}) > MAX_TAGS:
        raise LimitExceededException("Too many tags")  # TagResource's quota error (model)


def tag(key: Key, tags: ev.Tags) -> list[ev.Event]:
    check_state("TagResource", key)
    check_tags(tags, key.tags)
    return [ev.KeyTagged(key.key_id, tags)]


def untag(key: Key, tag_keys: tuple[str, ...]) -> list[ev.Event]:
    check_state("UntagResource", key)
    for k in tag_keys:
        if k.lower().startswith("aws:"):
            raise TagException("Tags beginning with aws: are reserved")
    present = {k for k, _ in key.tags}
    to_remove = tuple(k for k in tag_keys if k in present)
    return [ev.KeyUntagged(key.key_id, to_remove)] if to_remove else []


# -- evolution ------------------------------------------------------------------------------
def created(e: ev.KeyCreated, at_ms: int) -> Key:
    if e.material is None:
        state = KeyState.PENDING_IMPORT
    else:
        state = KeyState.ENABLED
    return Key(
        key_id=e.key_id,
        account=e.account,
        region=e.region,
        arn=key_arn(e.region, e.account, e.key_id),
        created_at_ms=at_ms,
        description=e.description,
        key_spec=e.key_spec,
        key_usage=e.key_usage,
        origin=e.origin,
        key_manager=e.key_manager,
        multi_region=e.multi_region,
        policy=e.policy,
        tags=e.tags,
        state=state,
        materials=(e.material,) if e.material is not None else (),
    )


def _merge_tags(old: ev.Tags, new: ev.Tags) -> ev.Tags:
    merged = dict(old)
    merged.update(new)
    return tuple(merged.items())


def apply(key: Key, event: ev.Event, at_ms: int = 0) -> Key:
    """Fold one event (committed at ``at_ms``) into an existing key."""
    replace = dataclasses.replace
    match event:
        case ev.KeyRotationEnabled(period_days=p, next_rotation_ms=n):
            return replace(key, rotation_period_days=p, next_rotation_ms=n)
        case ev.KeyRotationDisabled():
            return replace(key, rotation_period_days=0, next_rotation_ms=0)
        case ev.KeyRotated(material=m, rotation_type=t, next_rotation_ms=n):
            return replace(key, materials=(*key.materials, m), next_rotation_ms=n,
                           rotations=(*key.rotations, Rotation(m.material_id, at_ms, t)))
        case ev.KeyDeletionScheduled(window_days=w, deletion_ms=d):
            return replace(key, state=KeyState.PENDING_DELETION, deletion_ms=d,
                           pending_window_days=w)
        case ev.KeyDeletionCancelled():
            # A key with no usable material goes back to waiting for its import.
            back = KeyState.DISABLED if key.materials else KeyState.PENDING_IMPORT
            return replace(key, state=back, deletion_ms=0, pending_window_days=0)
        case ev.ImportParametersIssued():
            live = tuple(p for p in key.import_parameters if p.valid_to_ms > at_ms)
            return replace(key, import_parameters=(*live, event)[-MAX_IMPORT_PARAMETERS:])
        case ev.KeyMaterialImported(material=m, expiration_model=em, valid_to_ms=vt):
            imported: KeyState = (KeyState.ENABLED if key.state is KeyState.PENDING_IMPORT
                                  else key.state)
            return replace(key, materials=(m,), expiration_model=em, valid_to_ms=vt,
                           state=imported, imported_material_id=m.material_id)
        case ev.KeyMaterialDeleted():
            emptied: KeyState = (key.state if key.state is KeyState.PENDING_DELETION
                                 else KeyState.PENDING_IMPORT)
            return replace(key, materials=(), expiration_model="", valid_to_ms=0, state=emptied)
        case ev.KeyEnabled():
            return replace(key, state=KeyState.ENABLED)
        case ev.KeyDisabled():
            return replace(key, state=KeyState.DISABLED)
        case ev.KeyDescriptionUpdated(description=d):
            return replace(key, description=d)
        case ev.KeyTagged(tags=t):
            return replace(key, tags=_merge_tags(key.tags, t))
        case ev.KeyUntagged(tag_keys=gone):
            return replace(key, tags=tuple((k, v) for k, v in key.tags if k not in gone))
    return key
