"""What a node serves its peers: ``GET /_kms/region`` and ``GET /_kms/replication``.

Rules (regions.peering has the whole of them): ``/_kms/region[?region=R]`` is public and
names the region served (the own one, or R hosted in-process by a ``--dev`` node, opened on
first use; a region not served is answered as the own one), its identity public key and the
peers it follows. ``/_kms/replication?origin=R`` serves R's shared rows after a cursor, only
to configured peers in requests signed to R's identity key (``_admit``; in ``--dev`` an
unsigned loopback caller, or one signed as a region that is not a peer, is admitted); with
``wait > 0`` and nothing new it long-polls on ``CommitSignal`` (the log's own commits, never
polling) and answers at once when the node shuts down. Every refusal is 403
``AccessDeniedException`` naming why. ``PeerServing`` is a part of ``Peering`` (its state
is made by ``Peering.__init__``); the key a peer is pinned to comes from its follower's side
(regions.peer_following ``_pinned``).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from kms.domain import events as ev
from kms.domain import multi_region as mr
from kms.domain.errors import KMSError
from kms.node import Node
from kms.store.log import EventLog
from regions import peer_auth
from regions.peer_auth import PeerRequestRefused, PeerVerifier
from regions.peer_wire import (
    LIMIT_DEFAULT,
    LIMIT_MAX,
    PEER_REGION_HEADER,
    WAIT_MAX,
    _bad,
    row_json,
)
from regions.topology import Topology

if TYPE_CHECKING:
    from regions.host import RegionHost
    from regions.peer_following import PeerLink

log = structlog.get_logger("regions.peering")


class CommitSignal:
    """An event that fires once per commit of a shared stream in one log (and on a wipe):
    a waiter takes ``current()`` before it reads, so a commit between its read and its wait
    still wakes it."""

    def __init__(self, log_: EventLog) -> None:
        self._event = asyncio.Event()
        log_.subscribe(self._committed)

    def _committed(self, envelopes: Sequence[ev.Envelope] | None) -> None:
        if envelopes is None or any(mr.is_shared_stream(e.stream) for e in envelopes):
            self.fire()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        return self._event


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class PeerServing:
    """The serving half of ``Peering``: the two endpoints and what they need per region."""

    host: RegionHost
    node: Node
    topology: Topology
    region: str
    dev: bool
    wall: Callable[[], float]
    links: dict[str, PeerLink]
    _signals: dict[str, CommitSignal]
    _verifiers: dict[str, PeerVerifier]
    _closing: asyncio.Event

    if TYPE_CHECKING:  # declared for the type checker; Peering gets it from PeerFollowing
        async def _pinned(self, link: PeerLink) -> bytes: ...

    def _signal_of(self, node: Node) -> CommitSignal:
        region = node.config.region
        found = self._signals.get(region)
        if found is None:
            found = self._signals[region] = CommitSignal(node.log)
        return found

    def _verifier_of(self, node: Node) -> PeerVerifier:
        region = node.config.region
        found = self._verifiers.get(region)
        if found is None:
            found = self._verifiers[region] = PeerVerifier(
                self.host.replication.identity_of(node), region, now=self.wall)
        return found

    def _served(self, region: str | None) -> Node | None:
        """The node of a region this node serves replication for: its own, or one hosted
        in-process (``--dev``) and open."""
        if not region or region == self.region:
            return self.node
        found = self.host.routes.get(region) if self.dev else None
        return found if isinstance(found, Node) else None

    # -- endpoints ---------------------------------------------------------------------
    async def region_info(self, request: web.Request) -> web.Response:
        asked = request.query.get("region")
        node = self._served(asked)
        if node is None and asked is not None and self.dev and self.node.serving:
            try:  # a region this --dev node would host for a request signed for it
                node = await self.host.open(asked)
            except KMSError as exc:
                return _bad(exc.status, exc.code, exc.message)
        if node is None:  # as without the query: the caller sees which region this is
            node = self.node
        if not node.serving:
            return _bad(503, "KMSInternalException", "The node is starting.")
        identity = self.host.replication.identity_of(node)
        return web.json_response({"region": node.config.region,
                                  "identity_public_key": identity.public_key_b64,
                                  "fingerprint": identity.fingerprint,
                                  "follows": sorted(self.topology.peers)})


    async def replication(self, request: web.Request) -> web.Response:
        q = request.query
        origin = q.get("origin", self.region)
        served = self._served(origin)
        if served is None:
            return _bad(400, "ValidationException",
                        f"This node serves replication for {self.region}"
                        + (" and the regions it hosts" if self.dev else " only")
                        + f", not {origin[:40]!r}.")
        refusal = await self._admit(request, served)
        if refusal is not None:
            log.warning("replication_read_refused", remote=request.remote, origin=origin,
                        claimed=request.headers.get(PEER_REGION_HEADER, "")[:40],
                        reason=refusal)
            return _bad(403, "AccessDeniedException", refusal)
        try:
            after = int(q.get("after", "0"))
            limit = int(q.get("limit", str(LIMIT_DEFAULT)))
            wait = float(q.get("wait", "0"))
            if after < 0 or not 1 <= limit <= LIMIT_MAX or not 0 <= wait <= WAIT_MAX:
                raise ValueError
        except ValueError:
            return _bad(400, "ValidationException",
                        f"after >= 0, 1 <= limit <= {LIMIT_MAX}, 0 <= wait <= {WAIT_MAX:g}.")
        node, signal = served, self._signals.get(served.config.region)
        if not node.serving or signal is None:
            return _bad(503, "KMSInternalException", "The node is starting.")
        woken = signal.current()
        complete = node.log.last_seq
        rows, through = await node.log.read_for_peer(after, mr.is_shared_stream, limit)
        if not rows and through >= complete and wait > 0 and not self._closing.is_set():
            try:
                await asyncio.wait_for(woken.wait(), wait)
            except TimeoutError:
                pass
            if node.serving:  # woken, or at the end of the wait: the cursor moves on
                rows, through = await node.log.read_for_peer(after, mr.is_shared_stream, limit)
        return web.json_response({"origin": node.config.region,
                                  "rows": [row_json(r) for r in rows],
                                  "next_cursor": through, "last_seq": node.log.last_seq})

    async def _admit(self, request: web.Request, served: Node) -> str | None:
        """Why ``request`` may not read ``served``'s replication (None: it may): signed to
        that region's identity key; see the module's rules."""
        try:
            signed = peer_auth.signed_headers(request.headers)
            if signed is None:
                if self.dev and _loopback(request.remote or ""):
                    return None
                claimed = request.headers.get(PEER_REGION_HEADER, "")[:40]
                named = (f"The request names region {claimed} in {PEER_REGION_HEADER} but is "
                         "not signed. " if claimed else "")
                return (f"{named}Replication is served only to this node's configured peers, "
                        f"in requests signed with their region identity key: name the calling "
                        f"region in {PEER_REGION_HEADER} and sign the request "
                        f"({', '.join(peer_auth.SIGNED_HEADERS)}).")
            link = self.links.get(signed.region)
            if link is None and self.dev and _loopback(request.remote or ""):
                return None  # no key to check it by: admitted as an unsigned one would be
            if link is None:
                return (f"Region {signed.region[:40]!r} is not a configured peer of this node "
                        f"({served.config.region}); replication is served only to its "
                        "configured peers.")
            verifier = self._verifiers.get(served.config.region)
            if verifier is None:
                return "The node is starting."
            verifier.check_fresh(signed)  # before a first-use pin costs a request
            pinned = await self._pinned(link)
            verifier.verify(signed, pinned, request.method, request.path,
                            request.query.items())
        except PeerRequestRefused as exc:
            return str(exc)
        return None
