"""Which node answers a request signed for a region: the seam between the gateway
(kms.api.app) and the multi-region layer (regions.host), which subclasses ``Regions``.

Rules: ``Regions.routes`` is the gateway's one lookup per request; everything else here
runs at start, stop, reset or a clock move, or for a region seen for the first time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from kms.node import Node

Forward = Callable[[web.Request], Awaitable[web.StreamResponse]]
Route = Node | Forward  # a region served here, or a peer's node that serves it


class Regions:
    """Which node serves each region a request may be signed for. This one serves only the
    node's own region (any other is the verifier's wrong-region error, or in ``--dev`` the
    own node's); a layer above overrides ``open`` to host more regions or forward to peers.

    Rules: ``routes`` is the hot path (one dict lookup per request); ``open`` is called only
    for a region not in it yet, once the request parsed, and adds what it returns; every
    hosted node starts and stops with the app, and /_kms/reset and /_kms/clock act on each."""

    routing = False  # whether the gateway looks at the signed region at all

    def __init__(self, node: Node) -> None:
        self.own = node
        self.routes: dict[str, Route] = {node.config.region: node}

    def nodes(self) -> list[Node]:
        """Every node hosted in this process, the own region's first."""
        return [self.own, *(r for r in self.routes.values()
                            if isinstance(r, Node) and r is not self.own)]

    async def open(self, region: str) -> Node | None:
        """The node for a region seen for the first time, or None (not served here: the
        wrong-region error). Called only for a request that parsed into a known operation,
        so a malformed or unknown call never makes a region; may raise a KMSError."""
        return None

    async def start(self) -> None:
        for node in self.nodes():
            await node.start()

    async def stop(self) -> None:
        for node in reversed(self.nodes()):
            await node.stop()

    def reset_refusal(self) -> str | None:
        """Why ``/_kms/reset`` cannot wipe these nodes, or None."""
        return None

    async def reset(self) -> None:
        for node in self.nodes():
            await node.reset()

    async def advance_clock(self, seconds: float) -> None:
        """Hosted nodes share the own node's clock: move it once, then act on what fell due."""
        await self.own.advance_clock(seconds)
        for node in self.nodes()[1:]:
            if node.clock is not self.own.clock:
                node.clock.advance(seconds)
            await node.scheduler.run_due()
