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


@dataclass(frozen=True, slots=True)
class ImportedMaterial:
    """What an EXTERNAL key knows of one material associated with it (ListKeyRotations)."""

    material_id: str
    imported: bool  # False: deleted or expired; the key waits for the same bytes again
    expiration_model: str
    valid_to_ms: int  # 0 when it does not expire
    description: str = ""
    pending: bool = False  # PENDING_ROTATION: not permanently associated yet


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
    import_parameters: tuple[ev.ImportParametersIssued, ...] = ()
    # Which material encrypts; kept while an EXTERNAL key waits for that material again.
    current_material_id: str = ""
    imports: tuple[ImportedMaterial, ...] = ()  # EXTERNAL keys: every associated material
    before_update: KeyState | None = None  # the state an Updating key returns to

    @property
    def rotation_enabled(self) -> bool:
        return self.rotation_period_days > 0

    @property
    def current_material(self) -> ev.Material | None:
        """The material that encrypts, if it is present."""
        return self.material(self.current_material_id) if self.current_material_id else None

    def material(self, material_id: str) -> ev.Material | None:
        """A present material (``materials``: usable ones, in association order)."""
        for m in self.materials:
            if m.material_id == material_id:
                return m
        return None

    def imported(self, material_id: str) -> ImportedMaterial | None:
        for i in self.imports:
            if i.material_id == material_id:
                return i
        return None

    @property
    def pending_material(self) -> ImportedMaterial | None:
        """Imported material waiting in PENDING_ROTATION, if any."""
        for i in self.imports:
            if i.pending:
                return i
        return None

    @property
    def has_all_material(self) -> bool:
        """Every material permanently associated with the key is present."""
        return bool(self.current_material_id) and all(
            i.imported for i in self.imports if not i.pending)

    @property
    def expiration_model(self) -> str:
        """The key's ExpirationModel: "" unless some permanent material is imported."""
        present = [i for i in self.imports if i.imported and not i.pending]
        if not present:
            return ""
        if any(i.expiration_model == "KEY_MATERIAL_EXPIRES" for i in present):
            return "KEY_MATERIAL_EXPIRES"
        return "KEY_MATERIAL_DOES_NOT_EXPIRE"

    @property
    def valid_to_ms(self) -> int:
        """The earliest expiry of the permanent imported material (0: none expires)."""
        times = [i.valid_to_ms for i in self.imports
                 if i.imported and not i.pending and i.valid_to_ms]
        return min(times) if times else 0

    def next_expiry(self) -> ImportedMaterial | None:
        """The present imported material (pending included) that expires first."""
        expiring = [i for i in self.imports if i.imported and i.valid_to_ms]
        return min(expiring, key=lambda i: i.valid_to_ms) if expiring else None


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
Encapsulate           ok  dis inv inv inv ok
Decapsulate           ok  dis inv inv inv ok
GetKeyLastUsage       ok  ok  ok  ok  ok  ok
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
    if e.replica:
        state = KeyState.CREATING  # until its primary's material is in (KeyMaterialReplicated)
    elif e.material is None:
        state = KeyState.PENDING_IMPORT
    else:
        state = KeyState.ENABLED
    return Key(
        key_id=e.key_id,
        account=e.account,
        region=e.region,
        arn=key_arn(e.region, e.account, e.key_id),
        created_at_ms=e.created_ms or at_ms,
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
        current_material_id=e.material.material_id if e.material is not None else "",
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
        case ev.KeyRotated(material=m, rotation_type=t, next_rotation_ms=n, rotated_at_ms=when):
            # Imported material was already present (PENDING_ROTATION): it becomes current.
            present = key.material(m.material_id) is not None
            imports = tuple(dataclasses.replace(i, pending=False)
                            if i.material_id == m.material_id else i for i in key.imports)
            return replace(key, materials=key.materials if present else (*key.materials, m),
                           next_rotation_ms=n, current_material_id=m.material_id,
                           imports=imports,
                           rotations=(*key.rotations, Rotation(m.material_id, when or at_ms,
                                                                  t)))
        case ev.KeyMaterialReplicated(material=m, rotation_type=t, rotated_at_ms=when):
            if key.material(m.material_id) is not None:
                return key
            rotations = key.rotations
            if t:  # the primary's rotation date, not the time it reached this region
                rotations = (*rotations, Rotation(m.material_id, when or at_ms, t))
            state = KeyState.ENABLED if key.state is KeyState.CREATING else key.state
            return replace(key, materials=(*key.materials, m), rotations=rotations,
                           current_material_id=m.material_id, state=state)
        case ev.KeyDeletionScheduled(window_days=w, deletion_ms=d, awaiting_replicas=wait):
            state = KeyState.PENDING_REPLICA_DELETION if wait else KeyState.PENDING_DELETION
            return replace(key, state=state, deletion_ms=d, pending_window_days=w)
        case ev.KeyUpdateStarted():
            if key.state is KeyState.UPDATING:
                return key
            return replace(key, state=KeyState.UPDATING, before_update=key.state)
        case ev.KeyUpdateFinished():
            if key.state is not KeyState.UPDATING:
                return key
            return replace(key, state=key.before_update or KeyState.ENABLED,
                           before_update=None)
        case ev.KeyDeletionCancelled():
            # A key with no usable material goes back to waiting for its import.
            back = KeyState.DISABLED if key.has_all_material else KeyState.PENDING_IMPORT
            return replace(key, state=back, deletion_ms=0, pending_window_days=0)
        case ev.ImportParametersIssued():
            live = tuple(p for p in key.import_parameters if p.valid_to_ms > at_ms)
            return replace(key, import_parameters=(*live, event)[-MAX_IMPORT_PARAMETERS:])
        case ev.KeyMaterialImported():
            return _imported(key, event)
        case ev.KeyMaterialDeleted():
            return _material_deleted(key, event)
        case ev.KeyEnabled():
            return replace(key, state=KeyState.ENABLED)
        case ev.KeyDisabled():
            return replace(key, state=KeyState.DISABLED)
        case ev.KeyDescriptionUpdated(description=d):
            return replace(key, description=d)
        case ev.KeyPolicyUpdated(policy=text):
            return replace(key, policy=text)
        case ev.KeyTagged(tags=t):
            return replace(key, tags=_merge_tags(key.tags, t))
        case ev.KeyUntagged(tag_keys=gone):
            return replace(key, tags=tuple((k, v) for k, v in key.tags if k not in gone))
    return key


def _imported(key: Key, e: ev.KeyMaterialImported) -> Key:
    m = e.material
    old = key.imported(m.material_id)
    entry = ImportedMaterial(
        m.material_id, True, e.expiration_model, e.valid_to_ms,
        e.description or (old.description if old else ""),
        old.pending if old else e.pending,
    )
    if old is None:
        imports = (*key.imports, entry)
    else:
        imports = tuple(entry if i.material_id == m.material_id else i for i in key.imports)
    order = [i.material_id for i in imports]
    present = {x.material_id: x for x in key.materials if x.material_id != m.material_id}
    present[m.material_id] = m
    # Materials of AWS_KMS-era keys (no import entry) keep their place in front.
    materials = tuple([x for x in key.materials if x.material_id not in order]
                      + [present[i] for i in order if i in present])
    current = key.current_material_id or ("" if entry.pending else m.material_id)
    changed = dataclasses.replace(key, materials=materials, imports=imports,
                                  current_material_id=current)
    if key.state is KeyState.PENDING_IMPORT and changed.has_all_material:
        changed = dataclasses.replace(changed, state=KeyState.ENABLED)
    return changed


def _material_deleted(key: Key, e: ev.KeyMaterialDeleted) -> Key:
    gone = {e.material_id} if e.material_id else {i.material_id for i in key.imports}
    if not key.imports:  # a key that only ever had one material (older logs)
        gone = {m.material_id for m in key.materials}
    pending_gone = {i.material_id for i in key.imports if i.pending and i.material_id in gone}
    imports = tuple(
        dataclasses.replace(i, imported=False) if i.material_id in gone else i
        for i in key.imports if i.material_id not in pending_gone
    )
    materials = tuple(m for m in key.materials if m.material_id not in gone)
    changed = dataclasses.replace(key, materials=materials, imports=imports)
    if gone - pending_gone and key.state not in (KeyState.PENDING_DELETION,
                                                 KeyState.PENDING_REPLICA_DELETION):
        changed = dataclasses.replace(changed, state=KeyState.PENDING_IMPORT)
    return changed
