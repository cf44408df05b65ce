"""The shared side of a multi-region key, folded from its ``mrk/<key id>`` stream.

Rules: pure; only the primary region writes the stream, and every member region folds the
same events (they reach replicas by replication), so each sees the same set: which region
is primary, which hold replicas, and every material version sealed to whom. Regional
properties (description, policy, tags, enabled state) are not here: each region's own
``key/<key id>`` stream holds them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kms.domain import events as ev
from kms.domain.errors import UnsupportedOperationException
from kms.domain.ids import key_arn
from kms.domain.key import Key

MRK_PREFIX = "mrk/"


def mrk_stream(key_id: str) -> str:
    return f"{MRK_PREFIX}{key_id}"


def is_shared_stream(stream: str) -> bool:
    """The streams a region ships to its peers."""
    return stream.startswith(MRK_PREFIX)


@dataclass(frozen=True, slots=True)
class Replica:
    region: str
    description: str
    policy: str
    tags: ev.Tags


@dataclass(frozen=True, slots=True)
class SharedMaterial:
    material_id: str
    public_key: bytes
    sealed_for: tuple[tuple[str, bytes], ...]
    rotation_type: str

    def sealed_to(self, region: str) -> bytes | None:
        for r, blob in self.sealed_for:
            if r == region:
                return blob
        return None


@dataclass(frozen=True, slots=True)
class MultiRegionKey:
    key_id: str
    account: str
    primary_region: str
    key_spec: str
    key_usage: str
    origin: str
    replicas: tuple[Replica, ...] = ()
    materials: tuple[SharedMaterial, ...] = ()  # in the order they were made

    @property
    def primary_arn(self) -> str:
        return key_arn(self.primary_region, self.account, self.key_id)

    def arn_in(self, region: str) -> str:
        return key_arn(region, self.account, self.key_id)

    def replica(self, region: str) -> Replica | None:
        for r in self.replicas:
            if r.region == region:
                return r
        return None

    @property
    def regions(self) -> tuple[str, ...]:
        """Every member region, the primary first."""
        return (self.primary_region, *(r.region for r in self.replicas))

    def shared_with(self, region: str) -> list[tuple[SharedMaterial, bytes]]:
        """The material versions sealed to ``region``, in order, with their sealed bytes."""
        out = []
        for m in self.materials:
            blob = m.sealed_to(region)
            if blob is not None:
                out.append((m, blob))
        return out


def created(e: ev.MultiRegionKeyCreated) -> MultiRegionKey:
    return MultiRegionKey(e.key_id, e.account, e.primary_region, e.key_spec, e.key_usage,
                          e.origin)


def apply(mrk: MultiRegionKey, event: ev.Event) -> MultiRegionKey:
    replace = dataclasses.replace
    match event:
        case ev.ReplicaAdded(region=region, description=d, policy=p, tags=t):
            if mrk.replica(region) is not None:
                return mrk
            return replace(mrk, replicas=(*mrk.replicas, Replica(region, d, p, t)))
        case ev.MaterialShared(material_id=mid, public_key=pub, sealed_for=sealed,
                               rotation_type=rt):
            for i, m in enumerate(mrk.materials):
                if m.material_id == mid:  # shared again, to a region added later
                    known = {r for r, _ in m.sealed_for}
                    more = tuple((r, b) for r, b in sealed if r not in known)
                    merged = replace(m, sealed_for=(*m.sealed_for, *more))
                    return replace(mrk, materials=(*mrk.materials[:i], merged,
                                                   *mrk.materials[i + 1:]))
            return replace(mrk, materials=(*mrk.materials, SharedMaterial(mid, pub, sealed, rt)))
    return mrk


def transport_context(key_id: str, material_id: str, origin_region: str,
                      to_region: str) -> bytes:
    """What a material sealed between regions is bound to: the key, the version, who
    sealed it and for whom (so a blob can be opened for nothing else)."""
    return f"kms-mrk-material\x00{key_id}\x00{material_id}\x00{origin_region}\x00{to_region}" \
        .encode()


# -- rules of AWS for multi-region keys ---------------------------------------------------------
def check_primary(key: Key, mrk: MultiRegionKey | None, action: str) -> None:
    """Operations on shared properties run on the primary only (ReplicateKey, rotation)."""
    if not key.multi_region or mrk is None:
        if action == "ReplicateKey":
            raise UnsupportedOperationException(
                f"Unable to replicate a non-MultiRegion key {key.key_id}")
        return
    if mrk.primary_region != key.region:
        raise UnsupportedOperationException(
            f"{key.arn} is not a multi-Region primary key. {action} is not supported on "
            f"multi-Region replica keys; call it on the primary key {mrk.primary_arn}.")


def is_replica(key: Key, mrk: MultiRegionKey | None) -> bool:
    return key.multi_region and mrk is not None and mrk.primary_region != key.region
