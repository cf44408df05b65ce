"""Multi-region operations: ReplicateKey, and sharing a primary's new material versions.

Rules: shared properties change only in the primary's region, on the key's ``mrk/<key id>``
stream, which the multi-region layer (``Service.regions``, implemented in ``regions``)
ships to the other regions; material enters that stream only sealed to each replica
region's identity key. What a replica region asked for (description, policy, tags) is
recorded once, in ReplicaAdded, and never synchronized afterwards.
"""

from __future__ import annotations

from typing import Any

from kms.domain import events as ev
from kms.domain import key as keys
from kms.domain import multi_region as mr
from kms.domain.errors import AlreadyExistsException, UnsupportedOperationException
from kms.domain.key import Key, check_state
from kms.service import authz
from kms.service.core import Call, Service, operation
from kms.service.keys import check_policy, default_policy, tags_of
from kms.service.views import key_metadata


async def _identity_of(svc: Service, key: Key, region: str) -> bytes:
    found = await svc.regions.identity_public_key(region) if svc.regions else None
    if found is None:
        raise UnsupportedOperationException(
            f"Unable to replicate key {key.key_id} to region {region}: this node cannot "
            "reach that region (host it with --dev, or name its node with --peer).")
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
    authz.authorize(call.caller, "ReplicateKey", key)
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
    check_policy(policy)
    tags = tags_of(p)
    keys.check_tags(tags)
    public = await _identity_of(svc, key, region)
    rotated = {r.material_id: r.rotation_type for r in key.rotations}
    added = ev.ReplicaAdded(key.key_id, region, p.get("Description", ""), policy, tags)
    shared: list[ev.Event] = [added]
    for material in key.materials:  # every version, oldest first: the last is current
        shared.append(ev.MaterialShared(key.key_id, material.material_id, material.public_key,
                                        _sealed(svc, key, material, {region: public}),
                                        rotated.get(material.material_id, "")))
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


async def replica_identities(svc: Service, key: Key) -> dict[str, bytes]:
    """The identity keys of a primary's replica regions (none for other keys). A region
    that cannot be reached now is left out: it gets the version when it is replicated
    again (not yet: see README)."""
    mrk = svc.state.mrks.get(key.key_id)
    if mrk is None or mrk.primary_region != svc.region or svc.regions is None:
        return {}
    found: dict[str, bytes] = {}
    for replica in mrk.replicas:
        public = await svc.regions.identity_public_key(replica.region)
        if public is not None:
            found[replica.region] = public
    return found


def share_rotation(svc: Service, call: Call, key: Key, material: ev.Material,
                   rotation_type: str, identities: dict[str, bytes]) -> None:
    """A primary's new material version, sealed to every replica region, on the shared
    stream with the rotation itself."""
    if not identities:
        return
    stream = mr.mrk_stream(key.key_id)
    call.seen.setdefault(stream, svc.log.version(stream))
    call.emit(stream, [ev.MaterialShared(key.key_id, material.material_id, material.public_key,
                                         _sealed(svc, key, material, identities),
                                         rotation_type)])


def check_not_replica(svc: Service, key: Key, action: str) -> None:
    """Rotation settings and rotation are shared properties: the primary's to change."""
    mrk = svc.state.mrks.get(key.key_id)
    if mr.is_replica(key, mrk):
        mr.check_primary(key, mrk, action)
