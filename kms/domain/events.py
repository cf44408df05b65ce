"""Facts of the key service, one frozen dataclass each, and their msgpack codec.

Rules: events are past-tense facts; bodies never hold plaintext key material
(``Material.sealed`` is sealed by kms.crypto before an event is built); the time
and origin of an event live in the log row (``Envelope``), not in the body.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

Tags = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Material:
    """One version of a key's material, sealed under a key-encryption key of the vault."""

    material_id: str  # 64 hex characters (KeyMaterialId)
    sealed: bytes
    public_key: bytes = b""  # DER SubjectPublicKeyInfo for asymmetric keys
    vault_id: str = ""  # the vault entry of its KEK: "" is the key's own; imported
    #                     material has its own ("<key id>/<material id>")


class Event:
    """Base of every fact. ``type_name`` is the stable name stored in the log."""

    type_name: ClassVar[str] = ""
    __slots__ = ()


# -- keys -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class KeyCreated(Event):
    key_id: str
    account: str
    region: str
    description: str
    key_spec: str
    key_usage: str
    origin: str
    key_manager: str
    multi_region: bool
    policy: str
    tags: Tags
    material: Material | None
    replica: bool = False  # a multi-region replica: Creating until its material is in
    created_ms: int = 0  # a replica's CreationDate, as ReplicateKey answered (0: the row's time)


@dataclass(frozen=True, slots=True)
class KeyEnabled(Event):
    key_id: str


@dataclass(frozen=True, slots=True)
class KeyDisabled(Event):
    key_id: str


@dataclass(frozen=True, slots=True)
class KeyDescriptionUpdated(Event):
    key_id: str
    description: str


@dataclass(frozen=True, slots=True)
class KeyTagged(Event):
    key_id: str
    tags: Tags


@dataclass(frozen=True, slots=True)
class KeyUntagged(Event):
    key_id: str
    tag_keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class KeyPolicyUpdated(Event):
    """PutKeyPolicy: the key's one policy (named ``default``) is now ``policy``."""

    key_id: str
    policy: str


@dataclass(frozen=True, slots=True)
class KeyRotationEnabled(Event):
    key_id: str
    period_days: int
    next_rotation_ms: int


@dataclass(frozen=True, slots=True)
class KeyRotationDisabled(Event):
    key_id: str


@dataclass(frozen=True, slots=True)
class KeyRotated(Event):
    """A new material version became current; every older one stays for Decrypt."""

    key_id: str
    material: Material
    rotation_type: str  # AUTOMATIC | ON_DEMAND
    next_rotation_ms: int  # 0 when automatic rotation is off
    rotated_at_ms: int = 0  # a replica following its primary: the primary's rotation time
    #                         (0, and older logs: this event's time)


@dataclass(frozen=True, slots=True)
class KeyDeletionScheduled(Event):
    """``awaiting_replicas``: a multi-region primary that still has replicas waits in
    PendingReplicaDeletion (``deletion_ms`` 0) until its last replica is deleted."""

    key_id: str
    window_days: int
    deletion_ms: int
    awaiting_replicas: bool = False


@dataclass(frozen=True, slots=True)
class KeyDeletionCancelled(Event):
    key_id: str


@dataclass(frozen=True, slots=True)
class KeyDeleted(Event):
    """The waiting period ended: the key, its aliases and (via the vault) its material are gone."""

    key_id: str


@dataclass(frozen=True, slots=True)
class ImportParametersIssued(Event):
    """A wrapping key pair for GetParametersForImport; its private half is sealed."""

    key_id: str
    token_id: str
    wrapping_algorithm: str
    wrapping_key_spec: str
    sealed_private_key: Material
    valid_to_ms: int


@dataclass(frozen=True, slots=True)
class KeyMaterialImported(Event):
    """Material imported (or imported again). ``pending``: NEW_KEY_MATERIAL for a key that
    already has material, waiting in PENDING_ROTATION for RotateKeyOnDemand."""

    key_id: str
    material: Material
    expiration_model: str
    valid_to_ms: int  # 0 when the material does not expire
    description: str = ""  # KeyMaterialDescription ("" keeps the one it had)
    pending: bool = False


@dataclass(frozen=True, slots=True)
class KeyMaterialDeleted(Event):
    """DeleteImportedKeyMaterial, or expiry (``expired=True``), of one material (its vault
    entry goes in the same transaction). ``material_id`` "" (older logs): all of them."""

    key_id: str
    expired: bool
    material_id: str = ""


@dataclass(frozen=True, slots=True)
class KeyMaterialReplicated(Event):
    """A replica took one material version of its primary, resealed under its own KEK.
    ``rotation_type`` is "" for the key's first material, else how the primary rotated."""

    key_id: str
    material: Material
    rotation_type: str = ""
    rotated_at_ms: int = 0  # when the primary rotated to it (0: older logs, the sync's time)


@dataclass(frozen=True, slots=True)
class KeyUpdateStarted(Event):
    """UpdatePrimaryRegion: the key is Updating until the new primary has taken over."""

    key_id: str


@dataclass(frozen=True, slots=True)
class KeyUpdateFinished(Event):
    """The primary handover is complete here: the key returns to its state before."""

    key_id: str


# -- multi-region keys: stream ``mrk/<key id>``, shipped to peers. The primary writes the
# shared properties (with the epoch it acts under: a stale primary's events are fenced off);
# a replica's region writes only that its replica was deleted. --
@dataclass(frozen=True, slots=True)
class MultiRegionKeyCreated(Event):
    """The shared properties of a new multi-region key, fixed for its life."""

    key_id: str
    account: str
    primary_region: str
    key_spec: str
    key_usage: str
    origin: str


@dataclass(frozen=True, slots=True)
class ReplicaAdded(Event):
    """ReplicateKey: ``region`` holds a replica, created with what the call asked for
    there (none of it shared afterwards)."""

    key_id: str
    region: str
    description: str
    policy: str
    tags: Tags
    epoch: int = 0  # 0: older logs (accepted)
    created_ms: int = 0  # the replica's CreationDate (0, older logs: this event's time)


@dataclass(frozen=True, slots=True)
class MaterialShared(Event):
    """One material version of the primary, sealed to each named replica region's identity
    key (kms.crypto.transport): (region, sealed) pairs; never in clear. Versions are shared
    in the order they were made; the last one shared is current."""

    key_id: str
    material_id: str
    public_key: bytes
    sealed_for: tuple[tuple[str, bytes], ...]
    rotation_type: str = ""  # "" for the key's first material
    rotated_at_ms: int = 0  # when the primary rotated to it
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class ImportedMaterialNamed(Event):
    """The KeyMaterialId of a material imported into an EXTERNAL primary: its id only, never
    the material (each replica must be given the same bytes by ImportKeyMaterial)."""

    key_id: str
    material_id: str
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class RotationScheduleShared(Event):
    """The primary's automatic-rotation setting (a shared property): ``period_days`` 0 is
    off; ``next_rotation_ms`` as the primary computed it."""

    key_id: str
    period_days: int
    next_rotation_ms: int
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class ReplicaDeleted(Event):
    """The replica in ``region`` was deleted (written by that region, with its KeyDeleted)."""

    key_id: str
    region: str


@dataclass(frozen=True, slots=True)
class PrimaryRegionUpdated(Event):
    """UpdatePrimaryRegion, written by the old primary: from ``epoch`` on, ``primary_region``
    is the primary and ``previous_region`` holds a replica."""

    key_id: str
    primary_region: str
    previous_region: str
    epoch: int


@dataclass(frozen=True, slots=True)
class PrimaryRegionAccepted(Event):
    """The new primary has everything it needs and acts as primary under ``epoch``."""

    key_id: str
    region: str
    epoch: int


# -- aliases --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AliasCreated(Event):
    alias: str
    key_id: str


@dataclass(frozen=True, slots=True)
class AliasUpdated(Event):
    alias: str
    key_id: str


@dataclass(frozen=True, slots=True)
class AliasDeleted(Event):
    alias: str


# -- audit ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ApiCallRecorded(Event):
    """One API call, allowed or refused. ``params`` are scrubbed of blobs and secrets."""

    request_id: str
    operation: str
    principal_arn: str
    account: str
    access_key_id: str
    source_ip: str
    user_agent: str
    read_only: bool
    params: dict[str, Any] = field(default_factory=dict)
    resources: tuple[str, ...] = ()
    error_code: str = ""
    error_message: str = ""
    additional: dict[str, Any] = field(default_factory=dict)
    event_type: str = "AwsApiCall"  # AwsServiceEvent for what the node did by itself
    # For the CloudTrail record's userIdentity and responseElements (defaults: older facts).
    principal_type: str = ""  # Root | IAMUser | AssumedRole | AWSAccount | AWSService
    user_id: str = ""  # principalId (aws:userid)
    response: dict[str, Any] = field(default_factory=dict)  # a management call's answer, scrubbed


# -- codec ----------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Event]] = {}
_DECODERS: dict[type, Callable[[dict[str, Any]], Any]] = {}


def register(*classes: type[Event]) -> None:
    for cls in classes:
        cls.type_name = cls.__name__
        _REGISTRY[cls.__name__] = cls


_FIELDS: dict[type, tuple[str, ...]] = {}
_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})


def _plain(value: Any) -> Any:
    cls = type(value)
    if cls in _SCALARS:
        return value
    names = _FIELDS.get(cls)
    if names is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(value))
    if names is not None:
        return {n: _plain(getattr(value, n)) for n in names}
    if cls is tuple or cls is list:
        return [_plain(v) for v in value]
    if cls is dict:
        return {k: _plain(v) for k, v in value.items()}
    return value


def _field_decoder(hint: Any) -> Callable[[Any], Any]:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _decoder_for(hint)
    if origin is tuple:
        inner = _field_decoder(args[0]) if args and args[-1] is Ellipsis else None
        if inner is not None:
            return lambda v: tuple(inner(x) for x in v)
        return lambda v: tuple(tuple(x) if isinstance(x, list) else x for x in v)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            dec = _field_decoder(non_none[0])
            return lambda v: None if v is None else dec(v)
    return lambda v: v


def _decoder_for(cls: type) -> Callable[[dict[str, Any]], Any]:
    dec = _DECODERS.get(cls)
    if dec is None:
        hints = typing.get_type_hints(cls)
        fields = [(f.name, _field_decoder(hints[f.name])) for f in dataclasses.fields(cls)]

        def dec(body: dict[str, Any], _cls: type = cls, _fields: Any = fields) -> Any:
            return _cls(**{name: d(body[name]) for name, d in _fields if name in body})

        _DECODERS[cls] = dec
    return dec


def encode(event: Event) -> bytes:
    return msgpack.packb(_plain(event), use_bin_type=True)


def decode(type_name: str, body: bytes) -> Event:
    cls = _REGISTRY.get(type_name)
    if cls is None:
        raise ValueError(f"unknown event type {type_name!r}")
    result: Event = _decoder_for(cls)(msgpack.unpackb(body, raw=False))
    return result


register(
    KeyCreated, KeyEnabled, KeyDisabled, KeyDescriptionUpdated, KeyTagged, KeyUntagged,
    KeyRotationEnabled, KeyRotationDisabled, KeyRotated, KeyDeletionScheduled,
    KeyDeletionCancelled, KeyDeleted, ImportParametersIssued, KeyMaterialImported,
    KeyMaterialDeleted, AliasCreated, AliasUpdated, AliasDeleted, ApiCallRecorded,
    KeyMaterialReplicated, MultiRegionKeyCreated, ReplicaAdded, MaterialShared,
    KeyUpdateStarted, KeyUpdateFinished, RotationScheduleShared, ReplicaDeleted,
    PrimaryRegionUpdated, PrimaryRegionAccepted, ImportedMaterialNamed, KeyPolicyUpdated,
)


@dataclass(frozen=True, slots=True)
class Envelope:
    """An event as the log holds it: where it sits, where and when it happened."""

    seq: int
    stream: str
    version: int
    origin_region: str
    origin_seq: int
    at_ms: int
    event: Event


# Event types defined beside their aggregate register themselves on import; import them here
# so whatever decodes the log knows them.
from kms.domain import grants as _grants  # noqa: E402,F401
