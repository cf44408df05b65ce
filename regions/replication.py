"""Replication of multi-region keys into one region: pull the shared streams, then react.

Rules: a ``Puller`` brings one origin region's ``mrk/`` rows into the receiving node's log
through ``fetch(after_cursor) -> (rows, through)`` (in-process here; a peer's HTTP read
later) and ``EventLog.append_replicated`` (a replayed batch appends nothing). ``reconcile``
then makes the receiving region's own keys match what the shared streams ask of it, as
``AwsServiceEvent``s: ``CreateKey`` for a replica named for this region (Creating), and
``SynchronizeMultiRegionKey`` for each material version sealed to it, opened with the
region's identity and at once resealed under its own KEK (never held or logged in clear),
and for the primary's rotation schedule; ``UpdatePrimaryRegion`` for a handover (the new
primary passes through Updating and accepts the epoch, then the old one finishes; a new
primary whose own key is not Enabled declines it instead, and the old one stays primary);
``SynchronizeMultiRegionKey``/``DeleteImportedKeyMaterial`` for an imported key's rotation
or withdrawn pending material (its own copy of the same bytes); and
``ScheduleKeyDeletion`` when a primary's last replica is gone (PendingReplicaDeletion ->
PendingDeletion). A key here that the set no longer lists (``is_orphan``: its replica was
added by a primary whose epoch was fenced) is never deleted; it only goes back to
encrypting under a version the members hold (``SynchronizeMultiRegionKey``), and
``kms region conflicts`` names it. It reads only committed state, so after a crash it
finishes what was left undone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import structlog

from kms.domain import events as ev
from kms.domain import multi_region as mr
from kms.domain import multi_region_import as mri
from kms.domain.errors import KMSInternalException
from kms.domain.key import Key, KeyState
from kms.domain.lifecycle import DAY_MS
from kms.node import Node
from kms.service import import_ops
from kms.service.core import Call, Service
from kms.store.replication import ReplicatedRow
from kms.store.state import key_stream
from regions.identity import RegionIdentity

log = structlog.get_logger("regions.replication")

PULL_LIMIT = 500
Fetch = Callable[[int], Awaitable[tuple[Sequence[ReplicatedRow], int]]]


def is_orphan(key: Key, mrk: mr.MultiRegionKey) -> bool:
    """A key of this region that its multi-region key's set does not list: the replica a
    primary made under an epoch it then lost (a same-epoch promotion's loser), its
    ``ReplicaAdded`` fenced once the winner was heard of. It keeps its material and its
    regional settings; it no longer follows the primary. The winner's ReplicateKey to its
    region makes it a member again (it takes the versions it lacks); ScheduleKeyDeletion
    removes it. Nothing here deletes it."""
    return key.multi_region and key.region not in mrk.regions


class Reactor:
    """What the receiving region does once replicated rows are in (one per region)."""

    def __init__(self, service: Service, identity: RegionIdentity) -> None:
        self.service = service
        self.identity = identity
        self.region = service.region
        self._lock = asyncio.Lock()

    async def reconcile(self) -> int:
        """Make this region's keys match the shared streams; returns how many actions were
        recorded. As a replica: be created, take every version sealed to it, mirror the
        primary's rotation schedule, finish a handover the new primary has accepted. As the
        primary: accept a handover to it, and start the waiting period of a deletion that
        waited for its last replica."""
        done = 0
        async with self._lock:
            svc = self.service
            for key_id in list(svc.state.mrks):
                done += await self._report_conflicts(svc.state.mrks[key_id])
                mrk = svc.state.mrks[key_id]
                if mrk.primary_region == self.region:
                    done += await self._as_primary(mrk)
                    continue
                if mrk.replica(self.region) is None:
                    key = svc.state.keys.get(mrk.key_id)
                    if key is not None and is_orphan(key, mrk):
                        # Its ReplicaAdded was fenced (a primary that lost its epoch): kept,
                        # never deleted here, but it encrypts under a version members hold.
                        done += await self._restore_current(mrk)
                    continue
                key = svc.state.keys.get(mrk.key_id)
                if key is None:
                    replica = mrk.replica(self.region)
                    assert replica is not None
                    if svc.log.version(key_stream(mrk.key_id)) > 0 and not (
                            replica.after_deletion):
                        continue  # deleted here with no ReplicaDeleted (older logs): stays so
                    done += await self._create(mrk)
                    key = svc.state.keys.get(mrk.key_id)
                    if key is None:
                        continue
                done += await self._take_materials(mrk)
                done += await self._restore_current(svc.state.mrks[key_id])
                done += await self._follow_imported(svc.state.mrks[key_id])
                done += await self._mirror_schedule(svc.state.mrks[key_id])
                key = svc.state.keys.get(mrk.key_id)
                mrk = svc.state.mrks[key_id]
                if key is not None and key.state is KeyState.UPDATING and not mrk.handing_over:
                    done += await self._act("UpdatePrimaryRegion", mrk,
                                            [ev.KeyUpdateFinished(mrk.key_id)])
        return done

    async def _report_conflicts(self, mrk: mr.MultiRegionKey) -> int:
        """Each fenced event once per region (MultiRegionConflictRecorded on the key's own
        stream, with a ``MultiRegionConflictDetected`` audit fact), if the key is here."""
        svc = self.service
        if not mrk.conflicts or svc.state.keys.get(mrk.key_id) is None:
            return 0
        done = 0
        for c in mrk.conflicts:
            if (c.origin_region, c.origin_seq) in svc.state.conflicts_recorded.get(
                    mrk.key_id, set()):
                continue

            def decide(call: Call, c: mr.Conflict = c) -> None:
                call.emit(key_stream(mrk.key_id), [mr.MultiRegionConflictRecorded(
                    mrk.key_id, c.origin_region, c.origin_seq, c.epoch, c.event_type,
                    c.at_ms)])
                call.additional.update({
                    "conflictOriginRegion": c.origin_region, "conflictOriginSeq": c.origin_seq,
                    "conflictEpoch": c.epoch, "conflictEventType": c.event_type,
                    "conflictTime": c.at_ms, "fencedByEpoch": mrk.epoch,
                    "primaryRegion": mrk.primary_region})

            if await svc.service_action("MultiRegionConflictDetected", mrk.arn_in(self.region),
                                        (key_stream(mrk.key_id),), decide):
                done += 1
                log.warning("multi_region_conflict", key_id=mrk.key_id, region=self.region,
                            origin_region=c.origin_region, origin_seq=c.origin_seq,
                            epoch=c.epoch, event_type=c.event_type, fenced_by=mrk.epoch)
        return done

    async def _take_materials(self, mrk: mr.MultiRegionKey) -> int:
        key = self.service.state.keys.get(mrk.key_id)
        if key is None or mrk.origin == "EXTERNAL":
            return 0  # an imported key's replica is given its material by ImportKeyMaterial
        missing = [(m, blob) for m, blob in mrk.shared_with(self.region)
                   if key.material(m.material_id) is None]
        return await self._synchronize(mrk, missing) if missing else 0

    async def _restore_current(self, mrk: mr.MultiRegionKey) -> int:
        """A demoted old primary stops encrypting under a version only it holds."""
        key = self.service.state.keys.get(mrk.key_id)
        restored = mr.restored_current(key, mrk) if key is not None else None
        if restored is None:
            return 0
        return await self._act("SynchronizeMultiRegionKey", mrk, [restored])

    async def _follow_imported(self, mrk: mr.MultiRegionKey) -> int:
        """A replica of an EXTERNAL primary: rotate to each material the primary rotated to
        (its own copy of the same bytes), and delete its copy of pending material the
        primary deleted before rotating (AWS deletes the replicas' with it)."""
        svc = self.service
        key = svc.state.keys.get(mrk.key_id)
        if key is None:
            return 0
        done = 0
        withdrawn = mri.withdrawn_here(key, mrk)
        if withdrawn:
            def drop(call: Call, k: Key = key) -> None:
                for material_id in withdrawn:
                    import_ops.destroy_material(svc, call, k, material_id)
                call.additional["keyMaterialIds"] = withdrawn
            done += int(await svc.service_action(
                "DeleteImportedKeyMaterial", mrk.arn_in(self.region),
                (key_stream(mrk.key_id),), drop))
            key = svc.state.keys.get(mrk.key_id)
            if key is None:
                return done
        follow = mri.imported_to_follow(key, mrk)
        if follow:
            done += await self._act("SynchronizeMultiRegionKey", mrk, follow)
        return done

    async def _mirror_schedule(self, mrk: mr.MultiRegionKey) -> int:
        """Automatic rotation is a shared property: the replica's setting is the primary's
        (it never rotates by itself; the scheduler skips replicas)."""
        key = self.service.state.keys.get(mrk.key_id)
        if key is None or (key.rotation_period_days, key.next_rotation_ms) == (
                mrk.rotation_period_days, mrk.next_rotation_ms):
            return 0
        change: ev.Event = (ev.KeyRotationEnabled(mrk.key_id, mrk.rotation_period_days,
                                                  mrk.next_rotation_ms)
                            if mrk.rotation_period_days else ev.KeyRotationDisabled(mrk.key_id))
        return await self._act("SynchronizeMultiRegionKey", mrk, [change])

    async def _as_primary(self, mrk: mr.MultiRegionKey) -> int:
        svc = self.service
        key = svc.state.keys.get(mrk.key_id)
        if key is None:
            return 0
        done = 0
        declined = mr.decline_handover(key, mrk)
        if declined is not None:  # this region's own key is not Enabled: give it back
            return await self._decline(mrk, key, declined)
        if mrk.handing_over:
            # A handover to this region: take every version first, pass through Updating,
            # then act as primary under the new epoch (the old primary then finishes too).
            done += await self._take_materials(mrk)
            key = svc.state.keys.get(mrk.key_id)
            if key is None or (not key.current_material_id and key.origin != "EXTERNAL"):
                return done  # still waiting for its versions
            if key.state is not KeyState.UPDATING:
                done += await self._act("UpdatePrimaryRegion", mrk,
                                        [ev.KeyUpdateStarted(mrk.key_id)])
            done += await self._act("UpdatePrimaryRegion", mrk,
                                    [ev.KeyUpdateFinished(mrk.key_id)],
                                    [ev.PrimaryRegionAccepted(mrk.key_id, self.region,
                                                              mrk.epoch)])
            key = svc.state.keys.get(mrk.key_id)
            if key is None:
                return done
        mrk = svc.state.mrks[mrk.key_id]
        if key.state is KeyState.UPDATING and not mrk.handing_over and mrk.declined:
            # The region this one handed the primary to declined it: still primary here.
            epoch, region, reason = mrk.declined[-1]
            done += await self._act("UpdatePrimaryRegion", mrk,
                                    [ev.KeyUpdateFinished(mrk.key_id)], additional={
                                        "primaryRegionDeclinedBy": region, "epoch": epoch,
                                        "declineReason": reason})
            key = svc.state.keys.get(mrk.key_id)
            if key is None:
                return done
        waited = mr.replicas_gone(key, mrk, svc.clock.now_ms(), DAY_MS)
        if waited is not None:
            done += await self._act("ScheduleKeyDeletion", mrk, [waited])
        return done

    async def _decline(self, mrk: mr.MultiRegionKey, key: Key,
                       declined: mr.PrimaryRegionDeclined) -> int:
        """Refuse a handover to this region (its key is not Enabled): the decline on the
        shared stream, with an audit fact naming why; this key leaves Updating if in it."""
        on_key: list[ev.Event] = ([ev.KeyUpdateFinished(mrk.key_id)]
                                  if key.state is KeyState.UPDATING else [])
        done = await self._act("UpdatePrimaryRegion", mrk, on_key, [declined], additional={
            "primaryRegion": declined.previous_region, "epoch": declined.epoch,
            "primaryRegionDeclined": declined.reason})
        if done:
            log.warning("primary_region_declined", key_id=mrk.key_id, region=self.region,
                        primary=declined.previous_region, epoch=declined.epoch,
                        reason=declined.reason)
        return done

    async def _act(self, name: str, mrk: mr.MultiRegionKey, on_key: list[ev.Event],
                   shared: list[ev.Event] | None = None,
                   additional: dict[str, object] | None = None) -> int:
        """One AwsServiceEvent on this region's key (and the shared stream)."""
        svc = self.service
        streams = (key_stream(mrk.key_id), *((mr.mrk_stream(mrk.key_id),) if shared else ()))

        def decide(call: Call) -> None:
            call.emit(key_stream(mrk.key_id), on_key)
            if shared:
                call.emit(mr.mrk_stream(mrk.key_id), shared)
            call.additional["primaryRegion"] = mrk.primary_region
            call.additional.update(additional or {})

        ok = await svc.service_action(name, mrk.arn_in(self.region), streams, decide)
        if ok:
            log.info("multi_region_synchronized", action=name, key_id=mrk.key_id,
                     region=self.region, events=[type(e).__name__ for e in on_key])
        return int(ok)

    async def _create(self, mrk: mr.MultiRegionKey) -> int:
        svc = self.service
        replica = mrk.replica(self.region)
        assert replica is not None

        def decide(call: Call) -> None:
            svc.new_kek(call, mrk.key_id)
            call.emit(key_stream(mrk.key_id), [ev.KeyCreated(
                key_id=mrk.key_id, account=mrk.account, region=self.region,
                description=replica.description, key_spec=mrk.key_spec,
                key_usage=mrk.key_usage, origin=mrk.origin, key_manager="CUSTOMER",
                multi_region=True, policy=replica.policy, tags=replica.tags, material=None,
                # An imported key's replica waits for the same material (PendingImport).
                replica=mrk.origin != "EXTERNAL", created_ms=replica.created_ms)])
            call.additional["primaryRegion"] = mrk.primary_region

        ok = await svc.service_action("CreateKey", mrk.arn_in(self.region),
                                      (key_stream(mrk.key_id),), decide)
        if ok:
            log.info("replica_created", key_id=mrk.key_id, region=self.region,
                     primary=mrk.primary_region)
        return int(ok)

    async def _synchronize(self, mrk: mr.MultiRegionKey,
                           missing: list[tuple[mr.SharedMaterial, bytes]]) -> int:
        """Open each version sealed to this region and reseal it under its KEK, in order,
        up to the first that does not open; nothing is recorded when none did."""
        svc = self.service
        key_id = mrk.key_id
        taken: list[ev.Event] = []
        for shared, blob in missing:
            context = mr.transport_context(key_id, shared.material_id, mrk.primary_region,
                                           self.region)

            def seal_here(raw: bytes, s: mr.SharedMaterial = shared) -> bytes:
                return svc.keyring.seal(key_id, raw, s.public_key, s.material_id).sealed

            try:
                resealed = self.identity.reseal(blob, context, seal_here)
            except KMSInternalException:
                log.error("replica_material_unreadable", key_id=key_id,
                          material_id=shared.material_id, region=self.region,
                          primary=mrk.primary_region)
                break  # keep the order of versions: the rest waits for this one
            material = ev.Material(shared.material_id, resealed, shared.public_key)
            taken.append(ev.KeyMaterialReplicated(key_id, material, shared.rotation_type,
                                                  shared.rotated_at_ms))
        if not taken:
            return 0

        def decide(call: Call) -> None:
            call.additional["keyMaterialIds"] = [
                e.material.material_id for e in taken if isinstance(e, ev.KeyMaterialReplicated)]
            call.emit(key_stream(key_id), taken)

        ok = await svc.service_action("SynchronizeMultiRegionKey", mrk.arn_in(self.region),
                                      (key_stream(key_id),), decide)
        return int(ok)


class Puller:
    """Brings one origin region's shared streams into one receiving node, then reacts."""

    def __init__(self, receiver: Node, origin_region: str, fetch: Fetch,
                 reactor: Reactor) -> None:
        self.receiver = receiver
        self.origin_region = origin_region
        self.fetch = fetch
        self.reactor = reactor
        self.wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.on_stop: Callable[[], None] = lambda: None  # undoes what wires its wake-ups

    async def pull(self) -> int:
        """Pull until caught up; returns how many rows were appended."""
        appended = 0
        log_ = self.receiver.log
        while True:
            after = log_.cursor(self.origin_region)
            rows, through = await self.fetch(after)
            if not rows and through <= after:
                break
            envs = await log_.append_replicated(self.origin_region, list(rows), through)
            appended += len(envs)
            if not rows:
                break
        return appended

    def start(self) -> None:
        self.wake.set()  # catch up at once: what was committed while this was not running
        self._task = asyncio.create_task(self._run(), name=f"pull-{self.origin_region}-"
                                                          f"{self.receiver.config.region}")

    def halt(self) -> asyncio.Task[None] | None:
        """Stop being woken and cancel the task; returns it, for the caller to await."""
        self.on_stop()
        self.on_stop = lambda: None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        return task

    async def stop(self) -> None:
        await ended(self.halt())

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            try:
                await self.pull()
                await self.reactor.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:  # the next commit of the origin (or restart) retries
                log.exception("replication_failed", origin=self.origin_region,
                              region=self.receiver.config.region)


async def ended(task: asyncio.Task[None] | None) -> None:
    """Wait for a cancelled ``task`` to end. Its own CancelledError is expected; a
    cancellation of the caller itself while it waits is not swallowed (it propagates). A
    caller cancelled before (aiohttp's cleanup runs in the cancelled main task) still waits:
    only a cancellation requested during the wait counts."""
    if task is None:
        return
    current = asyncio.current_task()
    before = current.cancelling() if current is not None else 0
    try:
        await task
    except asyncio.CancelledError:
        if current is not None and current.cancelling() > before:
            raise


def local_fetch(origin: Node) -> Fetch:
    """``fetch`` for an origin hosted in this process: its log's peer read, shared streams
    only."""
    async def fetch(after: int) -> tuple[Sequence[ReplicatedRow], int]:
        return await origin.log.read_for_peer(after, mr.is_shared_stream, PULL_LIMIT)
    return fetch


def wake_on_commit(origin: Node, puller: Puller) -> None:
    """Wake ``puller`` whenever ``origin``'s log commits a shared-stream event (lag: the
    time of one pull, not a polling interval), until the puller stops."""
    def committed(envelopes: Sequence[ev.Envelope] | None) -> None:
        if envelopes is None or any(mr.is_shared_stream(e.stream) for e in envelopes):
            puller.wake.set()
    origin.log.subscribe(committed)
    puller.on_stop = lambda: origin.log.unsubscribe(committed)


class DevReplication:
    """Every region hosted in one ``--dev`` process replicates from every other one."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.identities: dict[str, RegionIdentity] = {}
        self.reactors: dict[str, Reactor] = {}
        self.pullers: list[Puller] = []

    def identity_of(self, node: Node) -> RegionIdentity:
        region = node.config.region
        found = self.identities.get(region)
        if found is None:
            found = RegionIdentity.load_or_create(Path(node.config.data_dir), node.keyring.root)
            self.identities[region] = found
        return found

    def add(self, node: Node) -> None:
        """Wire a started node to every node already here, both ways."""
        region = node.config.region
        if region in self.nodes:
            return
        reactor = Reactor(node.service, self.identity_of(node))
        self.reactors[region] = reactor
        for other_region, other in self.nodes.items():
            for receiver, origin, r in ((node, other, reactor),
                                        (other, node, self.reactors[other_region])):
                puller = Puller(receiver, origin.config.region, local_fetch(origin), r)
                wake_on_commit(origin, puller)
                self.pullers.append(puller)
                puller.start()
        self.nodes[region] = node

    async def stop(self) -> None:
        tasks = [puller.halt() for puller in self.pullers]  # all cancelled, then awaited
        self.pullers.clear()
        for task in tasks:
            await ended(task)
        self.nodes.clear()
        self.reactors.clear()
