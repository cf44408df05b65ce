"""AWS's rules for multi-region keys (who may do what, and the events a decision writes), and
the one name importers use for the shared side of a multi-region key.

Rules: pure; the primary region writes the shared properties (under its epoch), a replica's
region writes only that its replica was deleted; operations on shared properties run on the
primary only; a handover's target that is not Enabled declines it
(``PrimaryRegionDeclined``); a promotion is decided in the promoted region alone, only when
it holds every material version it has seen. The events are in multi_region_events, the
state and its fold (epoch fencing) in multi_region_fold, both re-exported here. Regional
properties (description, policy, tags, enabled state) are not here: each region's
``key/<key id>`` stream holds them.
"""

from __future__ import annotations

import dataclasses

from kms.domain import events as ev
from kms.domain.errors import (
    KMSInvalidStateException,
    NotFoundException,
    UnsupportedOperationException,
)
from kms.domain.key import Key, KeyState, check_state, state_error

# The events and stream names (multi_region_events) and the state and its fold
# (multi_region_fold) are re-exported: importers use ``multi_region`` as the one name.
from kms.domain.multi_region_events import (  # noqa: F401
    MRK_PREFIX,
    CurrentMaterialRestored,
    ImportedMaterialPending,
    ImportedMaterialRotated,
    ImportedMaterialWithdrawn,
    MultiRegionConflictRecorded,
    PrimaryRegionDeclined,
    PrimaryRegionPromoted,
    ReplicaMaterialImported,
    is_shared_stream,
    mrk_stream,
)
from kms.domain.multi_region_fold import (  # noqa: F401
    Conflict,
    Folded,
    MultiRegionKey,
    Promotion,
    Replica,
    SharedMaterial,
    apply,
    created,
    fence,
    refold,
    waits,
    winner,
)


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


def is_primary(key: Key, mrk: MultiRegionKey | None) -> bool:
    """This region holds the primary at the highest epoch it has seen."""
    return key.multi_region and mrk is not None and mrk.primary_region == key.region


def schedule_deletion(key: Key, mrk: MultiRegionKey | None,
                      scheduled: ev.KeyDeletionScheduled) -> ev.KeyDeletionScheduled:
    """A primary that still has replicas waits for them (PendingReplicaDeletion): its window
    is kept and starts only when its last replica is deleted."""
    if is_primary(key, mrk) and mrk is not None and mrk.replicas:
        return dataclasses.replace(scheduled, deletion_ms=0, awaiting_replicas=True)
    return scheduled


def replicas_gone(key: Key, mrk: MultiRegionKey, now_ms: int, day_ms: int,
                  ) -> ev.KeyDeletionScheduled | None:
    """A primary in PendingReplicaDeletion whose last replica is deleted: its waiting
    period starts now."""
    if key.state is not KeyState.PENDING_REPLICA_DELETION or mrk.replicas:
        return None
    return ev.KeyDeletionScheduled(key.key_id, key.pending_window_days,
                                   now_ms + key.pending_window_days * day_ms)


def update_primary(key: Key, mrk: MultiRegionKey | None, region: str) -> list[ev.Event]:
    """UpdatePrimaryRegion, decided by the current primary; the shared event, under the next
    epoch. Checks in order: a multi-region key, the primary, its state, the target."""
    if not key.multi_region or mrk is None:
        raise UnsupportedOperationException(
            f"{key.arn} is not a multi-Region key. UpdatePrimaryRegion is supported only on "
            "multi-Region primary keys.")
    check_primary(key, mrk, "UpdatePrimaryRegion")
    check_state("UpdatePrimaryRegion", key)
    if mrk.handing_over:  # the last handover has not finished here yet
        raise KMSInvalidStateException(f"{key.arn} is updating.")
    if region == key.region:
        raise UnsupportedOperationException(
            f"{key.arn} is already the primary key in {region}.")
    if mrk.replica(region) is None:
        raise NotFoundException(
            f"Key '{mrk.arn_in(region)}' does not exist")
    return [ev.PrimaryRegionUpdated(key.key_id, region, key.region, mrk.epoch + 1)]


def decline_handover(key: Key, mrk: MultiRegionKey) -> PrimaryRegionDeclined | None:
    """The region UpdatePrimaryRegion named takes the primary only if its own key is
    Enabled (AWS wants both keys Enabled; only this region knows its key's state): else it
    declines, and the handover is rolled back (both leave Updating, the old primary stays
    primary)."""
    if not mrk.handing_over or mrk.primary_region != key.region:
        return None
    state = key.before_update if key.state is KeyState.UPDATING else key.state
    if state is KeyState.ENABLED:
        return None
    reason = str(state_error(dataclasses.replace(key, state=state or key.state), "inv"))
    if not mrk.handover_from:  # folded before this field existed: nothing to roll back to
        return None
    return PrimaryRegionDeclined(key.key_id, key.region, mrk.handover_from, mrk.epoch, reason)


def promote(key: Key | None, mrk: MultiRegionKey | None, region: str, key_ref: str,
            basis_seq: int, highest_epoch: int) -> PrimaryRegionPromoted:
    """``kms region promote`` in ``region``, decided there alone. Checks in order: the key
    is multi-region, this region holds a replica of it, it is not the primary already, its
    state, and it holds every material version it has seen (else it would lose data)."""
    if mrk is None or (key is not None and not key.multi_region):
        if key is None:
            raise NotFoundException(f"Key '{key_ref}' does not exist")
        raise UnsupportedOperationException(
            f"{key.arn} is not a multi-Region key. Only a multi-Region replica key can be "
            "promoted.")
    if key is None:
        raise NotFoundException(
            f"Region {region} holds no replica of multi-Region key {mrk.key_id} "
            f"(its regions: {', '.join(mrk.regions)}).")
    if mrk.primary_region == region:
        raise UnsupportedOperationException(
            f"{key.arn} is already the primary key in {region} (epoch {mrk.epoch}).")
    if key.state not in (KeyState.ENABLED, KeyState.DISABLED):
        raise KMSInvalidStateException(f"{key.arn} is {key.state.value}; only an Enabled or "
                                       "Disabled replica can be promoted.")
    missing = [m.material_id for m in mrk.materials
               if m.sealed_to(region) is not None and key.material(m.material_id) is None]
    missing += [i for i in mrk.imported_ids if key.material(i) is None]
    if missing:
        raise KMSInvalidStateException(
            f"{key.arn} does not hold every key material version it has seen referenced "
            f"({len(missing)} missing, first {missing[0][:16]}...); wait until replication "
            "has synchronized it, then promote again.")
    return PrimaryRegionPromoted(key.key_id, region, mrk.primary_region,
                                 max(highest_epoch, mrk.epoch) + 1, basis_seq)


def restored_current(key: Key, mrk: MultiRegionKey) -> CurrentMaterialRestored | None:
    """For a replica of a key with fenced events (an old primary's, a promotion's that lost
    its epoch, or one taken from those before the fence was known here): if its current
    version is not one the shared side knows, the latest shared version it holds."""
    if mrk.primary_region == key.region or mrk.origin == "EXTERNAL" or not mrk.conflicts:
        return None
    shared = [m.material_id for m in mrk.materials]
    if key.current_material_id in shared:
        return None
    held = [mid for mid in shared if key.material(mid) is not None]
    return CurrentMaterialRestored(key.key_id, held[-1]) if held else None


def restatement(mrk: MultiRegionKey) -> list[ev.Event]:
    """What a promoted region writes before its promotion, under its own origin: the key's
    creation and its replica set as it holds them (epoch 0: never fenced). A region that
    never got them from the old primary (one the new primary replicates to while the old
    is down) can fold the key from the new primary's rows alone; elsewhere they change
    nothing (a known key's creation is not folded twice; a known replica is not added)."""
    return [ev.MultiRegionKeyCreated(mrk.key_id, mrk.account, mrk.primary_region,
                                     mrk.key_spec, mrk.key_usage, mrk.origin),
            *(ev.ReplicaAdded(mrk.key_id, r.region, r.description, r.policy, r.tags, 0,
                              r.created_ms) for r in mrk.replicas)]
