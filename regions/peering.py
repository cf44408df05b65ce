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
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from aiohttp import web

from kms.crypto import transport
from kms.domain import events as ev
from kms.domain import multi_region as mr
from kms.domain.errors import KMSError
from kms.node import Node
from kms.store.log import EventLog
from kms.store.replication import ReplicatedRow
from regions import peer_auth
from regions.admin import Admin
from regions.identity import PeerIdentityChanged, PeerPins
from regions.peer_auth import PeerRequestRefused, PeerVerifier
from regions.replication import Reactor, ended
from regions.topology import Peer, Topology

if TYPE_CHECKING:
    from regions.host import RegionHost

log = structlog.get_logger("regions.peering")

PEER_REGION_HEADER = peer_auth.REGION_HEADER
REPLICATION_PATH = "/_kms/replication"
WAIT_MAX = 20.0  # seconds a replication read may be held open
FOLLOW_WAIT = 10.0  # what a follower asks for
REPLY_GRACE = 5.0  # past its wait, a held read with no answer means the link is stalled
LIMIT_DEFAULT, LIMIT_MAX = 500, 1000
CONTACT_TIMEOUT = aiohttp.ClientTimeout(total=5, sock_connect=3)
BACKOFF_MIN, BACKOFF_MAX = 0.1, 2.0
FIRST_ANSWER_WAIT = 5.0  # ReplicateKey from a region hosted here waits this long for the
# peer's first answer to that region's follower (does the peer accept it?)
REFUSED_RETRY = 30.0  # a peer whose identity was refused (or who refused us) is asked again
# this rarely


class PeerAnswerInvalid(ValueError):
    """A peer's answer is not what a kms node serves."""


class PeerRefused(Exception):
    """A peer that answers, but cannot be trusted as the configured region."""


class RefusedByPeer(Exception):
    """A peer that answers our signed read with 403 (it does not accept our identity)."""


# ---------------------------------------------------------------- serving

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


async def _message(reply: aiohttp.ClientResponse) -> str:
    """The message of a peer's JSON error, or the start of its body."""
    text = (await reply.text())[:500]
    try:
        doc = json.loads(text)
        return str(doc["message"])[:500]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {reply.status}: {text[:200]}"


def _bad(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"__type": code, "message": message}, status=status)


def row_json(row: ReplicatedRow) -> dict[str, Any]:
    return {"origin_seq": row.origin_seq, "stream": row.stream, "type_name": row.type_name,
            "at_ms": row.at_ms, "body": base64.b64encode(row.body).decode("ascii")}


def row_from_json(doc: Any) -> ReplicatedRow:
    try:
        return ReplicatedRow(int(doc["origin_seq"]), str(doc["stream"]), str(doc["type_name"]),
                             int(doc["at_ms"]), base64.b64decode(doc["body"], validate=True))
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise PeerAnswerInvalid(f"a replicated row is malformed: {exc}") from None


# ---------------------------------------------------------------- following

@dataclass
class PeerLink:
    """What this node knows of one peer, for the follower and for health."""

    peer: Peer
    local: str = ""  # the region hosted here that follows the peer (and signs as itself)
    reachable: bool | None = None  # None: not tried yet
    identity: bytes | None = None  # the key accepted at the last contact
    refused: str | None = None  # why the peer's identity was refused, if it was
    error: str | None = None
    last_ok: float | None = None  # monotonic time of the last answer
    last_contact_ms: int | None = None  # the same, as wall-clock epoch ms
    peer_last_seq: int | None = None
    cursor_seen: int = 0
    waiting: bool = False
    refused_by_peer: str | None = None  # the peer's 403 to our signed read, if it gave one
    pinning: asyncio.Lock = field(default_factory=asyncio.Lock)  # one first-use pin at once
    pin_failed: tuple[float, str] | None = None  # (monotonic, why) of the last failed pin
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # a first outcome is known
    follows: list[str] | None = None  # the regions the peer follows, as it said at contact

    def stalled(self, now: float) -> float | None:
        """Seconds since the last answer, if a read is held past its wait and grace."""
        if not self.waiting or self.last_ok is None:
            return None
        silent = now - self.last_ok
        return silent if silent > FOLLOW_WAIT + REPLY_GRACE else None

    def health(self, cursor: int) -> dict[str, Any]:
        now = time.monotonic()
        stalled = self.stalled(now)
        reachable = bool(self.reachable) and stalled is None
        doc: dict[str, Any] = {"url": self.peer.url, "reachable": reachable, "cursor": cursor}
        if self.peer_last_seq is not None:
            doc["lag_events"] = max(0, self.peer_last_seq - cursor)
        if self.last_ok is not None:
            doc["seconds_since_pull"] = round(now - self.last_ok, 3)
        if self.last_contact_ms is not None:
            doc["last_contact_ms"] = self.last_contact_ms
        if self.identity is not None:
            doc["identity_fingerprint"] = transport.fingerprint(self.identity)
        if self.refused is not None:
            doc["identity_refused"] = self.refused
        if self.refused_by_peer is not None:
            doc["refused_by_peer"] = self.refused_by_peer
        if self.follows is not None:  # does the peer pull this region's shared rows?
            doc["followed_by_peer"] = self.local in self.follows
        if stalled is not None:
            doc["error"] = (f"no answer for {stalled:.0f} s (a replication read held past "
                            f"its {FOLLOW_WAIT:g} s wait)")
        elif self.error is not None and not reachable:
            doc["error"] = self.error
        return doc


class Peering:
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

    async def _pinned(self, link: PeerLink) -> bytes:
        """The key a request from ``link``'s region must be signed with: configured, pinned,
        or pinned now from the peer's configured URL (PeerRequestRefused if it cannot be)."""
        peer = link.peer
        if peer.identity_key is not None:
            return transport.public_from_text(peer.identity_key)
        found = self.pins.get(peer.region)
        if found is not None:
            return found
        async with link.pinning:
            found = self.pins.get(peer.region)
            if found is not None:
                return found
            failed = link.pin_failed
            if failed is not None and time.monotonic() - failed[0] < BACKOFF_MAX:
                why = failed[1]  # asked a moment ago: a burst of requests asks it once
            else:
                try:
                    return await self._contact(link)
                except PeerRefused as exc:
                    why = str(exc)
                except (PeerAnswerInvalid, aiohttp.ClientError, TimeoutError, OSError) as exc:
                    why = (f"{peer.url}/_kms/region did not answer: "
                           f"{type(exc).__name__}: {exc}")[:300]
                link.pin_failed = (time.monotonic(), why)
        raise PeerRequestRefused(f"No identity key is pinned for region {peer.region} yet, and "
                                 f"it could not be pinned now ({why}); refusing the request.")

    # -- identities --------------------------------------------------------------------
    async def identity(self, region: str) -> bytes | None:
        """The identity key to seal material to ``region`` (a peer): the configured one,
        else the pin, else what first contact pins; None if refused or never reached."""
        link = self.links.get(region)
        if link is None or link.refused is not None:
            return None
        if link.peer.identity_key is not None:
            return transport.public_from_text(link.peer.identity_key)
        pinned = self.pins.get(region)
        if pinned is not None:
            return pinned
        try:
            return await self._contact(link)
        except (PeerRefused, PeerAnswerInvalid, aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def identity_for(self, node: Node, region: str) -> bytes | None:
        """The identity key ``node`` (the own region, or one hosted in-process) seals
        material to ``region`` (a peer) with; for a region hosted in-process, None while
        the peer refuses its reads (it does not name the region as its peer), waiting up
        to ``FIRST_ANSWER_WAIT`` seconds for the peer's first answer to its follower."""
        local = node.config.region
        if local != self.region:
            link = self.hosted.get((local, region))
            if link is None:
                return None
            if (local, region) in self._tasks and not link.answered.is_set():
                try:
                    await asyncio.wait_for(link.answered.wait(), FIRST_ANSWER_WAIT)
                except TimeoutError:
                    pass
            if link.refused_by_peer is not None or not self._followed_by(link):
                return None
        return await self.identity(region)

    @staticmethod
    def _followed_by(link: PeerLink) -> bool:
        """Whether the peer follows ``link.local`` (pulls its shared rows), as far as known."""
        return link.follows is None or link.local in link.follows

    def refused_reason(self, node: Node, region: str) -> str | None:
        """Why ``node`` cannot replicate to the peer ``region``, if this node knows: the
        peer's identity was refused, or (a region hosted in-process) the peer refuses it."""
        own = self.links.get(region)
        if own is not None and own.refused is not None:
            return f"its identity key was refused ({own.refused})."
        local = node.config.region
        link = self.hosted.get((local, region)) if local != self.region else None
        if link is None:
            return None
        if link.refused_by_peer is not None:
            why = f"does not accept {local} as its peer ({link.refused_by_peer})"
        elif not self._followed_by(link):
            why = (f"does not follow {local} (its peers: "
                   f"{', '.join(link.follows or ()) or 'none'})")
        else:
            return None
        return (f"{local} is hosted in-process by this --dev node ({self.region}), and the "
                f"{region} node at {link.peer.url} {why}. Start the {region} node with "
                f"--peer {local}=<this node's URL>, as it names {self.region}, or replicate "
                "to a region hosted in this process.")

    async def _contact(self, link: PeerLink) -> bytes:
        """Read the peer's /_kms/region and pin its key; PeerRefused if it is not the
        configured region or presents another key than the pinned or configured one. The
        region is named in the query: a --dev node answers for a region it hosts."""
        peer = link.peer
        assert self._session is not None, "peers are contacted only while the node serves"
        async with self._session.get(peer.url + "/_kms/region", params={"region": peer.region},
                                     timeout=CONTACT_TIMEOUT) as reply:
            if reply.status != 200:
                raise PeerAnswerInvalid(f"/_kms/region answered HTTP {reply.status}: "
                                        f"{await _message(reply)}")
            try:
                doc = await reply.json(content_type=None)
                said = str(doc["region"])
                key = transport.public_from_text(str(doc["identity_public_key"]))
                follows = doc.get("follows")  # absent from older nodes: not known
                link.follows = ([str(r) for r in follows][:1000]
                                if isinstance(follows, list) else None)
            except (ValueError, KeyError, TypeError) as exc:
                raise PeerAnswerInvalid(f"/_kms/region is malformed: {exc}") from None
        if said != peer.region:
            raise self._refuse(link, f"{peer.url} serves region {said[:40]!r}, "
                                     f"not {peer.region}")
        configured = peer.identity_key  # base64 text, as PeerPins.pin takes it
        try:
            if self.pins.pin(peer.region, key, configured):
                log.info("peer_pinned", region=peer.region, url=peer.url,
                         fingerprint=transport.fingerprint(key),
                         source="configured" if configured else "first contact")
        except PeerIdentityChanged as exc:
            raise self._refuse(link, str(exc)) from None
        except ValueError as exc:  # the key itself is not a usable X25519 public key
            raise PeerAnswerInvalid(str(exc)) from None
        link.identity, link.refused, link.pin_failed = key, None, None
        return key

    def _refuse(self, link: PeerLink, why: str) -> PeerRefused:
        if link.refused != why:
            log.error("peer_identity_refused", region=link.peer.region, url=link.peer.url,
                      reason=why)
        link.refused = why
        return PeerRefused(why)

    # -- following ---------------------------------------------------------------------
    async def _read(self, link: PeerLink, after: int, wait: float,
                    ) -> tuple[list[ReplicatedRow], int, int]:
        peer = link.peer
        assert self._session is not None
        assert link.identity is not None, "contacted first"
        identity = self.host.replication.identities[link.local]  # made before it follows
        params = {"origin": peer.region, "after": str(after), "limit": str(LIMIT_DEFAULT),
                  "wait": f"{wait:g}"}
        headers = peer_auth.sign(identity, link.identity, link.local, peer.region,
                                 "GET", REPLICATION_PATH, params, now=self.wall())
        # A stalled link (a dropped connection that never resets) ends the read here; a
        # catch-up read (wait 0) of a full page gets as long as a held one.
        timeout = aiohttp.ClientTimeout(total=max(wait, REPLY_GRACE) + REPLY_GRACE,
                                        sock_connect=3)
        link.waiting = True
        try:
            async with self._session.get(peer.url + REPLICATION_PATH, params=params,
                                         headers=headers, timeout=timeout) as reply:
                if reply.status == 403:
                    raise RefusedByPeer(await _message(reply))
                if reply.status != 200:
                    text = (await reply.text())[:200]
                    raise PeerAnswerInvalid(f"/_kms/replication answered HTTP "
                                            f"{reply.status}: {text}")
                try:
                    doc = await reply.json(content_type=None)
                    rows = [row_from_json(r) for r in doc["rows"]]
                    through, last_seq = int(doc["next_cursor"]), int(doc["last_seq"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise PeerAnswerInvalid(f"/_kms/replication is malformed: {exc}") from None
        finally:
            link.waiting = False
        return rows, through, last_seq

    async def _follow(self, link: PeerLink, node: Node) -> None:
        """Follow ``link``'s peer into ``node`` (the own region's, or one hosted here)."""
        region = link.peer.region
        reactor = self.host.replication.reactors.get(node.config.region)
        await self._reconcile(reactor)  # finish what a crash or stop left undone
        delay, contacted, behind = BACKOFF_MIN, False, True
        while True:
            try:
                if not contacted:
                    await self._contact(link)
                    contacted, behind = True, True
                after = node.log.cursor(region)
                # Catch up at once (after each contact, and while pages come full), then
                # hold a read open until the peer commits.
                rows, through, last_seq = await self._read(link, after,
                                                           0 if behind else FOLLOW_WAIT)
                behind = len(rows) >= LIMIT_DEFAULT
                if rows or through > after:
                    await node.log.append_replicated(region, rows, through)
                link.last_ok, link.peer_last_seq, link.error = time.monotonic(), last_seq, None
                link.last_contact_ms = int(self.wall() * 1000)
                link.refused_by_peer = None
                link.answered.set()
                if not link.reachable:
                    if link.reachable is False:
                        log.info("peer_reachable", region=region, url=link.peer.url,
                                 cursor=node.log.cursor(region), into=link.local)
                    link.reachable = True
                if rows:
                    await self._reconcile(reactor)
                delay = BACKOFF_MIN
            except asyncio.CancelledError:
                raise
            except PeerRefused:
                contacted = False
                link.reachable = True
                link.answered.set()
                await asyncio.sleep(REFUSED_RETRY)
            except RefusedByPeer as exc:
                contacted = False
                link.reachable, link.error = True, None
                link.last_ok, link.last_contact_ms = time.monotonic(), int(self.wall() * 1000)
                if link.refused_by_peer != str(exc):
                    if link.local == self.region:
                        log.error("refused_by_peer", region=region, url=link.peer.url,
                                  reason=str(exc))
                    else:  # a peer need not follow every region a --dev node hosts
                        log.info("refused_by_peer", region=region, url=link.peer.url,
                                 into=link.local, reason=str(exc))
                link.refused_by_peer = str(exc)
                link.answered.set()
                await asyncio.sleep(REFUSED_RETRY)
            except (aiohttp.ClientError, TimeoutError, OSError, PeerAnswerInvalid) as exc:
                contacted = False
                link.error = f"{type(exc).__name__}: {exc}"[:300]
                if link.reachable is not False:  # once per outage, not per attempt
                    log.warning("peer_unreachable", region=region, url=link.peer.url,
                                error=link.error, into=link.local)
                link.reachable = False
                link.answered.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
            except Exception:
                log.exception("replication_failed", origin=region, region=self.region)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    async def _reconcile(self, reactor: Reactor | None) -> None:
        if reactor is None:
            return
        try:
            await reactor.reconcile()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("replication_failed", region=self.region)

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
