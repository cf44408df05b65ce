"""Peers over HTTP: what a node serves its peers, and how it follows each of them.

Rules: ``GET /_kms/region[?region=R]`` names this node's region (or R, a region this
``--dev`` node hosts in-process, opened on first use), its X25519 identity public key and
the peers it follows (``follows``) (public, open to anyone; a region not served here is
answered as the own one, so the asker sees the mismatch).
``GET /_kms/replication?origin=R&after=N&limit=L&wait=S`` serves the own region's (or an
in-process region R's) shared (``mrk/``) rows after a cursor through ``EventLog.read_for_peer``
(bodies base64, exactly as stored: material in them is only ever sealed to a receiving
region), with ``next_cursor``; with ``wait > 0`` and nothing new it long-polls, woken by the
log's own commits (never by polling), for at most ``WAIT_MAX`` seconds, and returns early
when the node shuts down. Only configured peers may read it, in requests signed with their
identity key (regions.peer_auth: MAC keyed from the X25519 agreement with this region's key,
fresh within 5 minutes, each nonce once); a peer not pinned yet is pinned first from its
configured URL's ``/_kms/region`` (trust on first use, as the follower does). The caller's
address is not checked: the MAC proves the peer's key, and addresses change behind NAT, load
balancers and proxies. In ``--dev`` an unsigned loopback caller is admitted, and so is one
signed as a region that is not a peer (nothing to check it by); one signed as a peer is
checked. Every refusal is 403 ``AccessDeniedException`` naming why.

A request for R must be signed to R's identity key. Each region hosted in-process follows
every peer too, signing as itself with its own identity key (the peer accepts it once it
names that region with ``--peer R=<this node's URL>``); ReplicateKey from such a region into
a peer that does not follow it (its ``follows``) or refuses its reads is refused, naming why.

Each peer has one follower task for the node's life (``cleanup_ctx``): on (re)contact it
reads the peer's ``/_kms/region``, checks the region, and pins the key (``PeerPins``; a
configured ``identity_key`` wins; a changed key is refused, logged once, shown in health,
and that peer is neither followed nor replicated to). Then it long-polls the peer from the
durable ``log.cursor(peer)`` in signed reads, appends with ``append_replicated`` (a replay
appends nothing), and runs the own region's Reactor. A peer that is down is retried with
backoff, logged once per outage (``peer_unreachable``, then ``peer_reachable``). Health's
``reachable`` follows the last answer: a read held more than ``FOLLOW_WAIT + REPLY_GRACE``
seconds past it (a stalled link) shows the peer unreachable, and the read is then abandoned.

The parts: the wire (regions.peer_wire: path, limits, a row as JSON), what a node serves its
peers (regions.peer_serving: the two endpoints, ``CommitSignal``, admission), the follower of
each peer (regions.peer_following: ``PeerLink``, contact and pins, the follower loop, the
identities ReplicateKey seals to); here, ``Peering`` puts them together with the followers'
life (``cleanup_ctx``) and the in-process regions' wiring (``follow``/``unfollow``), and
names every name the parts define.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from kms.node import Node
from regions.admin import Admin
from regions.identity import PeerPins
from regions.peer_auth import PeerVerifier
from regions.peer_following import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    CONTACT_TIMEOUT,
    FIRST_ANSWER_WAIT,
    FOLLOW_WAIT,
    REFUSED_RETRY,
    REPLY_GRACE,
    PeerFollowing,
    PeerLink,
    PeerRefused,
    RefusedByPeer,
    log,
)
from regions.peer_serving import CommitSignal, PeerServing
from regions.peer_wire import (
    LIMIT_DEFAULT,
    LIMIT_MAX,
    PEER_REGION_HEADER,
    REPLICATION_PATH,
    WAIT_MAX,
    PeerAnswerInvalid,
    row_from_json,
    row_json,
)
from regions.replication import ended
from regions.topology import Topology

if TYPE_CHECKING:
    from regions.host import RegionHost

__all__ = ["BACKOFF_MAX", "BACKOFF_MIN", "CONTACT_TIMEOUT", "FIRST_ANSWER_WAIT", "FOLLOW_WAIT",
           "LIMIT_DEFAULT", "LIMIT_MAX", "PEER_REGION_HEADER", "REFUSED_RETRY", "REPLICATION_PATH",
           "REPLY_GRACE", "WAIT_MAX", "CommitSignal", "PeerAnswerInvalid", "PeerLink",
           "PeerRefused", "Peering", "RefusedByPeer", "log", "row_from_json", "row_json"]


class Peering(PeerFollowing, PeerServing):
    """The node's side of its peers: the two endpoints, a follower per peer, pinned keys."""

    def __init__(self, host: RegionHost, topology: Topology,
                 wall: Callable[[], float] = time.time) -> None:
        """Raises DataDirRefused for a damaged peers.json. ``wall`` dates and checks signed
        peer requests: the real clock, never a --dev node's movable key-schedule clock."""
        self.host = host
        self.node: Node = host.own
        self.topology = topology
        self.region = topology.region
        config = self.node.config
        self.pins = PeerPins.load(config.data_dir)
        self.dev = config.dev
        self.wall = wall
        self.links = {r: PeerLink(p, self.region) for r, p in topology.peers.items()}
        # (region hosted in-process, peer) -> its link: the peer followed into that region
        self.hosted: dict[tuple[str, str], PeerLink] = {}
        self._signals: dict[str, CommitSignal] = {}  # per region served, made on first use
        self._session: aiohttp.ClientSession | None = None
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}  # (local, peer) -> follower
        self._closing = asyncio.Event()
        self._verifiers: dict[str, PeerVerifier] = {}  # per region served, once it serves

    def install(self, app: web.Application) -> None:
        """Add the endpoints, and the followers' life, to ``app`` (after the nodes' own
        start in ``cleanup_ctx``, so they start after and stop before the nodes)."""
        app.add_routes([web.get("/_kms/region", self.region_info),
                        web.get(REPLICATION_PATH, self.replication)])
        Admin(self.host).install(app)  # promote, conflicts (regions.admin)
        app.cleanup_ctx.append(self._ctx)
        app.on_shutdown.append(self._shutdown)

    async def _ctx(self, app: web.Application) -> AsyncIterator[None]:
        self._signal_of(self.node)
        self._verifier_of(self.node)
        self._session = aiohttp.ClientSession(skip_auto_headers=("User-Agent",))
        for link in self.links.values():
            self._start(link, self.node)
        for node in self.host.nodes()[1:]:  # in-process regions opened before the peers ran
            self.follow(node)
        yield
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            await ended(task)
        await self._session.close()
        self._session = None

    async def _shutdown(self, app: web.Application) -> None:
        self._closing.set()  # held replication reads answer now, not after their wait
        for signal in self._signals.values():
            signal.fire()

    # -- in-process regions ------------------------------------------------------------
    def follow(self, node: Node) -> None:
        """Follow every peer into ``node``, a region hosted in-process (``--dev``), signing
        as that region with its own identity: a peer accepts it once it names the region
        with ``--peer REGION=<this node's URL>``. Idempotent; before the peers' followers
        run (``cleanup_ctx``), they start it with the rest."""
        region = node.config.region
        if self._session is None or region == self.region:
            return
        self._signal_of(node)
        self._verifier_of(node)
        for peer_region, peer in self.topology.peers.items():
            link = self.hosted.get((region, peer_region))
            if link is None:
                link = self.hosted[(region, peer_region)] = PeerLink(peer, region)
            self._start(link, node)

    async def unfollow(self, node: Node) -> None:
        """Stop following the peers into ``node`` (a region abandoned): its tasks end."""
        region = node.config.region
        for key in [k for k in self._tasks if k[0] == region]:
            task = self._tasks.pop(key)
            task.cancel()
            await ended(task)

    def _start(self, link: PeerLink, node: Node) -> None:
        key = (link.local, link.peer.region)
        if key not in self._tasks:
            name = f"follow-{link.peer.region}" + (
                f"-into-{link.local}" if link.local != self.region else "")
            self._tasks[key] = asyncio.create_task(self._follow(link, node), name=name)

    def health(self) -> dict[str, Any]:
        """Per peer, as the own region follows it; ``hosted``: as each region hosted
        in-process follows it (reachable, and whether the peer accepts that region)."""
        out = {region: link.health(self.node.log.cursor(region))
               for region, link in self.links.items()}
        for (local, region), link in sorted(self.hosted.items()):
            node = self.host.routes.get(local)
            if isinstance(node, Node) and region in out:
                out[region].setdefault("hosted", {})[local] = link.health(
                    node.log.cursor(region))
        return out
