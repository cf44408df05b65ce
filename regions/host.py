"""Which node serves each region: the own node, in-process regions (``--dev``), peers' nodes.

Rules: with ``--dev`` every valid region a request is signed for gets a kms Node of its own,
created on first use, in ``<data-dir>/regions/<region>/`` (own log, root key, node.json,
checked by kms.datadir like any data dir; its own scheduler; the own node's clock), and the
regions already on disk are opened at start; the own region keeps ``<data-dir>`` itself. A
region the topology names as a peer is never hosted here: its requests go to the peer.
Without ``--dev`` only the own region is served here, as by kms alone.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from kms.api.app import Forward, Regions, Route
from kms.config import is_region_name
from kms.datadir import DataDir, DataDirRefused, open_data_dir
from kms.domain.errors import KMSInternalException
from kms.node import Node
from regions.replication import DevReplication
from regions.topology import Topology

if TYPE_CHECKING:
    from regions.peering import Peering

log = structlog.get_logger("regions.host")

REGIONS_DIR = "regions"


class RegionHost(Regions):
    def __init__(self, node: Node, topology: Topology,
                 forward: dict[str, Forward] | None = None) -> None:
        """Raises DataDirRefused for a region dir on disk that cannot be served."""
        super().__init__(node)
        self.topology = topology
        self.dev = node.config.dev
        self.routing = self.dev or bool(topology.peers)
        self.routes.update(forward or {})
        self._opened: list[DataDir] = []  # their locks are held for the life of the process
        self._opening = asyncio.Lock()
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
        found = []
        for path in sorted(root.iterdir()):
            name = path.name
            if not path.is_dir() or not is_region_name(name) or name == self.topology.region:
                continue
            if name in self.topology.peers:
                log.warning("region_dir_not_hosted", region=name, path=str(path),
                            reason="the region is a configured peer")
                continue
            found.append(name)
        return found

    def _host(self, region: str) -> Node:
        """A (not yet started) node for ``region`` on its own data dir."""
        path = self.region_dir(region)
        data = open_data_dir(path, region=region, account_id=self.own.config.account_id)
        self._opened.append(data)
        config = replace(self.own.config, region=region, data_dir=path)
        return Node(config, root_key=data.root_key, clock=self.own.clock)

    async def open(self, region: str) -> Route | None:
        if not self.dev or not is_region_name(region) or region in self.topology.peers:
            return None
        async with self._opening:  # first use only: two first requests make one node
            found = self.routes.get(region)
            if found is not None:
                return found
            try:
                node = await asyncio.to_thread(self._host, region)
                if self._started:
                    await node.start()
                    self._replicate(node)
            except (DataDirRefused, OSError, ValueError) as exc:
                log.error("region_not_opened", region=region, error=str(exc))
                raise KMSInternalException(
                    f"Region {region} cannot be opened by this node.") from None
            self.routes[region] = node
            log.info("region_opened", region=region, path=str(self.region_dir(region)))
            return node

    async def start(self) -> None:
        await super().start()
        self._started = True
        for node in self.nodes():
            self._replicate(node)

    def _replicate(self, node: Node) -> None:
        node.service.regions = self if node is self.own else _Hosted(self)
        self.replication.add(node)

    async def identity_public_key(self, region: str) -> bytes | None:
        """kms.service.core.RegionDirectory: the identity of a region hosted here (opened
        on first use in ``--dev``), or of a peer (configured, pinned, or pinned now on
        first contact); None for any other."""
        if region in self.topology.peers:
            return await self.peering.identity(region) if self.peering else None
        route = self.routes.get(region) or await self.open(region)
        if not isinstance(route, Node) or not self._started:
            return None
        return self.replication.identity_of(route).public_key

    def peer_health(self) -> dict[str, Any]:
        """Per peer: cursor, lag, seconds since the last pull, reachability (for health)."""
        return self.peering.health() if self.peering else {}

    async def stop(self) -> None:
        async with self._opening:  # no region opens while the others close
            self._started = False
            await self.replication.stop()
            await super().stop()


class _Hosted:
    """The RegionDirectory of a region hosted here other than the own one: peers follow
    only the own region, so it replicates only to the regions hosted in this process."""

    def __init__(self, host: RegionHost) -> None:
        self.host = host

    async def identity_public_key(self, region: str) -> bytes | None:
        if region in self.host.topology.peers:
            return None
        return await self.host.identity_public_key(region)
