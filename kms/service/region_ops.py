"""Multi-region operations: ReplicateKey, UpdatePrimaryRegion, and sharing a primary's new
material versions and rotation schedule.

Rules: shared properties change only in the primary's region, on the key's ``mrk/<key id>``
stream, which the multi-region layer (``Service.regions``, implemented in ``regions``)
ships to the other regions; material enters that stream only sealed to each replica
region's identity key, and never an EXTERNAL key's material (only its KeyMaterialIds: each
replica is given the same bytes by ImportKeyMaterial). What a replica region asked for
(description, policy, tags) is recorded once, in ReplicaAdded, and never synchronized
afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kms.domain import events as ev
from kms.domain import key as keys
from kms.domain import multi_region as mr
from kms.domain import multi_region_import as mri
from kms.domain.errors import (
    AlreadyExistsException,
    KMSInvalidStateException,
    UnsupportedOperationException,
)
from kms.domain.key import Key, check_state
from kms.service import authz, policy_ops
from kms.service.core import Call, Service, operation
from kms.service.keys import default_policy, tags_of
from kms.service.views import key_metadata
from kms.store.state import key_stream


async def _identity_of(svc: Service, key: Key, region: str) -> bytes:
    found = await svc.regions.identity_public_key(region) if svc.regions else None
    if found is None:
        why = svc.regions.unreachable_reason(region) if svc.regions else None
        raise UnsupportedOperationException(
            f"Unable to replicate key {key.key_id} to region {region}: " + (why or (
                "this node cannot reach that region (host it with --dev, or name its node "
                "with --peer).")))
    return found


def _sealed(svc: Service, key: Key, material: ev.Material, regions: dict[str, bytes],
            ) -> tuple[tuple[str, bytes], ...]:
    return tuple(
        (region, svc.keyring.share(key.key_id, material, public, mr.transport_context(
            key.key_id, material.material_id, svc.region, region)))
        for region, public in regions.items())


@operation("ReplicateKey", read_only=False)
async def replicate_key(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key = svc.resolve(call, p["KeyId"], allow_alias=False)
    authz.authorize(call, "ReplicateKey", key)
    mrk = svc.state.mrks.get(key.key_id)
    mr.check_primary(key, mrk, "ReplicateKey")
    assert mrk is not None
    check_state("ReplicateKey", key)
    region = p["ReplicaRegion"]
    if region in mrk.regions:  # at most one key of the set per region, the primary's too
        raise AlreadyExistsException(
            f"Unable to replicate key {key.key_id} to region {region}, as the key already "
            "exist there")
    policy = p.get("Policy") or default_policy(svc.account)
    if "Policy" in p:  # its principals and the lockout check, as CreateKey's
        policy_ops.check_new_policy(svc, call, key, policy)
    tags = tags_of(p)
    keys.check_tags(tags)
    public = await _identity_of(svc, key, region)
    rotated = {r.material_id: r for r in key.rotations}
    added = ev.ReplicaAdded(key.key_id, region, p.get("Description", ""), policy, tags,
                            mrk.epoch, call.at_ms)
    shared: list[ev.Event] = [added]
    if key.origin == "EXTERNAL":  # the replica waits in PendingImport for the same bytes
        shared.extend(ev.ImportedMaterialNamed(key.key_id, i.material_id, mrk.epoch)
                      for i in key.imports
                      if i.material_id not in mrk.imported_ids and not i.pending)
        followed = {r[0] for r in mrk.imported_rotations}
        shared.extend(mr.ImportedMaterialRotated(key.key_id, r.material_id, r.rotation_type,
                                                 r.at_ms, mrk.epoch)
                      for r in key.rotations if r.material_id not in followed)
        waiting = key.pending_material
        if waiting is not None and mrk.pending_import != waiting.material_id:
            shared.append(mr.ImportedMaterialPending(key.key_id, waiting.material_id,
                                                     mrk.epoch))
    for material in _shareable(key):  # every version, oldest first: the last is current
        r = rotated.get(material.material_id)
        shared.append(ev.MaterialShared(key.key_id, material.material_id, material.public_key,
                                        _sealed(svc, key, material, {region: public}),
                                        r.rotation_type if r else "", r.at_ms if r else 0,
                                        mrk.epoch))
    if (mrk.rotation_period_days, mrk.next_rotation_ms) != (key.rotation_period_days,
                                                           key.next_rotation_ms):
        # A schedule set before it was shared (older logs): the new replica takes it too.
        shared.append(ev.RotationScheduleShared(key.key_id, key.rotation_period_days,
                                                key.next_rotation_ms, mrk.epoch))
    stream = mr.mrk_stream(key.key_id)
    call.seen.setdefault(stream, svc.log.version(stream))
    call.emit(stream, shared)
    after = mr.apply(mrk, added)
    replica = keys.created(ev.KeyCreated(
        key_id=key.key_id, account=key.account, region=region, description=added.description,
        key_spec=key.key_spec, key_usage=key.key_usage, origin=key.origin,
        key_manager=key.key_manager, multi_region=True, policy=policy, tags=tags,
        material=None, replica=True), call.at_ms)
    call.additional["replicaRegion"] = region
    return {"ReplicaKeyMetadata": key_metadata(replica, after), "ReplicaPolicy": policy,
            "ReplicaTags": [{"TagKey": k, "TagValue": v} for k, v in tags]}


def _shareable(key: Key) -> tuple[ev.Material, ...]:
    """The material versions a replica is sent: none of an imported key's."""
    return () if key.origin == "EXTERNAL" else key.materials


@dataclass(frozen=True, slots=True)
class ReplicaIdentities:
    """A primary's replica regions' identity keys, and the version of its shared stream
    when the set was read: a rotation pins that version, so a replica added meanwhile
    (ReplicaAdded) makes it decide again, with the new region sealed for."""

    stream_version: int = 0
    by_region: dict[str, bytes] = field(default_factory=dict)


async def replica_identities(svc: Service, key: Key) -> ReplicaIdentities:
    """The identity keys of a primary's replica regions (none for other keys). A region
    that cannot be reached now is left out: it gets the version when it is replicated
    again (not yet: see README)."""
    stream = mr.mrk_stream(key.key_id)
    version = svc.log.version(stream)  # before the set is read, never after
    mrk = svc.state.mrks.get(key.key_id)
    if mrk is None or mrk.primary_region != svc.region or svc.regions is None:
        return ReplicaIdentities(version)
    found: dict[str, bytes] = {}
    for replica in mrk.replicas:
        public = await svc.regions.identity_public_key(replica.region)
        if public is not None:
            found[replica.region] = public
    return ReplicaIdentities(version, found)


def _shared_mrk(svc: Service, call: Call, key: Key) -> mr.MultiRegionKey | None:
    """The shared side of a primary held here, its stream's version recorded (a handover
    committed meanwhile makes the decision run again, and refuse)."""
    mrk = svc.state.mrks.get(key.key_id)
    if not mr.is_primary(key, mrk):
        return None
    stream = mr.mrk_stream(key.key_id)
    call.seen.setdefault(stream, svc.log.version(stream))
    return mrk


def share_rotation(svc: Service, call: Call, key: Key, material: ev.Material,
                   rotation_type: str, identities: ReplicaIdentities,
                   next_rotation_ms: int | None = None) -> None:
    """A primary's new material version, sealed to every replica region, on the shared
    stream with the rotation itself (and its date); an automatic rotation also moves the
    shared schedule (``next_rotation_ms``). The shared stream is pinned at the version
    the replica set was read at, with or without replicas (a concurrent ReplicateKey
    makes the rotation decide again). An imported key's material is never shared."""
    stream = mr.mrk_stream(key.key_id)
    if mr.is_primary(key, svc.state.mrks.get(key.key_id)):
        call.seen.setdefault(stream, identities.stream_version)
    mrk = _shared_mrk(svc, call, key)
    if mrk is None:
        return
    shared: list[ev.Event] = []
    if identities.by_region and key.origin != "EXTERNAL":
        shared.append(ev.MaterialShared(key.key_id, material.material_id, material.public_key,
                                        _sealed(svc, key, material, identities.by_region),
                                        rotation_type, call.at_ms, mrk.epoch))
    if key.origin == "EXTERNAL":  # ids only: each replica makes its own copy current
        mri.check_imported_rotation(key, mrk, material.material_id)
        shared.append(mr.ImportedMaterialRotated(key.key_id, material.material_id,
                                                 rotation_type, call.at_ms, mrk.epoch))
    if next_rotation_ms is not None:
        shared.append(ev.RotationScheduleShared(key.key_id, key.rotation_period_days,
                                                next_rotation_ms, mrk.epoch))
    call.emit(stream, shared)


def share_schedule(svc: Service, call: Call, key: Key, decided: list[ev.Event]) -> None:
    """EnableKeyRotation/DisableKeyRotation on a primary: the setting is a shared property."""
    mrk = _shared_mrk(svc, call, key)
    if mrk is None:
        return
    shared: list[ev.Event] = []
    for e in decided:
        if isinstance(e, ev.KeyRotationEnabled):
            shared.append(ev.RotationScheduleShared(key.key_id, e.period_days,
                                                    e.next_rotation_ms, mrk.epoch))
        elif isinstance(e, ev.KeyRotationDisabled):
            shared.append(ev.RotationScheduleShared(key.key_id, 0, 0, mrk.epoch))
    call.emit(mr.mrk_stream(key.key_id), shared)


@operation("UpdatePrimaryRegion", read_only=False)
async def update_primary_region(svc: Service, call: Call, p: dict[str, Any]) -> None:
    """The old primary records the handover under the next epoch and is Updating until the
    new primary's region has taken over (regions/replication.py's Reactor)."""
    key = svc.resolve(call, p["KeyId"], allow_alias=False)
    authz.authorize(call, "UpdatePrimaryRegion", key)
    mrk = svc.state.mrks.get(key.key_id)
    shared = mr.update_primary(key, mrk, p["PrimaryRegion"])
    stream = mr.mrk_stream(key.key_id)
    call.seen.setdefault(stream, svc.log.version(stream))
    call.emit(stream, shared)
    call.emit(key_stream(key.key_id), [ev.KeyUpdateStarted(key.key_id)])
    call.additional["primaryRegion"] = p["PrimaryRegion"]


def check_not_replica(svc: Service, key: Key, action: str) -> None:
    """Rotation settings and rotation are shared properties: the primary's to change."""
    mrk = svc.state.mrks.get(key.key_id)
    if mr.is_replica(key, mrk):
        mr.check_primary(key, mrk, action)


def _key_id_of(key_ref: str) -> str:
    """A key id from an id or a key ARN (``kms region promote`` takes either)."""
    return key_ref.rsplit(":key/", 1)[-1] if key_ref.startswith("arn:") else key_ref


async def promote_replica(svc: Service, key_ref: str, admin_arn: str) -> dict[str, Any]:
    """``kms region promote``: this region's replica becomes the primary under the highest
    epoch seen + 1, decided here alone (the old primary may be down: not
    UpdatePrimaryRegion). Raises the KMSError of ``mr.promote``'s refusals."""
    key_id = _key_id_of(key_ref)
    for _ in range(10):  # a replicated row committed meanwhile: decide again
        key = svc.state.keys.get(key_id)
        mrk = svc.state.mrks.get(key_id)
        basis = svc.log.cursor(mrk.primary_region) if mrk is not None else 0
        promoted = mr.promote(key, mrk, svc.region, key_ref, basis,
                              svc.state.highest_epoch(key_id))
        assert key is not None and mrk is not None

        def decide(call: Call, e: mr.PrimaryRegionPromoted = promoted,
                   known: mr.MultiRegionKey = mrk) -> None:
            call.emit(mr.mrk_stream(key_id), [*mr.restatement(known), e])
            call.additional.update({"primaryRegion": svc.region, "epoch": e.epoch,
                                    "previousPrimaryRegion": e.previous_region,
                                    "promotedBy": admin_arn})

        if await svc.service_action("PromoteReplicaKey", key.arn,
                                    (key_stream(key_id), mr.mrk_stream(key_id)), decide):
            return {"KeyId": key_id, "KeyArn": key.arn, "PrimaryRegion": svc.region,
                    "PreviousPrimaryRegion": promoted.previous_region,
                    "Epoch": promoted.epoch, "BasisSeq": promoted.basis_seq}
    raise KMSInvalidStateException(f"Key {key_id} kept changing; promote it again.")


def conflicts(svc: Service) -> list[dict[str, Any]]:
    """Every fenced shared event this region knows of, per key, oldest first."""
    out: list[dict[str, Any]] = []
    for key_id, mrk in sorted(svc.state.mrks.items()):
        recorded = svc.state.conflicts_recorded.get(key_id, set())
        for c in mrk.conflicts:
            out.append({"KeyId": key_id, "KeyArn": mrk.arn_in(c.origin_region),
                        "Region": c.origin_region, "Epoch": c.epoch,
                        "EventType": c.event_type, "OriginSeq": c.origin_seq,
                        "Time": c.at_ms / 1000, "FencedByEpoch": mrk.epoch,
                        "PrimaryRegion": mrk.primary_region, "ReportedIn": svc.region,
                        "Audited": (c.origin_region, c.origin_seq) in recorded})
    return out
