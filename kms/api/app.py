"""The HTTP face of a node: AWS JSON 1.1 on ``POST /``, plus ``/_kms/*`` endpoints.

Rules: every answer is JSON (errors as ``{"__type", "message"}``, never an HTML
page or a traceback); a body is strict UTF-8 before it is JSON; every call that names
an operation, refused or not, even a 500, leaves an audit fact before the answer, or
fails closed; one log line per request: request id, principal, keys, error.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import time
import uuid
from typing import Any

import structlog
from aiohttp import web

from kms.api.auth_failures import AUTH_ERRORS, OVERFLOW, AuthFailureLimiter, Summary
from kms.api.dev_service import as_service
from kms.api.routing import Forward as Forward  # the routing seam, named here too
from kms.api.routing import Regions as Regions
from kms.api.routing import Route as Route
from kms.api.sigv4 import SigV4Verifier
from kms.api.sts import MAX_SKEW_SECONDS as STS_MAX_SKEW
from kms.api.sts import StsEndpoint, is_sts_request
from kms.api.validation import RequestModel
from kms.audit.retention import PRUNE_PATH, prune_handler
from kms.audit.stream import audit_handler, held_reads
from kms.domain.errors import (
    InvalidSignatureException,
    KMSError,
    KMSInternalException,
    SerializationException,
    UnknownOperationException,
    UnsupportedOperationException,
)
from kms.identity import Principal, root_principal
from kms.node import Node
from kms.service.core import OPERATIONS, Caller, printable

log = structlog.get_logger("kms.api")

NODE = web.AppKey("node", Node)  # the node's own region
TARGET_PREFIX = "TrentService."
ANONYMOUS = "anonymous"  # the principal of a request before (or without) authentication
MAX_CLOCK_ADVANCE = 100 * 365 * 86400.0
JSON_TYPES = ("application/x-amz-json-1.1", "application/x-amz-json-1.0", "application/json")
REQUEST_ID = web.RequestKey("request_id", str)
SERVED_BY = web.RequestKey("served_by", Node)  # the node of the request's region
AUDITED = web.RequestKey("audited", bool)  # the request's audit fact is written (or tried)
STARTED = web.RequestKey("started", float)  # perf_counter() when the gateway took it
LOGGED_MESSAGE = 1024  # an echoed value may be up to the body size; a log line is not
_CREDENTIAL = re.compile(r"Credential=([A-Za-z0-9]+)/")
_SCOPE_REGION = re.compile(r"Credential=[^/,\s]*/[^/,\s]*/([^/,\s]+)/")  # key/date/REGION/
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # JSON's \ud800-\udfff escapes
_MODEL = RequestModel()


class RequestIds:
    """UUID-shaped request ids: a random per-process prefix and a counter (no syscall
    per request, unlike uuid4; unique across restarts by the prefix)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(10).hex()
        self._count = itertools.count()

    def __call__(self) -> str:
        h = f"{self._prefix}{next(self._count) & 0xFFFFFFFFFFFF:012x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _encodable(doc: Any) -> bool:
    """JSON may escape lone surrogates (\\ud800) that no UTF-8 log or audit can hold."""
    if isinstance(doc, str):
        try:
            doc.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(doc, dict):
        return all(_encodable(k) and _encodable(v) for k, v in doc.items())
    if isinstance(doc, list):
        return all(_encodable(v) for v in doc)
    return True


def _blob(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot serialise {type(value).__name__}")


def json_response(body: dict[str, Any] | None, request_id: str, status: int = 200) -> web.Response:
    text = "" if body is None else json.dumps(body, default=_blob, separators=(",", ":"))
    return web.Response(
        text=text,
        status=status,
        content_type="application/x-amz-json-1.1",
        headers={"x-amzn-RequestId": request_id},
    )


def error_response(err: KMSError, request_id: str) -> web.Response:
    body: dict[str, Any] = {"__type": err.code}
    if err.message:
        body["message"] = err.message
    return json_response(body, request_id, err.status)


class PayloadTooLarge(SerializationException):
    """A body over ``client_max_size``: still JSON, HTTP 413, and audited like any refusal."""

    code = "SerializationException"
    status = 413


class HTTPRefusal(KMSError):
    """What aiohttp refused (no route, wrong method, ...), in AWS's JSON shape."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = ("UnknownOperationException" if status in (404, 405)
                     else "SerializationException")


REGIONS = web.AppKey("regions", Regions)


class Gateway:
    """Authenticates, parses, dispatches and answers one ``POST /`` at a time, on the node of
    the region the request is signed for (``Regions``), or hands it to a peer's node."""

    def __init__(self, node: Node, regions: Regions | None = None) -> None:
        self.node = node
        self.regions = regions or Regions(node)
        self.region = node.config.region
        self.dev = node.config.dev
        self.account = node.config.account_id
        self.root = root_principal(self.account)  # --dev's caller for an unknown access key
        self.verifier = SigV4Verifier(node.credentials.secret, node.config.region,
                                      now=node.clock.now)
        self.request_id = RequestIds()
        sts_verifier = SigV4Verifier(node.credentials.secret, node.config.region,
                                     service="sts", now=node.clock.now,
                                     max_skew_seconds=STS_MAX_SKEW)
        self.sts = StsEndpoint(lambda request, body: self.caller(request, body, sts_verifier),
                               self.request_id, self.admit_auth_failure)
        self.auth_failures = AuthFailureLimiter(node.config.auth_failure_audit_limit,
                                                float(node.config.auth_failure_window_seconds))

    def caller(self, request: web.Request, body: bytes,
               verifier: SigV4Verifier | None = None) -> Caller:
        """Who signed the request (``--dev``: whoever the config names for its access key,
        else the account root, signature unchecked); ``verifier`` is KMS's by default."""
        credentials = self.node.credentials
        if self.dev:  # any credential, session token or not, is accepted
            m = _CREDENTIAL.search(request.headers.get("Authorization", ""))
            access_key = (m.group(1) if m else
                          request.query.get("X-Amz-Credential", "").partition("/")[0])
            principal = credentials.principal(access_key) if access_key else None
            via = request.headers.get("X-Kms-Via-Service", "").strip()
            return as_service(caller_of(principal or self.root, access_key, request, via),
                              request.headers)
        access_key = (verifier or self.verifier).verify(
            request.method, request.raw_path.split("?", 1)[0], request.query_string,
            request.headers, body)
        principal = credentials.principal(access_key)
        assert principal is not None  # the verifier knew its secret
        return caller_of(principal, access_key, request)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if is_sts_request(request):  # STS's Query protocol (GetCallerIdentity), any region
            return await self.handle_sts(request)
        if self.regions.routing:
            m = _SCOPE_REGION.search(request.headers.get("Authorization", "")
                                     or presigned_scope(request))
            if m is not None and m.group(1) != self.region:
                found = self.regions.routes.get(m.group(1))
                if found is None:  # opened (or refused) only once the request has parsed
                    return await self.serve(request, self.node, opening=m.group(1))
                if not isinstance(found, Node):  # a peer's region: its node audits, answers
                    return await found(request)
                return await self.serve(request, found)
        return await self.serve(request, self.node)

    async def handle_sts(self, request: web.Request) -> web.StreamResponse:
        """An STS call is routed by its signed region as a KMS call is: a peer's region is
        forwarded (its node verifies, audits, answers); a region hosted here is answered by
        its node; any other (or none) by this node, whose STS verifier refuses a region it
        does not serve (in ``--dev`` nothing is refused: STS answers the same anywhere)."""
        node = self.node
        if self.regions.routing:
            m = _SCOPE_REGION.search(request.headers.get("Authorization", "")
                                     or presigned_scope(request))
            if m is not None and m.group(1) != self.region:
                found = self.regions.routes.get(m.group(1))
                if found is not None and not isinstance(found, Node):
                    return await found(request)
                node = found or node

        async def record(operation: str, caller: Caller, request_id: str,
                         error: KMSError | None) -> KMSError | None:
            return await node.service.record_beside(operation, {}, caller, request_id, error)

        return await self.sts.handle(request, record)

    async def admit_auth_failure(self, source: str, operation: str, err: KMSError) -> bool:
        """The flood rule for a failed authentication: whether it is audited one by one
        (else only counted); writes the summary of the source's window that just ended."""
        audited, ended = self.auth_failures.admit(source, operation, err)
        if ended is not None:
            await self.summarize(ended)
        return audited

    async def summarize(self, summary: Summary) -> None:
        """One audit fact for a window's failed authentications from one source that were
        counted, not audited one by one."""
        source = "" if summary.source == OVERFLOW else summary.source
        log.warning("authentication_failures_summarized", source=summary.source or "-",
                    count=summary.count, window_seconds=summary.window_seconds)
        await self.node.service.record_rejected(
            summary.operation, {}, Caller(ANONYMOUS, "", "", source, ""), self.request_id(),
            summary.error, additional={"summarizedAuthenticationFailures": summary.count,
                                       "summaryWindowSeconds": summary.window_seconds})

    async def flush_auth_failures(self) -> None:
        """Write the summaries of ended windows, also for sources that went quiet."""
        period = min(self.auth_failures.window, 5.0)
        while True:
            await asyncio.sleep(period)
            await self.write_auth_summaries()

    async def write_auth_summaries(self, *, all_of_them: bool = False) -> None:
        """Write what the limiter only counted (ended windows; all of them at a stop)."""
        try:
            due = self.auth_failures.due(all_of_them=all_of_them)
        except Exception as exc:  # the flush loop outlives one bad pass
            log.error("authentication_summary_failed", exc_info=exc)
            return
        for summary in due:
            try:
                await self.summarize(summary)
            except Exception as exc:  # the loop outlives one failed write
                log.error("authentication_summary_failed", exc_info=exc)

    async def handle_get(self, request: web.Request) -> web.StreamResponse:
        """``GET /``: only a presigned STS call (``?Action=GetCallerIdentity&...``)."""
        if "Action" not in request.query:
            raise web.HTTPMethodNotAllowed("GET", ["POST"])
        return await self.handle_sts(request)

    async def opened(self, region: str) -> Node:
        """The node for ``region`` not hosted yet, or the wrong-region error (in --dev the
        signature is not checked, so this is where an unservable region is refused)."""
        found = await self.regions.open(region)
        if found is None:
            raise InvalidSignatureException(
                f"Credential should be scoped to a valid region. This node serves "
                f"{self.region}, not '{region[:40]}'.")
        return found

    async def serve(self, request: web.Request, node: Node,
                    opening: str | None = None) -> web.Response:
        request[SERVED_BY] = node
        request_id = self.request_id()
        request[REQUEST_ID] = request_id
        started = request[STARTED] = time.perf_counter()
        target = request.headers.get("X-Amz-Target", "")
        operation = operation_of(target)
        signed: Caller | None = None  # who signed it, once authenticated
        try:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise PayloadTooLarge("The request body is too large.") from None
            signed = self.caller(request, body)
            params = parse_request(request, operation, target, body)
            if opening is not None:  # refusals before this are the own node's to audit
                node = request[SERVED_BY] = await self.opened(opening)
        except Exception as exc:
            err = as_error(exc, request_id)
            caller = signed or anonymous(request)  # built only for a refusal
            if operation or target:
                if isinstance(err, AUTH_ERRORS) and caller.principal_arn == ANONYMOUS:
                    audited, ended = self.auth_failures.admit(caller.source_ip,
                                                              operation or target, err)
                    if ended is not None:
                        await self.summarize(ended)
                    if not audited:  # counted into its window's summary fact instead
                        request[AUDITED] = True
                        return answer(error_response(err, request_id), request_id, operation,
                                      started, caller, err)
                err = await node.service.record_rejected(operation or target, {}, caller,
                                                         request_id, err)
                request[AUDITED] = True
            return answer(error_response(err, request_id), request_id, operation, started,
                          caller, err)
        request[AUDITED] = True  # the service records every call it is handed, even a failing one
        caller = signed
        resolved: list[str] = []
        try:
            result = await node.service.call(operation, params, caller, request_id, resolved)
            response = json_response(result, request_id)
        except Exception as exc:
            err = as_error(exc, request_id)
            return answer(error_response(err, request_id), request_id, operation, started,
                          caller, err, resolved)
        return answer(response, request_id, operation, started, caller, None, resolved)


# Set by a region node on every request it forwards to a peer (regions.forward).
FORWARDED_BY = "X-Kms-Forwarded-By"


def caller_of(principal: Principal, access_key: str, request: web.Request,
              via_service: str = "") -> Caller:
    """The Caller an authenticated request acts as."""
    return Caller(principal.arn, principal.account, access_key, request.remote or "",
                  request.headers.get("User-Agent", ""), principal.principal_type,
                  principal.user_id, principal.tags, principal.policies, via_service,
                  request.secure, principal.identity_arn,
                  request.headers.get(FORWARDED_BY, "")[:64])


def presigned_scope(request: web.Request) -> str:
    """A presigned request's credential in the Authorization header's form, for routing."""
    if "X-Amz-Credential" not in request.query_string:
        return ""
    return "Credential=" + request.query.get("X-Amz-Credential", "")


def operation_of(target: str) -> str:
    """The operation an ``X-Amz-Target`` names ("" unless it is ``TrentService.<Op>``)."""
    return target[len(TARGET_PREFIX):] if target.startswith(TARGET_PREFIX) else ""


def anonymous(request: web.Request) -> Caller:
    """Who a request is before (or without) authentication."""
    m = _CREDENTIAL.search(request.headers.get("Authorization", ""))  # for the audit record
    return Caller("anonymous", "", m.group(1) if m else "", request.remote or "",
                  request.headers.get("User-Agent", ""))


def parse_request(request: web.Request, operation: str, target: str,
                  body: bytes) -> dict[str, Any]:
    """The operation's parameters, or the protocol error AWS answers with. The body is
    strict UTF-8 (no surrogates, overlong or truncated sequences) before it is JSON."""
    if operation not in _MODEL.operations:
        raise UnknownOperationException(
            f"Unknown operation {target!r}." if target else "Missing X-Amz-Target."
        )
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype not in JSON_TYPES:
        raise SerializationException("Content-Type must be application/x-amz-json-1.1.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SerializationException("The request body is not valid UTF-8.") from None
    try:
        doc = json.loads(text) if body.strip() else {}
        if _ESCAPED_SURROGATE.search(text) and not _encodable(doc):
            raise ValueError("lone surrogate")
    except (ValueError, RecursionError):  # deep nesting is malformed input, not a fault
        raise SerializationException("The request body is not valid JSON.") from None
    params = _MODEL.parse(operation, doc)
    if operation not in OPERATIONS:
        raise UnsupportedOperationException(f"{operation} is not supported by this service yet.")
    return params


def as_error(exc: Exception, request_id: str) -> KMSError:
    """The answerable error for whatever was raised; anything unexpected becomes a
    KMSInternalException with a scrubbed message and a log line with the traceback."""
    if isinstance(exc, KMSError):
        return exc
    if isinstance(exc, web.HTTPException):
        return HTTPRefusal(exc.status, exc.reason)
    log.error("unhandled", request_id=request_id, exc_info=exc)
    return KMSInternalException("An internal error occurred. Try again later.")


def answer(response: web.Response, request_id: str, operation: str, started: float,
           caller: Caller, err: KMSError | None = None,
           resolved: list[str] | None = None) -> web.Response:
    """The request's one log line (warning for a 5xx), then the response."""
    fields: dict[str, Any] = {}
    if resolved:
        fields["key_id"] = ",".join(resolved)
    if err is not None:  # the message is echoed to the client already, so safe to log
        fields["error"], fields["message"] = err.code, printable(err.message[:LOGGED_MESSAGE])
    emit = log.warning if response.status >= 500 else log.info
    emit("request", request_id=request_id, op=printable(operation) or "-",
         status=response.status, ms=round((time.perf_counter() - started) * 1000, 2),
         principal=caller.principal_arn, **fields)
    return response


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Whatever goes wrong outside an operation still answers AWS-style JSON; a call that
    names an operation still leaves its audit fact (fail closed if it cannot)."""
    try:
        return await handler(request)
    except Exception as exc:
        request_id = request.get(REQUEST_ID) or str(uuid.uuid4())
        err = as_error(exc, request_id)
    target = request.headers.get("X-Amz-Target", "")
    if (request.method == "POST" and request.path == "/" and target
            and not request.get(AUDITED)):
        operation, caller = operation_of(target) or target, anonymous(request)
        node = request.get(SERVED_BY) or request.app[NODE]
        err = await node.service.record_rejected(operation, {}, caller, request_id, err)
        return answer(error_response(err, request_id), request_id, operation,
                      request.get(STARTED, time.perf_counter()), caller, err)
    return error_response(err, request_id)


async def node_health(node: Node) -> dict[str, Any]:
    """One node's condition: ``status`` (ok, starting, degraded, failed) and its log's."""
    if not node.serving:
        return {"status": "starting", "region": node.config.region}
    log_ = node.log
    doc: dict[str, Any] = {"region": node.config.region, "log_seq": log_.last_seq,
                           "failed_commits": log_.failed_commits,
                           "audit_reads_held": held_reads(log_)}
    if log_.last_error is not None:
        doc |= {"last_error": log_.last_error, "last_error_at_ms": log_.last_error_at_ms}
    if not log_.writable:  # the writer stopped: nothing can be answered until a restart
        return {"status": "failed", **doc}
    # The last commit failed. A node taken out of rotation gets no commit to clear that,
    # so ask the store itself whether it would take one now.
    if log_.degraded and not await log_.probe():
        return {"status": "degraded", **doc}
    return {"status": "ok", **doc}


async def health(request: web.Request) -> web.Response:
    doc = await node_health(request.app[NODE])
    return web.json_response(doc, status=200 if doc["status"] == "ok" else 503)


UNHEALTHY = ("failed", "degraded")  # worst first: a hosted region in either fails health


async def with_regions(request: web.Request) -> web.Response:
    """``health``'s answer for the own node, plus each region this process hosts: its
    names in ``regions``, its status and log_seq in ``region_status``; 503 (and the worst
    status) when any hosted region's log is failed or degraded."""
    regions = request.app[REGIONS]
    nodes = regions.nodes()
    doc = await node_health(nodes[0])
    doc["regions"] = [n.config.region for n in nodes]
    status: dict[str, dict[str, Any]] = {nodes[0].config.region: _brief(doc)}
    for node in nodes[1:]:
        status[node.config.region] = _brief(await node_health(node))
    doc["region_status"] = status
    if doc["status"] not in UNHEALTHY:
        worst = next((bad for bad in UNHEALTHY
                      if any(s["status"] == bad for s in status.values())), None)
        doc["status"] = worst or doc["status"]
    peers = getattr(regions, "peer_health", None)  # regions' per-peer figures
    if peers is not None:
        doc["peers"] = peers()
    return web.json_response(doc, status=200 if doc["status"] == "ok" else 503)


def _brief(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: doc[k] for k in ("status", "log_seq", "failed_commits", "last_error")
            if k in doc}


async def dev_reset(request: web.Request) -> web.Response:
    regions = request.app[REGIONS]
    refusal = regions.reset_refusal()
    if refusal is not None:
        return web.json_response({"__type": "UnsupportedOperationException",
                                  "message": refusal}, status=409)
    for node in regions.nodes():  # what the wipe is about to drop
        log.info("dev_reset", region=node.config.region, log_seq=node.log.last_seq)
    await regions.reset()
    return web.json_response({"status": "reset"})


async def dev_clock(request: web.Request) -> web.Response:
    node = request.app[NODE]
    try:
        doc = await request.json()
        seconds = float(doc["advance_seconds"])
        if not 0 <= seconds <= MAX_CLOCK_ADVANCE - node.clock.offset_seconds:
            raise ValueError("the clock moves forward, at most 100 years in all")
    except (ValueError, KeyError, TypeError):
        return web.json_response(
            {"__type": "ValidationException",
             "message": 'Send {"advance_seconds": N}: N >= 0, at most 100 years in all.'},
            status=400)
    await request.app[REGIONS].advance_clock(seconds)
    return web.json_response({"now": node.clock.now(), "offset_seconds": node.clock.offset_seconds})


async def audit_public_key(request: web.Request) -> web.Response:
    """The audit signing key's public half (open to anyone): ``?region=`` picks a hosted
    region, else the node's own."""
    nodes = {n.config.region: n for n in request.app[REGIONS].nodes()}
    region = request.query.get("region", request.app[NODE].config.region)
    if region not in nodes:
        return web.json_response({"__type": "NotFoundException",
                                  "message": f"This node hosts no region {region!r}."},
                                 status=404)
    return web.json_response({"Region": region, **nodes[region].audit_key.document()})


def create_app(node: Node, regions: Regions | None = None) -> web.Application:
    """The app for ``node``; ``regions`` decides which node serves each signed region
    (by default only ``node``'s own)."""
    app = web.Application(middlewares=[json_errors], client_max_size=1024 * 1024)
    regions = regions or Regions(node)
    app[NODE], app[REGIONS] = node, regions
    gateway = Gateway(node, regions)

    async def lifecycle(app: web.Application) -> Any:
        await regions.start()
        yield
        await regions.stop()

    async def auth_failure_summaries(app: web.Application) -> Any:
        task = asyncio.create_task(gateway.flush_auth_failures())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await gateway.write_auth_summaries(all_of_them=True)  # before the regions stop

    stream = audit_handler(regions)
    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(auth_failure_summaries)
    app.cleanup_ctx.append(stream.summaries)  # read summaries, written before regions stop
    app.on_shutdown.append(stream.wake_held_reads)
    routes = [
        web.post("/", gateway.handle),
        web.get("/", gateway.handle_get),
        web.get("/_kms/health", with_regions),
        web.get("/_kms/audit/public-key", audit_public_key),
        web.get("/_kms/audit", stream),  # the CloudTrail stream (kms.audit)
        web.post(PRUNE_PATH, prune_handler(regions)),  # kms audit prune --endpoint
    ]
    if node.config.dev:
        routes += [web.post("/_kms/reset", dev_reset), web.post("/_kms/clock", dev_clock)]
    app.add_routes(routes)
    return app
