"""The scheduler: acts on what falls due (rotation, deletion, material expiry).

Rules: what is due is decided by kms.domain.lifecycle from state and the injected
Clock; each action is an ``AwsServiceEvent`` appended like any call (RotateKey,
DeleteKey, DeleteExpiredKeyMaterial). It runs once at start, so a deletion that
fell due while the node was down happens then, then every ``interval`` seconds,
and whenever the dev clock moves.
"""

from __future__ import annotations

import asyncio

import structlog

from kms.crypto.keyring import vault_ids_of
from kms.domain import events as ev
from kms.domain import lifecycle
from kms.domain.key import Key
from kms.domain.multi_region import is_replica, mrk_stream
from kms.service.core import Call, Service
from kms.service.import_ops import destroy_material
from kms.service.region_ops import replica_identities, share_rotation
from kms.store.log import VaultChange
from kms.store.state import alias_stream, key_stream

log = structlog.get_logger("kms.schedule")


class Scheduler:
    def __init__(self, service: Service, interval: float = 1.0) -> None:
        self.service = service
        self.interval = interval
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def run_due(self) -> int:
        """Perform every due action once; returns how many were done."""
        async with self._lock:
            svc = self.service
            now = svc.clock.now_ms()
            done = 0
            for key_id in list(svc.state.keys):
                # Read each key afresh: calls land while earlier actions await their commit,
                # and a decision must be made from the very version its append expects.
                key = svc.state.keys.get(key_id)
                if key is None:
                    continue
                due = lifecycle.due(key, now)
                if due is None:
                    continue
                action = {"delete": self._delete, "rotate": self._rotate,
                          "expire": self._expire}[due.action]
                if await action(key):
                    done += 1
            return done

    async def _delete(self, key: Key) -> bool:
        svc = self.service

        def decide(call: Call, k: Key) -> None:
            call.emit(key_stream(k.key_id), [ev.KeyDeleted(k.key_id)])
            if is_replica(k, svc.state.mrks.get(k.key_id)):
                # The set learns it from this region: the primary (waiting in
                # PendingReplicaDeletion, perhaps) and the other replicas fold it.
                shared = mrk_stream(k.key_id)
                call.seen[shared] = svc.log.version(shared)
                call.emit(shared, [ev.ReplicaDeleted(k.key_id, svc.region)])
            for alias in svc.state.aliases_of(k.key_id):
                stream = alias_stream(alias.name)
                call.seen[stream] = svc.log.version(stream)
                call.emit(stream, [ev.AliasDeleted(alias.name)])
            # Crypto-shredding: the key's KEK and its imported materials' KEKs. The keyring
            # drops its cached copies when the commit reaches it (Keyring.committed).
            for vault_id in vault_ids_of(k.key_id, svc.log.vault):
                call.vault.append(VaultChange(vault_id, None))

        ok = await svc.service_event("DeleteKey", key, decide)
        if ok:
            log.info("key_deleted", key_id=key.key_id)
        return ok

    async def _rotate(self, key: Key) -> bool:
        svc = self.service
        if is_replica(key, svc.state.mrks.get(key.key_id)):
            return False  # a replica's versions come from its primary, never from here
        identities = await replica_identities(svc, key)
        if svc.state.keys.get(key.key_id) is not key:
            return False  # it changed while the replicas were looked up: the next tick decides

        def decide(call: Call, k: Key) -> None:
            material = svc.keyring.seal(k.key_id, svc.symmetric_material())
            rotated = lifecycle.rotated(k, material, "AUTOMATIC", call.at_ms)
            call.emit(key_stream(k.key_id), [rotated])
            share_rotation(svc, call, k, material, "AUTOMATIC", identities,
                           rotated.next_rotation_ms)
            call.additional["keyMaterialId"] = material.material_id

        ok = await svc.service_event("RotateKey", key, decide)
        if ok:
            log.info("key_rotated", key_id=key.key_id)
        return ok

    async def _expire(self, key: Key) -> bool:
        def decide(call: Call, k: Key) -> None:
            expiring = k.next_expiry()
            if expiring is not None:  # destroyed like DeleteImportedKeyMaterial destroys it
                call.additional["keyMaterialId"] = expiring.material_id
                destroy_material(self.service, call, k, expiring.material_id, expired=True)

        return await self.service.service_event("DeleteExpiredKeyMaterial", key, decide)

    def paused(self) -> asyncio.Lock:
        """Hold while something else rewrites state (a dev reset)."""
        return self._lock

    # -- background task ------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_due()
            except Exception:  # keep scheduling; the next tick retries
                log.exception("scheduler_failed")
            await asyncio.sleep(self.interval)
