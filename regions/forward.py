"""Forwarding: a request signed for a peer's region goes to that peer's node, unchanged.

Rules: the request is sent as it came (method, path, query, body and headers, Host and
Authorization included, so the peer verifies the very signature the client made; only
hop-by-hop headers are dropped: the fixed list, and any the request's ``Connection`` header
names, RFC 9110 §7.6.1); the peer's status, body, ``x-amzn-RequestId`` and
``Content-Type`` are relayed as they are. The peer audits the call; this node only logs it.
A peer that cannot be reached is a 503 with an AWS JSON error body and a warning line.
One ClientSession serves the node's life (``cleanup_ctx``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict

from kms.api.app import FORWARDED_BY, Forward, PayloadTooLarge, RequestIds
from regions.topology import Peer

log = structlog.get_logger("regions.forward")

# RFC 9110 §7.6.1, plus the length aiohttp sets from the body it sends.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
                        "content-length"})
RELAYED = ("Content-Type", "x-amzn-RequestId")
# FORWARDED_BY is added (unsigned, so the signature still holds) to every forwarded request:
# a request that arrives with it and would be forwarded again is a loop in the topology,
# refused at once; the peer leaves aws:SourceIp/aws:SecureTransport out of its context.
TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=5)


def hop_by_hop(request: web.Request) -> frozenset[str]:
    """The headers meant for this hop only: the fixed ones, and those the client's
    ``Connection`` header names (lower case), which a proxy must not pass on."""
    named = {token.strip().lower() for value in request.headers.getall("Connection", ())
             for token in value.split(",")}
    return HOP_BY_HOP | named if named else HOP_BY_HOP


class Forwarder:
    """Sends requests to peers' nodes over one ClientSession."""

    def __init__(self, region: str) -> None:
        self.region = region  # this node's, named to the peer in FORWARDED_BY
        self._session: aiohttp.ClientSession | None = None
        self._request_id = RequestIds()

    async def session_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: the session lives as long as the node serves."""
        # No header the client did not send (a presigned GET has no Content-Type to add).
        self._session = aiohttp.ClientSession(timeout=TIMEOUT, auto_decompress=False,
                                              skip_auto_headers=("User-Agent", "Content-Type"))
        yield
        await self._session.close()
        self._session = None

    def to(self, peer: Peer) -> Forward:
        async def forward(request: web.Request) -> web.StreamResponse:
            return await self.forward(peer, request)
        return forward

    async def forward(self, peer: Peer, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge("The request body is too large.") from None
        dropped = hop_by_hop(request)
        headers = CIMultiDict((k, v) for k, v in request.headers.items()
                              if k.lower() not in dropped)
        target = request.headers.get("X-Amz-Target", "")
        if FORWARDED_BY in request.headers:
            return self._refused(peer, target, "forwarding_loop", 508,
                                 f"Region {peer.region} was forwarded here by "
                                 f"{request.headers[FORWARDED_BY][:40]!r} and would be "
                                 f"forwarded again to {peer.url}; check the peers' URLs.")
        headers[FORWARDED_BY] = self.region
        assert self._session is not None, "the forwarder serves only inside its app"
        try:
            async with self._session.request(
                    request.method, peer.url + request.path_qs, data=body, headers=headers,
                    allow_redirects=False) as reply:
                answer = await reply.read()
                relayed = {k: reply.headers[k] for k in RELAYED if k in reply.headers}
                if "Content-Encoding" in reply.headers:  # relayed as the peer sent it
                    relayed["Content-Encoding"] = reply.headers["Content-Encoding"]
                status = reply.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return self._refused(peer, target, "peer_unreachable", 503,
                                 f"Region {peer.region} ({peer.url}) is not reachable.",
                                 error=type(exc).__name__, detail=str(exc))
        log.info("forwarded", request_id=relayed.get("x-amzn-RequestId", "-"),
                 region=peer.region, url=peer.url, op=target, status=status,
                 ms=round((time.perf_counter() - started) * 1000, 2))
        return web.Response(body=answer, status=status, headers=relayed)

    def _refused(self, peer: Peer, target: str, event: str, status: int, message: str,
                 **fields: str) -> web.Response:
        """What this node answers itself for a request it could not forward."""
        request_id = self._request_id()
        log.warning(event, request_id=request_id, region=peer.region, url=peer.url, op=target,
                    status=status, **fields)
        return web.json_response({"__type": "KMSInternalException", "message": message},
                                 status=status, content_type="application/x-amz-json-1.1",
                                 headers={"x-amzn-RequestId": request_id})
