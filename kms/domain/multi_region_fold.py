"""The shared side of a multi-region key as state, and how its ``mrk/<key id>`` events fold.

Rules: pure; every member region folds the same events (they reach the others by
replication), so each sees the same set. Epochs fence primaries: the primary is the region
named at the highest epoch seen, and a primary's event from a lower epoch than that is
ignored. A promotion names how far it had seen the old primary's log; what that primary
wrote under the old epoch past that point is fenced in every region, whatever order it
arrives in, and kept as a conflict (never merged, never lost). Two promotions at one epoch
are ordered by (epoch, region name); what the other region wrote under that epoch is fenced
alike. kms.domain.multi_region re-exports these names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kms.domain import events as ev
from kms.domain.ids import key_arn
from kms.domain.multi_region_events import (
    ImportedMaterialPending,
    ImportedMaterialRotated,
    ImportedMaterialWithdrawn,
    PrimaryRegionDeclined,
    PrimaryRegionPromoted,
    ReplicaMaterialImported,
)


@dataclass(frozen=True, slots=True)
class Replica:
    region: str
    description: str
    policy: str
    tags: ev.Tags
    created_ms: int = 0  # its CreationDate (ReplicateKey's answer)
    after_deletion: bool = False  # added again after a replica in its region was deleted


@dataclass(frozen=True, slots=True)
class SharedMaterial:
    material_id: str
    public_key: bytes
    sealed_for: tuple[tuple[str, bytes], ...]
    rotation_type: str
    rotated_at_ms: int = 0

    def sealed_to(self, region: str) -> bytes | None:
        for r, blob in self.sealed_for:
            if r == region:
                return blob
        return None


@dataclass(frozen=True, slots=True)
class Promotion:
    region: str
    previous_region: str
    epoch: int
    basis_seq: int


@dataclass(frozen=True, slots=True)
class Conflict:
    """A shared event written under an old epoch that was fenced: where and when."""

    origin_region: str
    origin_seq: int
    epoch: int
    event_type: str
    at_ms: int


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
    epoch: int = 1  # the highest primary epoch seen; the primary is the one it names
    accepted_epoch: int = 1  # the epoch the primary has taken over (< epoch: handing over)
    rotation_period_days: int = 0  # the shared automatic-rotation setting (0: off)
    next_rotation_ms: int = 0
    imported_ids: tuple[str, ...] = ()  # an EXTERNAL primary's KeyMaterialIds (no material)
    deleted_in: tuple[str, ...] = ()  # regions whose replica was deleted (ReplicaDeleted)
    promotions: tuple[Promotion, ...] = ()  # PrimaryRegionPromoted, by epoch
    conflicts: tuple[Conflict, ...] = ()  # fenced events whose origin is known
    pending_import: str = ""  # an EXTERNAL primary's material waiting for rotation
    imported_in: tuple[tuple[str, str], ...] = ()  # (replica region, pending material id)
    imported_rotations: tuple[tuple[str, str, int], ...] = ()  # (id, type, at_ms), in order
    handover: Replica | None = None  # the replica record of a region being handed the primary
    handover_from: str = ""  # and the region handing it over
    declined: tuple[tuple[int, str, str], ...] = ()  # (epoch, region, reason) of declines

    @property
    def handing_over(self) -> bool:
        return self.accepted_epoch < self.epoch

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

    def lacking_import(self, material_id: str) -> tuple[str, ...]:
        """The replica regions that have not imported ``material_id`` (the pending one)."""
        return tuple(r.region for r in self.replicas
                     if (r.region, material_id) not in self.imported_in)

    @property
    def current_import(self) -> str:
        """An EXTERNAL key's current material id as the primary made it ("" if unknown)."""
        if self.imported_rotations:
            return self.imported_rotations[-1][0]
        return self.imported_ids[0] if self.imported_ids else ""

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


def winner(promotions: tuple[Promotion, ...], epoch: int) -> Promotion | None:
    """The promotion that holds at ``epoch``: two regions promoted at the same epoch (an
    operator in each side of a partition) are ordered by (epoch, region name), the greater
    wins, so every region picks the same one whatever order they arrive in."""
    at = [p for p in promotions if p.epoch == epoch]
    return max(at, key=lambda p: p.region) if at else None


def _outranked(mrk: MultiRegionKey, epoch: int, origin: str) -> bool:
    """A promotion holds ``epoch`` and ``origin`` is not its region: ``origin`` promoted
    itself at that epoch too and lost the tie, or was handed the primary at that epoch by
    an UpdatePrimaryRegion the promoted region never saw (a promotion outranks it)."""
    won = winner(mrk.promotions, epoch)
    return won is not None and won.region != origin


def _fenced(mrk: MultiRegionKey, epoch: int, origin: str = "", origin_seq: int = 0) -> bool:
    """A primary's event written under an epoch older than the highest seen (0: older logs).
    An old primary's event under an epoch a promotion ended is fenced only if the promoted
    region had not seen it (past the promotion's basis): what it had seen, it acted on.
    Everything a region other than the promoted one wrote under a promotion's epoch is
    fenced (a promotion that lost the tie, a handover's target): the winner never saw it."""
    if epoch <= 0:
        return False
    if _outranked(mrk, epoch, origin):
        return True
    held = [w for w in (winner(mrk.promotions, e) for e in {p.epoch for p in mrk.promotions})
            if w is not None]
    ended = [p for p in held if p.previous_region == origin and epoch < p.epoch]
    if ended:
        return origin_seq > min(ended, key=lambda p: p.epoch).basis_seq
    return epoch < mrk.epoch


_NEVER_FENCED = (ev.PrimaryRegionUpdated, ev.PrimaryRegionAccepted, PrimaryRegionPromoted,
                 PrimaryRegionDeclined)


def fence(mrk: MultiRegionKey, event: ev.Event, at_ms: int, origin: str,
          origin_seq: int) -> MultiRegionKey | None:
    """``mrk`` with ``event`` kept as a conflict if it is fenced (None: it is not)."""
    epoch = getattr(event, "epoch", 0)
    if isinstance(event, _NEVER_FENCED) or not _fenced(mrk, epoch, origin, origin_seq):
        return None
    if not origin or any(c.origin_region == origin and c.origin_seq == origin_seq
                         for c in mrk.conflicts):
        return mrk
    return dataclasses.replace(mrk, conflicts=(*mrk.conflicts, Conflict(
        origin, origin_seq, epoch, event.type_name, at_ms)))


def waits(mrk: MultiRegionKey | None, event: ev.Event) -> bool:
    """Whether a shared event arrived ahead of what it follows. A region pulls each origin
    on its own, so a later region's event can land before the earlier one it answers (the
    new primary's epoch-2 events before the old primary's hand-over; a replica's deletion
    before the ReplicaAdded that made it): such an event is held until it can be folded."""
    if isinstance(event, ev.MultiRegionKeyCreated):
        return False
    if mrk is None:
        return True
    epoch = getattr(event, "epoch", 0)
    if isinstance(event, PrimaryRegionPromoted):  # authoritative: it may skip epochs
        return mrk.replica(event.region) is None and event.region != mrk.primary_region
    if isinstance(event, ev.PrimaryRegionUpdated):
        return epoch > mrk.epoch + 1
    if isinstance(event, ev.ReplicaDeleted):
        return mrk.replica(event.region) is None and event.region not in mrk.deleted_in
    return epoch > mrk.epoch


def apply(mrk: MultiRegionKey, event: ev.Event, at_ms: int = 0, origin: str = "",
          origin_seq: int = 0) -> MultiRegionKey:
    """Fold one shared event (committed at ``at_ms`` in ``origin``'s log at ``origin_seq``)."""
    replace = dataclasses.replace
    fenced = fence(mrk, event, at_ms, origin, origin_seq)
    if fenced is not None:
        return fenced
    match event:
        case ev.ReplicaAdded(region=region, description=d, policy=p, tags=t, created_ms=c):
            if mrk.replica(region) is not None or region == mrk.primary_region:
                return mrk
            return replace(mrk, replicas=(*mrk.replicas, Replica(
                region, d, p, t, c or at_ms, region in mrk.deleted_in)))
        case ev.ReplicaDeleted(region=region):
            deleted = mrk.deleted_in if region in mrk.deleted_in else (*mrk.deleted_in, region)
            return replace(mrk, replicas=tuple(r for r in mrk.replicas if r.region != region),
                           deleted_in=deleted,
                           imported_in=tuple(x for x in mrk.imported_in if x[0] != region))
        case ev.ImportedMaterialNamed(material_id=mid):
            if mid in mrk.imported_ids:
                return mrk
            return replace(mrk, imported_ids=(*mrk.imported_ids, mid))
        case ImportedMaterialPending(material_id=mid):
            ids = mrk.imported_ids if mid in mrk.imported_ids else (*mrk.imported_ids, mid)
            return replace(mrk, imported_ids=ids, pending_import=mid)
        case ReplicaMaterialImported(region=region, material_id=mid):
            if (region, mid) in mrk.imported_in:
                return mrk
            return replace(mrk, imported_in=(*mrk.imported_in, (region, mid)))
        case ImportedMaterialRotated(material_id=mid, rotation_type=rt, rotated_at_ms=when):
            if any(r[0] == mid for r in mrk.imported_rotations):
                return mrk
            ids = mrk.imported_ids if mid in mrk.imported_ids else (*mrk.imported_ids, mid)
            return replace(mrk, imported_ids=ids, imported_rotations=(
                *mrk.imported_rotations, (mid, rt, when or at_ms)),
                pending_import="" if mrk.pending_import == mid else mrk.pending_import,
                imported_in=tuple(x for x in mrk.imported_in if x[1] != mid))
        case ImportedMaterialWithdrawn(material_id=mid):
            return replace(mrk, imported_ids=tuple(i for i in mrk.imported_ids if i != mid),
                           pending_import="" if mrk.pending_import == mid else
                           mrk.pending_import,
                           imported_in=tuple(x for x in mrk.imported_in if x[1] != mid))
        case ev.RotationScheduleShared(period_days=days, next_rotation_ms=nxt):
            return replace(mrk, rotation_period_days=days, next_rotation_ms=nxt)
        case ev.PrimaryRegionUpdated(primary_region=new, previous_region=old, epoch=n):
            if n <= mrk.epoch or mrk.replica(new) is None:
                return mrk
            others = tuple(r for r in mrk.replicas if r.region != new)
            return replace(mrk, primary_region=new, epoch=n, handover=mrk.replica(new),
                           handover_from=old, replicas=(*others, Replica(old, "", "", ())))
        case PrimaryRegionDeclined(region=new, previous_region=old, epoch=n, reason=why):
            # The named region gives its epoch back: the old primary is primary under it.
            if n != mrk.epoch or mrk.primary_region != new or not mrk.handing_over:
                return mrk
            others = tuple(r for r in mrk.replicas if r.region != old)
            back = mrk.handover or Replica(new, "", "", ())
            return replace(mrk, primary_region=old, accepted_epoch=n, handover=None,
                           handover_from="", replicas=(*others, back),
                           declined=(*mrk.declined, (n, new, why)))
        case PrimaryRegionPromoted(region=new, previous_region=old, epoch=n, basis_seq=b):
            known = any((p.epoch, p.region) == (n, new) for p in mrk.promotions)
            promotions = mrk.promotions if known else tuple(sorted(
                (*mrk.promotions, Promotion(new, old, n, b)), key=lambda p: (p.epoch, p.region)))
            won = winner(promotions, n)
            # At an epoch already held (a promotion that lost the tie to this one, or a
            # handover the promoted region never saw), this promotion outranks the holder.
            if (won is None or won.region != new or n < mrk.epoch
                    or mrk.primary_region == new or mrk.replica(new) is None):
                return replace(mrk, promotions=promotions)
            others = tuple(r for r in mrk.replicas if r.region != new)
            demoted = () if mrk.primary_region in mrk.deleted_in else (
                Replica(mrk.primary_region, "", "", ()),)
            return replace(mrk, primary_region=new, epoch=n, accepted_epoch=n,
                           replicas=(*others, *demoted), promotions=promotions,
                           handover=None, handover_from="")
        case ev.PrimaryRegionAccepted(region=region, epoch=n):
            if n == mrk.epoch and region == mrk.primary_region:
                return replace(mrk, accepted_epoch=n, handover=None, handover_from="")
            return mrk
        case ev.MaterialShared(material_id=mid, public_key=pub, sealed_for=sealed,
                               rotation_type=rt, rotated_at_ms=when):
            for i, m in enumerate(mrk.materials):
                if m.material_id == mid:  # shared again, to a region added (again) later
                    again = {r for r, _ in sealed}
                    kept = tuple((r, b) for r, b in m.sealed_for if r not in again)
                    merged = replace(m, sealed_for=(*kept, *sealed))
                    return replace(mrk, materials=(*mrk.materials[:i], merged,
                                                   *mrk.materials[i + 1:]))
            return replace(mrk, materials=(*mrk.materials,
                                           SharedMaterial(mid, pub, sealed, rt, when)))
    return mrk


Folded = tuple[ev.Event, int, str, int]  # event, at_ms, origin region, origin seq


def refold(history: list[Folded]) -> MultiRegionKey:
    """A key's shared side folded again from its first event, every promotion known from
    the start: what an old primary wrote past a promotion's basis is fenced even where it
    was folded before the promotion arrived (the old primary's own events, a race)."""
    first = history[0][0]
    assert isinstance(first, ev.MultiRegionKeyCreated)
    promotions = tuple(sorted({(e.epoch, e.region): Promotion(e.region, e.previous_region,
                                                              e.epoch, e.basis_seq)
                               for e, *_ in history
                               if isinstance(e, PrimaryRegionPromoted)}.values(),
                              key=lambda p: (p.epoch, p.region)))
    mrk = dataclasses.replace(created(first), promotions=promotions)
    for e, at_ms, origin, seq in history[1:]:
        mrk = apply(mrk, e, at_ms, origin, seq)
    return mrk
