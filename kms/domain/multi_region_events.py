"""The shared events of a multi-region key (its ``mrk/<key id>`` stream) defined by this layer,
and the stream's name; the older ones (``MultiRegionKeyCreated``, ``ReplicaAdded``, ...) live in
kms.domain.events.

Rules: pure; events are frozen, past-tense facts that carry ids, never key material (an
imported key's rotation travels as ids only). kms.domain.multi_region re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass

from kms.domain import events as ev

MRK_PREFIX = "mrk/"


@dataclass(frozen=True, slots=True)
class PrimaryRegionPromoted(ev.Event):
    """``kms region promote``, written by the replica's region: from ``epoch`` on it is the
    primary, without the old primary's word. ``basis_seq`` is how far it held
    ``previous_region``'s log (its replication cursor): that region's shared events under
    an older epoch past it never reached the new primary and are fenced."""

    key_id: str
    region: str
    previous_region: str
    epoch: int
    basis_seq: int


@dataclass(frozen=True, slots=True)
class MultiRegionConflictRecorded(ev.Event):
    """A region reported one fenced shared event (on its own ``key/<key id>`` stream, once:
    its audit fact ``MultiRegionConflictDetected`` is written with it)."""

    key_id: str
    origin_region: str
    origin_seq: int
    epoch: int
    event_type: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class CurrentMaterialRestored(ev.Event):
    """A demoted old primary's current version was fenced (its rotation never reached the
    new primary): it encrypts under the shared ``material_id`` again, so what it makes
    decrypts in every region. The fenced version stays, for what it already encrypted."""

    key_id: str
    material_id: str


@dataclass(frozen=True, slots=True)
class ImportedMaterialPending(ev.Event):
    """ImportKeyMaterial NEW_KEY_MATERIAL into an EXTERNAL primary: the id (never the bytes)
    of the material waiting for RotateKeyOnDemand. Each replica imports the same bytes with
    EXISTING_KEY_MATERIAL first; until then the primary shows it
    PENDING_MULTI_REGION_IMPORT_AND_ROTATION."""

    key_id: str
    material_id: str
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class ReplicaMaterialImported(ev.Event):
    """A replica's region took the primary's pending material (written there, as
    ReplicaDeleted is: no epoch, never fenced)."""

    key_id: str
    region: str
    material_id: str


@dataclass(frozen=True, slots=True)
class ImportedMaterialRotated(ev.Event):
    """RotateKeyOnDemand on an EXTERNAL primary made ``material_id`` current: each replica
    makes its own copy of the same bytes current (a SynchronizeMultiRegionKey action)."""

    key_id: str
    material_id: str
    rotation_type: str
    rotated_at_ms: int
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class ImportedMaterialWithdrawn(ev.Event):
    """The primary's pending material was deleted before its rotation: it leaves the key,
    and each replica deletes its copy (AWS: deleting a primary's PENDING_ROTATION or
    PENDING_MULTI_REGION_IMPORT_AND_ROTATION material deletes the replicas' too)."""

    key_id: str
    material_id: str
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class PrimaryRegionDeclined(ev.Event):
    """The region UpdatePrimaryRegion named refused to take the primary (its own key is not
    Enabled, or gone): the handover at ``epoch`` is rolled back and the old primary stays
    primary. Written by the declining region; ``reason`` says why (its audit fact too)."""

    key_id: str
    region: str
    previous_region: str
    epoch: int
    reason: str


ev.register(PrimaryRegionPromoted, MultiRegionConflictRecorded, CurrentMaterialRestored,
            ImportedMaterialPending, ReplicaMaterialImported, ImportedMaterialRotated,
            ImportedMaterialWithdrawn, PrimaryRegionDeclined)


def mrk_stream(key_id: str) -> str:
    return f"{MRK_PREFIX}{key_id}"


def is_shared_stream(stream: str) -> bool:
    """The streams a region ships to its peers."""
    return stream.startswith(MRK_PREFIX)

