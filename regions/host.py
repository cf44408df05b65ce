"""Which node serves each region: the own node, in-process regions (``--dev``), peers' nodes.

Rules: with ``--dev`` every known AWS region (botocore's KMS regions, read once at start, and
the node's own) that a parsed request is signed for gets a kms Node of its own, created on
first use, in ``<data-dir>/regions/<region>/`` (own log, root key, node.json, checked by
kms.datadir like any data dir; its own scheduler; the own node's clock), at most
``max_dev_regions`` in all, and the known regions already on disk are opened at start; the
own region keeps ``<data-dir>`` itself. A region that fails to open is stopped, its dir
released, and refused from then on without another try. A region the topology names as a
peer is never hosted here: its requests go to the peer. A region hosted in-process replicates
with the other regions hosted here and with the peers (regions.peering: it follows each peer,
signing as itself; a peer follows it by naming it with ``--peer REGION=<this node's URL>``).
Without ``--dev`` only the own region is served here, as by kms alone. ``_opening`` is held
only while a region opens or replication stops, never across a wait for a node's scheduler
(whose rotation may look up, and open, a region).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import botocore.session
import structlog

from kms.api.app import Forward, Regions
from kms.config import is_region_name
from kms.datadir import DataDir, open_data_dir
from kms.domain.errors import KMSInternalException, LimitExceededException
from kms.node import Node
from regions.replication import DevReplication
from regions.topology import Topology

if TYPE_CHECKING:
    from regions.peering import Peering

log = structlog.get_logger("regions.host")

REGIONS_DIR = "regions"


def known_regions() -> frozenset[str]:
    """The regions AWS offers KMS in (commercial partition, whose ARNs this node makes), as
    the installed botocore knows them; reads botocore's endpoint data, so call it once."""
    return frozenset(botocore.session.get_session().get_available_regions("kms"))


class RegionHost(Regions):
    def __init__(self, node: Node, topology: Topology,
                 forward: dict[str, Forward] | None = None) -> None:
        """Raises DataDirRefused for a region dir on disk that cannot be served."""
        super().__init__(node)
        self.topology = topology
        self.dev = node.config.dev
        self.routing = self.dev or bool(topology.peers)
        self.routes.update(forward or {})
        self.known = (known_regions() | {topology.region}) if self.dev else frozenset()
        self.max_regions = node.config.max_dev_regions
        self._opened: dict[str, DataDir] = {}  # their locks are held while the region is
        self._refused: dict[str, str] = {}  # region -> why it could not be opened (logged once)
        self._opening = asyncio.Lock()  # never held while waiting for a node's scheduler
        self._resetting = asyncio.Lock()
        self._paused = False  # a reset has stopped replication and not yet restarted it
        self._started = False
        self.replication = DevReplication()  # between the regions hosted here
        self.peering: Peering | None = None  # the peers over HTTP (regions.peering)
        if self.dev:
            for region in self.on_disk():
                self.routes[region] = self._host(region)

    def region_dir(self, region: str) -> Path:
        return Path(self.own.config.data_dir) / REGIONS_DIR / region

    def on_disk(self) -> list[str]:
        """The regions whose dirs are under ``<data-dir>/regions/`` (peers' excepted)."""
        root = Path(self.own.config.data_dir) / REGIONS_DIR
        if not root.is_dir():
            return []
        found: list[str] = []
        for path in sorted(root.iterdir()):
            name = path.name
            if not path.is_dir() or not is_region_name(name) or name == self.topology.region:
                continue
            if name in self.topology.peers:
                log.warning("region_dir_not_hosted", region=name, path=str(path),
                            reason="the region is a configured peer")
                continue
            if name not in self.known:
                log.warning("region_dir_not_hosted", region=name, path=str(path),
                            reason="not a region AWS offers KMS in (botocore's list)")
                continue
            if len(found) + 1 >= self.max_regions:
                log.warning("region_dir_not_hosted", region=name, path=str(path),
                            reason=f"max_dev_regions ({self.max_regions}) reached")
                continue
            found.append(name)
        return found

    def _host(self, region: str) -> Node:
        """A (not yet started) node for ``region`` on its own data dir."""
        path = self.region_dir(region)
        data = open_data_dir(path, region=region, account_id=self.own.config.account_id)
        self._opened[region] = data
        config = replace(self.own.config, region=region, data_dir=path)
        return Node(config, root_key=data.root_key, clock=self.own.clock)

    async def open(self, region: str) -> Node | None:
        """The node for a known region not hosted yet (``--dev``), or None (not one to host
        here). LimitExceededException past ``max_dev_regions``; KMSInternalException for a
        region that cannot be opened (then and on every later request, without a retry)."""
        if (not self.dev or region not in self.known or region in self.topology.peers
                or region == self.topology.region):
            return None
        async with self._opening:  # first use only: two first requests make one node
            found = self.routes.get(region)
            if isinstance(found, Node):
                return found
            if region in self._refused:
                raise KMSInternalException(self._refused[region])
            if len(self.nodes()) >= self.max_regions:
                raise LimitExceededException(
                    f"This --dev node hosts {self.max_regions} regions, its max_dev_regions; "
                    f"region {region} is not opened.")
            node: Node | None = None
            try:
                node = await asyncio.to_thread(self._host, region)
                if self._started:
                    await node.start()
                    if self._paused:  # a reset under way wires it in when it is done
                        self._direct(node)
                    else:
                        self._replicate(node)
            except Exception as exc:  # LogCorrupted, a damaged identity, a locked dir, ...
                await self._abandon(region, node)
                message = f"Region {region} cannot be opened by this node."
                self._refused[region] = message
                log.error("region_not_opened", region=region, error=str(exc) or
                          type(exc).__name__, retry="never, until the node restarts")
                raise KMSInternalException(message) from None
            self.routes[region] = node
            log.info("region_opened", region=region, path=str(self.region_dir(region)))
            return node

    async def _abandon(self, region: str, node: Node | None) -> None:
        """Undo a region that failed to open: no puller, no scheduler, no writer, no lock."""
        if node is not None:
            await self._unreplicate(node)
            try:
                await node.stop()
            except Exception as exc:
                log.error("region_stop_failed", region=region, error=str(exc))
        data = self._opened.pop(region, None)
        if data is not None:
            os.close(data.lock_fd)  # releases the dir's flock

    async def _unreplicate(self, node: Node) -> None:
        """Take ``node`` out of the in-process replication (pullers it received or fed) and
        out of the peers' (its followers), every task of it ended before this returns."""
        rep = self.replication
        for puller in [p for p in rep.pullers if p.receiver is node
                       or p.origin_region == node.config.region]:
            rep.pullers.remove(puller)
            await puller.stop()
        if rep.nodes.get(node.config.region) is node:
            del rep.nodes[node.config.region]
        rep.reactors.pop(node.config.region, None)
        if self.peering is not None and node is not self.own:
            await self.peering.unfollow(node)

    async def start(self) -> None:
        await super().start()
        self._started = True
        for node in self.nodes():
            self._replicate(node)

    def _replicate(self, node: Node) -> None:
        self._direct(node)
        self.replication.add(node)
        if self.peering is not None and node is not self.own:
            self.peering.follow(node)  # once the peers' followers run (else at their start)

    def _direct(self, node: Node) -> None:
        node.service.regions = self if node is self.own else _Hosted(self, node)

    def reset_refusal(self) -> str | None:
        peers = sorted(self.topology.peers)
        if not peers:
            return None
        return (f"Reset is refused: this node has peers ({', '.join(peers)}), which keep "
                "replication cursors into its log and replicas of its keys, so a wipe of "
                "this node alone would leave them diverged. Stop every node and start them "
                "again with empty data dirs (python ops/cluster.py down, then up) instead.")

    async def reset(self) -> None:
        """Wipe every hosted region with no pull under way: a pull fetched before one
        region's wipe must not land in another after its wipe (stale rows, or a cursor
        ahead of the new log). The pullers stop, every node is wiped, then they start
        again from the (now empty) cursors. ``_opening`` is not held while the nodes are
        wiped: a node's wipe waits for its scheduler, whose rotation may be waiting to
        look up (and open) a region; a region opened meanwhile is wired in afterwards."""
        async with self._resetting:  # one reset at a time
            async with self._opening:  # no region opens while the pullers stop
                self._paused = True
                await self.replication.stop()
            try:
                await super().reset()
            finally:
                async with self._opening:
                    self._paused = False
                    if self._started:  # not if the node stopped meanwhile
                        for node in self.nodes():
                            self._replicate(node)

    async def identity_public_key(self, region: str) -> bytes | None:
        """kms.service.core.RegionDirectory: the identity of a region hosted here (opened
        on first use in ``--dev``, once the regions have started), or of a peer
        (configured, pinned, or pinned now on first contact); None for any other."""
        return await self.identity_for(self.own, region)

    async def identity_for(self, node: Node, region: str) -> bytes | None:
        """The identity of ``region`` as ``node`` (hosted here) replicates to it."""
        if region in self.topology.peers:
            return await self.peering.identity_for(node, region) if self.peering else None
        if not self._started:  # a node's first scheduler run opens nothing
            return None
        route = self.routes.get(region) or await self.open(region)
        if not isinstance(route, Node):
            return None
        return self.replication.identity_of(route).public_key

    def unreachable_reason(self, region: str) -> str | None:
        return self.unreachable_from(self.own, region)

    def unreachable_from(self, node: Node, region: str) -> str | None:
        """Why ``node`` cannot replicate to ``region`` now, if this node knows (a peer that
        refuses its reads); None when it does not."""
        if region in self.topology.peers and self.peering is not None:
            return self.peering.refused_reason(node, region)
        return None

    def peer_health(self) -> dict[str, Any]:
        """Per peer: cursor, lag, seconds since the last pull, reachability (for health)."""
        return self.peering.health() if self.peering else {}

    async def stop(self) -> None:
        async with self._opening:  # no region opens while the others close
            self._started = False
            await self.replication.stop()
            await super().stop()


class _Hosted:
    """The RegionDirectory of a region hosted here other than the own one: it replicates
    with the regions hosted in this process and with the peers that follow it (a peer
    that names it with ``--peer`` at this node's URL: regions.peering)."""

    def __init__(self, host: RegionHost, node: Node) -> None:
        self.host = host
        self.node = node

    async def identity_public_key(self, region: str) -> bytes | None:
        return await self.host.identity_for(self.node, region)

    def unreachable_reason(self, region: str) -> str | None:
        return self.host.unreachable_from(self.node, region)
