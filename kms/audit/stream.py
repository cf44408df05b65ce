"""``GET /_kms/audit``: the CloudTrail records of a region's log, after a cursor, long-polled.

Rules: a consumer is woken by the log's durable commit of an audit fact other than reads of
this stream (``subscribe_audit``), never by polling the database; recent facts are kept in a
ring and each is rendered (record and JSON) once, however many reads return it; a long-poll
that finds fewer than ``limit`` records lingers ``COALESCE_SECONDS`` once to batch more, and
one that finds only reads' records waits on. A cursor names a position by its seq and the
hash chain's value there, so after ``/_kms/reset`` or a restore (where the same seq holds
another row or none) it is refused with ``ExpiredCursorException`` (410), never silently
reused. ``?account=`` keeps one recipient account's records (a cross-account call has one per
account). Every read that returns a record other than reads' is answered only once a durable
fact covers it (``ReadAudits``, below); a read never feeds a loop of reads. Open in
``--dev``; otherwise SigV4 by an ``audit_readers`` ARN."""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import json
import re
import struct
import uuid
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from kms.api.operator_auth import OperatorAuth, json_error, unauthenticated
from kms.audit.cloudtrail import fact_records, read_records
from kms.domain import events as ev
from kms.domain.errors import (
    AccessDeniedException,
    KMSError,
    KMSInternalException,
    ValidationException,
)
from kms.service.core import Caller, printable
from kms.store.log import COMMIT_FAILED, EventLog

if TYPE_CHECKING:
    from kms.api.app import Regions
    from kms.node import Node

READ_EVENT = "ReadAuditStream"  # the eventName of a read of this stream
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_WAIT_SECONDS = 20.0
COALESCE_SECONDS = 0.02  # how long a long-poll that found a few records waits for more
RING_FACTS = 4096  # recent audit facts kept rendered (between this and twice as many)
ISSUED_CURSORS = 1024  # cursors remembered, so a follower's next read skips the db check
MAX_COALESCED_READS = 256  # reads one summary fact covers at most
_CURSOR_PREFIX = "c1_"
_CURSOR = struct.Struct(">Q16s")
_ACCOUNT = re.compile(r"[0-9]{12}")
log = structlog.get_logger("kms.audit")


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


# -- waking followers, and the ring of rendered records ----------------------------------
class _Fact:
    """One audit fact of the ring, rendered on first read: (account, eventName, JSON) of
    each recipient's record."""

    __slots__ = ("seq", "envelope", "views", "read")

    def __init__(self, envelope: ev.Envelope) -> None:
        self.seq = envelope.seq
        assert isinstance(envelope.event, ev.ApiCallRecorded)
        self.read = envelope.event.operation == READ_EVENT  # a read of this stream
        self.envelope: ev.Envelope | None = envelope
        self.views: list[tuple[str, str, bytes]] | None = None

    def rendered(self, region: str, account: str) -> list[tuple[str, str, bytes]]:
        if self.views is None:
            e = self.envelope
            assert e is not None and isinstance(e.event, ev.ApiCallRecorded)
            self.views = [(r["recipientAccountId"], r["eventName"], _json(r))
                          for r in fact_records(e.event, seq=e.seq, at_ms=e.at_ms,
                                                region=region, default_account=account)]
            self.envelope = None  # the ring keeps bytes, not the fact's objects (less for GC)
        return self.views


class AuditFeed:
    """Resolves a future at each durable commit of audit facts other than reads of this
    stream (and at a wipe), and keeps the facts committed since it was made in a ring: every
    audit fact after ``ring_from``. A commit of reads' records alone wakes no one, so a
    follower is never woken by the record of its own read (no ping-pong)."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self._changed: asyncio.Future[None] | None = None
        self.wipes = 0
        self.ring: list[_Fact] = []
        self.ring_from = log.last_seq
        self.issued: dict[int, bytes] = {}  # seq -> chain prefix of the cursors it gave out
        self.closing = False  # the node is stopping: held reads answer now
        self.waiters = 0  # reads held on ``changed`` now
        log.subscribe_audit(self)

    def close(self) -> int:
        """Answer every held read at once with what it has (the node is stopping); how
        many were waiting."""
        self.closing = True
        waiting = self._changed
        self._changed = None
        if waiting is None or waiting.done():
            return 0
        waiting.set_result(None)
        return self.waiters

    def __call__(self, envelopes: Sequence[ev.Envelope] | None) -> None:
        if envelopes is None:
            self.wipes += 1
            self.ring.clear()
            self.issued.clear()
            self.ring_from = self.log.last_seq
        else:
            facts = [_Fact(e) for e in envelopes if isinstance(e.event, ev.ApiCallRecorded)]
            self.ring += facts
            if len(self.ring) > 2 * RING_FACTS:
                self.ring_from = self.ring[-RING_FACTS - 1].seq
                del self.ring[:-RING_FACTS]
            if all(f.read for f in facts):  # only reads' records: no follower wakes for them
                return
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None

    def changed(self) -> asyncio.Future[None]:
        """A future done at the next commit (take it before reading, so none is missed)."""
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    def issue(self, seq: int, chain: bytes) -> None:
        self.issued[seq] = chain[:16]
        if len(self.issued) > ISSUED_CURSORS:
            del self.issued[next(iter(self.issued))]

    def from_ring(self, after_seq: int, limit: int, account: str | None, region: str,
                  default_account: str) -> tuple[list[tuple[str, bytes]], int] | None:
        """(eventName, JSON) of the records after ``after_seq`` (whole facts, up to
        ``limit`` records) and the seq the answer is complete up to; None when the ring
        does not reach back to ``after_seq``."""
        if after_seq < self.ring_from:
            return None
        ring = self.ring
        i = bisect.bisect_right(ring, after_seq, key=lambda f: f.seq)
        out: list[tuple[str, bytes]] = []
        through = self.log.last_seq  # the ring holds every audit fact up to the last commit
        for fact in ring[i:]:
            views = [(name, body) for acct, name, body in fact.rendered(region, default_account)
                     if account is None or acct == account]
            if out and len(out) + len(views) > limit:
                through = fact.seq - 1
                break
            out += views
            if len(out) >= limit:
                through = fact.seq
                break
        return out, through


_FEEDS: weakref.WeakKeyDictionary[EventLog, AuditFeed] = weakref.WeakKeyDictionary()


def feed_for(log: EventLog) -> AuditFeed:
    feed = _FEEDS.get(log)
    if feed is None:
        feed = _FEEDS[log] = AuditFeed(log)
    return feed


def held_reads(log: EventLog) -> int:
    """How many reads of this log's stream are held (long-polling) now."""
    feed = _FEEDS.get(log)
    return feed.waiters if feed is not None else 0


def _json(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


# -- auditing reads -----------------------------------------------------------------------
@dataclass(slots=True)
class _ReadBatch:
    """Reads of one consumer answered together once one fact covering them is durable."""

    params: dict[str, str]  # the first read's (its record when it stays alone)
    request_ids: list[str]
    records: int  # records the reads returned
    done: asyncio.Future[KMSError | None]  # the error to answer with, None once recorded


class ReadAudits:
    """The rule: a read that returns no record but reads' records is never audited (so reads
    never feed a loop of reads); a failed read is audited on its own, before its answer;
    every other read's answer waits until a durable ``ReadAuditStream`` fact covers it.

    The facts ride the log's group commit: a consumer (region and the whole caller: principal,
    access key, source address, user agent) has at most one fact in the writer at a time, and
    its reads that arrive meanwhile wait together for the next one, so concurrent reads cost
    one fact per commit, not one per read. A fact that covers one read is that read's record
    (its requestParameters and requestID); one that covers several is a summary
    (additionalEventData ``summarizedReads``, ``summarizedRecords``, ``summarizedRequestIDs``,
    requestID the first read's), at most ``MAX_COALESCED_READS`` reads each. If the fact
    cannot be written, every read it covers answers the error (fail closed)."""

    def __init__(self) -> None:
        self._queued: dict[tuple[str, Caller], list[_ReadBatch]] = {}  # not yet written
        self._writers: dict[tuple[str, Caller], asyncio.Task[None]] = {}

    async def audited(self, node: Node, caller: Caller, params: dict[str, str],
                      request_id: str, records: int) -> KMSError | None:
        """Wait until this read is covered by a durable fact; the error to answer with."""
        key = (node.config.region, caller)
        queue = self._queued.setdefault(key, [])
        if not queue or len(queue[-1].request_ids) >= MAX_COALESCED_READS:
            loop = asyncio.get_running_loop()
            queue.append(_ReadBatch(params, [], 0, loop.create_future()))
        batch = queue[-1]
        batch.request_ids.append(request_id)
        batch.records += records
        if key not in self._writers:
            self._writers[key] = asyncio.create_task(self._write(node, key),
                                                     name="audit-read-facts")
        # shielded: a read that goes away leaves the fact (and the reads beside it) be
        return await asyncio.shield(batch.done)

    async def _write(self, node: Node, key: tuple[str, Caller]) -> None:
        """Write the consumer's queued facts one after another, until none is left."""
        batch: _ReadBatch | None = None
        try:
            while queue := self._queued.get(key):
                batch = queue.pop(0)
                if not queue:
                    del self._queued[key]
                err = await self._record(node, key[1], batch)
                batch.done.set_result(err)
                batch = None
        finally:
            del self._writers[key]
            stranded = [*([batch] if batch is not None else []), *self._queued.pop(key, [])]
            for b in stranded:  # only if this task was cancelled (the node stopping)
                if not b.done.done():
                    b.done.set_result(KMSInternalException("The event log stopped."))

    @staticmethod
    async def _record(node: Node, caller: Caller, batch: _ReadBatch) -> KMSError | None:
        ids = batch.request_ids
        try:
            if len(ids) == 1:
                return await node.service.record_beside(READ_EVENT, batch.params, caller,
                                                        ids[0])
            return await node.service.record_beside(
                READ_EVENT, {}, caller, ids[0],
                additional={"summarizedReads": len(ids), "summarizedRecords": batch.records,
                            "summarizedRequestIDs": list(ids)})
        except Exception as exc:  # the stream outlives one failed write; its reads fail
            log.error("audit_read_fact_failed", region=node.config.region, reads=len(ids),
                      error=type(exc).__name__)
            return KMSInternalException(COMMIT_FAILED)

    async def drain(self) -> None:
        """Wait for every fact being written (the node is stopping)."""
        while self._writers:
            await asyncio.gather(*self._writers.values(), return_exceptions=True)


# -- the endpoint -------------------------------------------------------------------------
class AuditStream:
    """The ``GET /_kms/audit`` handler for the regions ``regions`` hosts; ``summaries`` is
    the app's cleanup context that lets the read facts being written finish at shutdown."""

    def __init__(self, regions: Regions) -> None:
        self.regions = regions
        self.auth = OperatorAuth()
        self.reads = ReadAudits()

    def caller_of(self, request: web.Request, node: Node) -> Caller:
        return self.auth.caller(request, node)

    def check_reader(self, node: Node, caller: Caller) -> None:
        if node.config.dev:
            return
        readers = self.regions.own.config.audit_readers
        identity = node.credentials.principal(caller.access_key_id)
        if caller.principal_arn not in readers and (
                identity is None or identity.identity_arn not in readers):
            raise ReadDenied(
                f"User: {caller.principal_arn} is not authorized to read the audit stream: it "
                "is not named in audit_readers")

    async def __call__(self, request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        q = request.query
        node = self.regions.own
        caller = unauthenticated(request)
        params = {k: printable(q[k][:128]) for k in ("after", "limit", "wait", "region",
                                                      "account") if k in q}
        try:
            node = _node_for(self.regions, q.get("region"))
            caller = self.caller_of(request, node)
            self.check_reader(node, caller)
            limit = _number(q.get("limit"), "limit", DEFAULT_LIMIT, 1, MAX_LIMIT, int)
            wait = _number(q.get("wait"), "wait", 0.0, 0.0, MAX_WAIT_SECONDS, float)
            account = q.get("account")
            if account is not None and not _ACCOUNT.fullmatch(account):
                raise ValidationException(
                    f"1 validation error detected: Value '{account[:32]}' at 'account' "
                    "failed to satisfy constraint: Member must be an account id of 12 digits")
            found, next_cursor = await _read(node, q.get("after", ""), int(limit),
                                             float(wait), account)
        except KMSError as exc:
            err = await node.service.record_beside(READ_EVENT, params, caller, request_id, exc)
            return json_error(err or exc, request_id)
        if any(name != READ_EVENT for name, _ in found):  # else: no loop of reads
            err = await self.reads.audited(node, caller, params, request_id, len(found))
            if err is not None:
                return json_error(err, request_id)
        body = b"".join((b'{"Records":[', b",".join(b for _, b in found), b'],"NextCursor":',
                         json.dumps(next_cursor).encode(), b"}"))
        return web.Response(body=body, content_type="application/json",
                            headers={"x-amzn-RequestId": request_id})

    async def wake_held_reads(self, app: web.Application) -> None:
        """``on_shutdown``: held long polls answer now (with what they have), so a stopping
        node does not wait out their ``wait`` before its final checkpoint."""
        held = 0
        for node in self.regions.nodes():
            feed = _FEEDS.get(node.log)
            if feed is not None:
                held += feed.close()
        log.info("audit_stream_closing", held_reads_woken=held)

    async def summaries(self, app: web.Application) -> AsyncIterator[None]:
        """Cleanup context: when the app stops (before its regions close), wait for the read
        facts still being written, so no answered read is left without its record."""
        yield
        await self.reads.drain()


def audit_handler(regions: Regions) -> AuditStream:
    """The ``GET /_kms/audit`` handler for the regions ``regions`` hosts."""
    return AuditStream(regions)


async def _read(node: Node, after: str, limit: int, wait: float, account: str | None,
                ) -> tuple[list[tuple[str, bytes]], str]:
    log = node.log
    feed = feed_for(log)
    wipes = feed.wipes
    seq, prefix = decode_cursor(after) if after else (0, b"")
    pruned = await log.pruned_floor()  # the last fact `kms audit prune` dropped (0: none)
    if after and seq <= pruned and pruned:
        raise ExpiredCursorException(_EXPIRED)  # records after the cursor were dropped
    seq = max(seq, pruned)  # a read from the start begins after what was dropped
    if after and feed.issued.get(seq) != prefix:
        await _check(log, seq, prefix)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    lingered = False
    region, default_account = node.config.region, node.config.account_id
    while True:
        changed = feed.changed()
        ring = feed.from_ring(seq, limit, account, region, default_account)
        if ring is not None:
            found, through = ring
        else:  # older than the ring: read from the log, rendered for this read only
            rows, through = await read_records(log, seq, limit, account=account,
                                               default_account=default_account)
            if len(rows) > limit:  # whole facts only, up to limit records (one at least)
                cut = rows[limit][0]  # the fact of the first record past the limit
                if cut > rows[0][0]:
                    rows, through = [row for row in rows if row[0] < cut], cut - 1
                else:
                    rows, through = [row for row in rows if row[0] == cut], cut
            found = [(r["eventName"], _json(r)) for _, r in rows]
        remaining = deadline - loop.time()
        if feed.wipes != wipes or remaining <= 0 or len(found) >= limit or feed.closing:
            break
        if any(name != READ_EVENT for name, _ in found):  # reads' records alone: wait on
            if lingered:
                break
            lingered = True  # found some: wait a moment for more, to answer with a batch
            await asyncio.sleep(min(COALESCE_SECONDS, remaining))
            continue
        feed.waiters += 1
        try:
            await asyncio.wait_for(asyncio.shield(changed), remaining)
        except TimeoutError:
            pass
        finally:
            feed.waiters -= 1
    if feed.wipes != wipes:  # wiped while this read was held: its cursor names nothing now
        raise ExpiredCursorException(_EXPIRED)
    chain = await log.chain_hash(through)
    if chain is None:
        raise ExpiredCursorException(_EXPIRED)
    feed.issue(through, chain)
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
