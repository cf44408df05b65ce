"""``GET /_kms/audit``: the CloudTrail records of a region's log, after a cursor, long-polled.

Rules: a consumer is woken by the log's durable commit of an audit fact (``subscribe_audit``),
never by polling the database. A cursor names a position by its seq and the hash chain's
value there, so after ``/_kms/reset`` or a restore (where the same seq holds another row or
none) it is refused with ``ExpiredCursorException`` (410), never silently reused. Reads are
audited (``ReadAuditStream``) unless every record they return is itself a read: so a read
never feeds a loop of reads. Open in ``--dev``; otherwise SigV4 by an ``audit_readers`` ARN.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import struct
import uuid
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from kms.api.sigv4 import SigV4Verifier
from kms.audit.cloudtrail import read_records
from kms.domain import events as ev
from kms.domain.errors import AccessDeniedException, KMSError, ValidationException
from kms.service.core import Caller, printable
from kms.store.log import EventLog

if TYPE_CHECKING:
    from kms.api.app import Regions
    from kms.node import Node

READ_EVENT = "ReadAuditStream"  # the eventName of a read of this stream
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_WAIT_SECONDS = 20.0
_CURSOR_PREFIX = "c1_"
_CURSOR = struct.Struct(">Q16s")
_CREDENTIAL = re.compile(r"Credential=([A-Za-z0-9]+)/")


class ExpiredCursorException(KMSError):
    """A cursor of another incarnation of the log (a reset, a restore, a pruned position)."""

    code = "ExpiredCursorException"
    status = 410


class ReadDenied(AccessDeniedException):
    """A signed caller not named in ``audit_readers`` (HTTP 403, like ``/_kms/replication``)."""

    code = "AccessDeniedException"
    status = 403


# -- cursors ------------------------------------------------------------------------------
def encode_cursor(seq: int, chain_hash: bytes) -> str:
    raw = _CURSOR.pack(seq, chain_hash[:16])
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, bytes]:
    """(seq, the chain hash prefix at seq), or ValidationException for what no node issued."""
    try:
        if not cursor.startswith(_CURSOR_PREFIX):
            raise ValueError(cursor)
        text = cursor[len(_CURSOR_PREFIX):]
        seq, prefix = _CURSOR.unpack(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        return seq, prefix
    except (ValueError, binascii.Error, struct.error):
        raise ValidationException(
            f"Value '{cursor[:64]}' at 'after' failed to satisfy constraint: Member must be a "
            "cursor this stream returned in NextCursor") from None


# -- waking followers ---------------------------------------------------------------------
class AuditFeed:
    """Resolves a future at each durable commit of audit facts (and at a wipe)."""

    def __init__(self, log: EventLog) -> None:
        self._changed: asyncio.Future[None] | None = None
        self.wipes = 0
        log.subscribe_audit(self)

    def __call__(self, envelopes: Sequence[ev.Envelope] | None) -> None:
        if envelopes is None:
            self.wipes += 1
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None

    def changed(self) -> asyncio.Future[None]:
        """A future done at the next commit (take it before reading, so none is missed)."""
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed


_FEEDS: weakref.WeakKeyDictionary[EventLog, AuditFeed] = weakref.WeakKeyDictionary()


def feed_for(log: EventLog) -> AuditFeed:
    feed = _FEEDS.get(log)
    if feed is None:
        feed = _FEEDS[log] = AuditFeed(log)
    return feed


# -- the endpoint -------------------------------------------------------------------------
def audit_handler(regions: Regions) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The ``GET /_kms/audit`` handler for the regions ``regions`` hosts."""
    verifiers: dict[str, SigV4Verifier] = {}

    def caller_of(request: web.Request, node: Node) -> Caller:
        ip, agent = request.remote or "", request.headers.get("User-Agent", "")
        account = node.config.account_id
        if node.config.dev:
            m = _CREDENTIAL.search(request.headers.get("Authorization", ""))
            return Caller(f"arn:aws:iam::{account}:root", account, m.group(1) if m else "",
                          ip, agent, principal_type="Root", user_id=account)
        region = node.config.region
        verifier = verifiers.get(region)
        if verifier is None:
            verifier = verifiers[region] = SigV4Verifier(node.credentials.secret, region,
                                                         now=node.clock.now)
        access_key = verifier.verify(request.method, request.raw_path.split("?", 1)[0],
                                     request.query_string, request.headers, b"")
        principal = node.credentials.principal(access_key)
        assert principal is not None  # the verifier knew its secret
        return Caller(principal.arn, principal.account, access_key, ip, agent,
                      principal_type=principal.principal_type, user_id=principal.user_id)

    def check_reader(node: Node, caller: Caller) -> None:
        if node.config.dev:
            return
        readers = regions.own.config.audit_readers
        identity = node.credentials.principal(caller.access_key_id)
        if caller.principal_arn not in readers and (
                identity is None or identity.identity_arn not in readers):
            raise ReadDenied(
                f"User: {caller.principal_arn} is not authorized to read the audit stream: it "
                "is not named in audit_readers")

    async def handle(request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        q = request.query
        node = regions.own
        caller = _unauthenticated(request)
        params = {k: printable(q[k][:128]) for k in ("after", "limit", "wait", "region")
                  if k in q}
        try:
            node = _node_for(regions, q.get("region"))
            caller = caller_of(request, node)
            check_reader(node, caller)
            limit = _number(q.get("limit"), "limit", DEFAULT_LIMIT, 1, MAX_LIMIT, int)
            wait = _number(q.get("wait"), "wait", 0.0, 0.0, MAX_WAIT_SECONDS, float)
            found, next_cursor = await _read(node, q.get("after", ""), int(limit), float(wait))
        except KMSError as exc:
            err = await node.service.record_beside(READ_EVENT, params, caller, request_id, exc)
            return _error(err or exc, request_id)
        if any(r["eventName"] != READ_EVENT for _, r in found):  # else: no loop of reads
            err = await node.service.record_beside(READ_EVENT, params, caller, request_id)
            if err is not None:
                return _error(err, request_id)
        return web.json_response({"Records": [r for _, r in found], "NextCursor": next_cursor},
                                 headers={"x-amzn-RequestId": request_id})

    return handle


async def _read(node: Node, after: str, limit: int, wait: float,
                ) -> tuple[list[tuple[int, dict[str, Any]]], str]:
    log = node.log
    feed = feed_for(log)
    wipes = feed.wipes
    seq, prefix = decode_cursor(after) if after else (0, b"")
    if after:
        await _check(log, seq, prefix)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        changed = feed.changed()
        found, through = await read_records(log, seq, limit, account=node.config.account_id)
        remaining = deadline - loop.time()
        if found or remaining <= 0 or feed.wipes != wipes:
            break
        try:
            await asyncio.wait_for(asyncio.shield(changed), remaining)
        except TimeoutError:
            pass
    if feed.wipes != wipes:  # wiped while this read was held: its cursor names nothing now
        raise ExpiredCursorException(_EXPIRED)
    chain = await log.chain_hash(through)
    if chain is None:
        raise ExpiredCursorException(_EXPIRED)
    return found, encode_cursor(through, chain)


_EXPIRED = ("The cursor belongs to an earlier incarnation of this region's log (it was reset "
            "or restored, or the records after the cursor were pruned). Start again without "
            "'after' and read from the oldest record held.")


async def _check(log: EventLog, seq: int, prefix: bytes) -> None:
    chain = await log.chain_hash(seq)
    if chain is None or chain[:16] != prefix:
        raise ExpiredCursorException(_EXPIRED)


def _node_for(regions: Regions, region: str | None) -> Node:
    if not region:
        return regions.own
    from kms.node import Node

    found = regions.routes.get(region)
    if not isinstance(found, Node):
        raise ValidationException(
            f"Region {region[:40]!r} is not hosted by this node; ask that region's endpoint.")
    return found


def _number(raw: str | None, name: str, default: float, low: float, high: float,
            kind: type[int] | type[float]) -> float:
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ValidationException(
            f"1 validation error detected: Value '{raw[:32]}' at '{name}' failed to satisfy "
            f"constraint: Member must be a number from {kind(low)} to {kind(high)}")
    return value


def _unauthenticated(request: web.Request) -> Caller:
    m = _CREDENTIAL.search(request.headers.get("Authorization", ""))
    return Caller("anonymous", "", m.group(1) if m else "", request.remote or "",
                  request.headers.get("User-Agent", ""))


def _error(err: KMSError, request_id: str) -> web.Response:
    return web.json_response({"__type": err.code, "message": err.message}, status=err.status,
                             headers={"x-amzn-RequestId": request_id})
