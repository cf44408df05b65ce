"""The follower of each peer: the task that pulls its shared rows, its health, backoff.

Rules (regions.peering has the whole of them): on (re)contact a follower reads the peer's
``/_kms/region``, checks the region, and pins its key (``PeerPins``; a configured
``identity_key`` wins; a changed key is refused, logged once, shown in health, and that peer
is neither followed nor replicated to). Then it long-polls the peer from the durable
``log.cursor(peer)`` in reads signed as the region it follows into (the own one, or one
hosted in-process, each with its own identity key), appends with ``append_replicated`` (a
replay appends nothing) and runs that region's Reactor. A peer that is down is retried with
backoff (``BACKOFF_MIN`` doubling to ``BACKOFF_MAX``), logged once per outage; one that
refuses us, or whose identity was refused, is asked again every ``REFUSED_RETRY`` seconds.
Health's ``reachable`` follows the last answer: a read held more than ``FOLLOW_WAIT +
REPLY_GRACE`` seconds past it (a stalled link) shows the peer unreachable, and the read is
then abandoned. ``PeerFollowing`` is a part of ``Peering`` (its state is made by
``Peering.__init__``, its tasks started by ``Peering._start``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from kms.crypto import transport
from kms.node import Node
from kms.store.replication import ReplicatedRow
from regions import peer_auth
from regions.identity import PeerIdentityChanged, PeerPins
from regions.peer_auth import PeerRequestRefused
from regions.peer_wire import (
    LIMIT_DEFAULT,
    REPLICATION_PATH,
    PeerAnswerInvalid,
    _message,
    row_from_json,
)
from regions.replication import Reactor
from regions.topology import Peer

if TYPE_CHECKING:
    from regions.host import RegionHost

log = structlog.get_logger("regions.peering")

FOLLOW_WAIT = 10.0  # what a follower asks for
REPLY_GRACE = 5.0  # past its wait, a held read with no answer means the link is stalled
CONTACT_TIMEOUT = aiohttp.ClientTimeout(total=5, sock_connect=3)
BACKOFF_MIN, BACKOFF_MAX = 0.1, 2.0
FIRST_ANSWER_WAIT = 5.0  # ReplicateKey from a region hosted here waits this long for the
# peer's first answer to that region's follower (does the peer accept it?)
REFUSED_RETRY = 30.0  # a peer whose identity was refused (or who refused us) is asked again
# this rarely


class PeerRefused(Exception):
    """A peer that answers, but cannot be trusted as the configured region."""


class RefusedByPeer(Exception):
    """A peer that answers our signed read with 403 (it does not accept our identity)."""


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


class PeerFollowing:
    """The following half of ``Peering``: contact, pins, the follower loop, identities."""

    host: RegionHost
    region: str
    wall: Callable[[], float]
    pins: PeerPins
    links: dict[str, PeerLink]
    hosted: dict[tuple[str, str], PeerLink]
    _session: aiohttp.ClientSession | None
    _tasks: dict[tuple[str, str], asyncio.Task[None]]

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
