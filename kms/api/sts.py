"""STS ``GetCallerIdentity`` on the node's endpoint, in the Query protocol AWS STS speaks.

Rules: a form POST (``Action=GetCallerIdentity&Version=2011-06-15``) or a presigned GET,
signed for service ``sts``; the answer is AWS's XML (Arn, UserId, Account), errors are
AWS's ``ErrorResponse`` with STS's codes (InvalidClientTokenId, SignatureDoesNotMatch, ...).
Every call, answered or refused, leaves one read-only audit fact (operation
``sts:<Action>``, STS's error code) before the answer, or fails closed; failed
authentications go through the gateway's flood rule like KMS's. No state changes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

import structlog
from aiohttp import web

from kms.api.auth_failures import AUTH_ERRORS
from kms.domain.errors import KMSError
from kms.service.core import Caller

log = structlog.get_logger("kms.api")

VERSION = "2011-06-15"
NAMESPACE = f"https://sts.amazonaws.com/doc/{VERSION}/"
FORM_TYPE = "application/x-www-form-urlencoded"
PREFIX = "sts:"  # an STS call's operation in its audit fact (CloudTrail: sts.amazonaws.com)
OPERATION = PREFIX + "GetCallerIdentity"
# STS accepts a signature timestamp up to 15 minutes from its clock (KMS: 5); AWS's
# "Signature expired: ... (<now> - 15 min.)" answers for GetCallerIdentity say so.
MAX_SKEW_SECONDS = 900
_ACTION = re.compile(r"[A-Za-z]{1,64}", re.ASCII)
_CREDENTIAL = re.compile(r"Credential=([A-Za-z0-9]+)/")
# KMS's authentication errors as STS names them: (code, HTTP status, message or None to keep).
_STS_ERRORS: dict[str, tuple[str, int, str | None]] = {
    "UnrecognizedClientException": ("InvalidClientTokenId", 403, None),
    "InvalidSignatureException": ("SignatureDoesNotMatch", 403, None),
    "IncompleteSignatureException": ("IncompleteSignature", 400, None),
    "MissingAuthenticationTokenException": ("MissingAuthenticationToken", 403,
                                            "Request is missing Authentication Token"),
    "KMSInternalException": ("InternalFailure", 500, None),  # e.g. the fact not written
}
# (operation, caller, request id, error or None) -> the error to answer with (None: the
# success was recorded); a node's ``service.record_beside``.
Record = Callable[[str, Caller, str, KMSError | None], Awaitable[KMSError | None]]
# (source address, operation, error) -> whether a failed authentication is audited one by
# one (else it is counted into its window's summary fact): the gateway's flood rule.
Admit = Callable[[str, str, KMSError], Awaitable[bool]]


class StsError(KMSError):
    """An STS error: its code and status are STS's, not a KMS class's."""

    def __init__(self, code: str, status: int, message: str) -> None:
        super().__init__(message)
        self.code, self.status = code, status


def is_sts_request(request: web.Request) -> bool:
    """A Query-protocol call: no X-Amz-Target, and a form body or an ``Action`` query."""
    if "X-Amz-Target" in request.headers:
        return False
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    return ctype == FORM_TYPE or "Action" in request.query


def parameters(request: web.Request, body: bytes) -> dict[str, str]:
    """The call's parameters: the query string's, then the form body's."""
    params = dict(request.query)
    if body:
        try:
            params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError):
            raise StsError("MalformedInput", 400, "The request body is not a valid form.") from None
    return params


def identity_xml(caller: Caller, request_id: str) -> str:
    result = (f"<Arn>{escape(caller.principal_arn)}</Arn>"
              f"<UserId>{escape(caller.user_id or caller.account)}</UserId>"
              f"<Account>{escape(caller.account)}</Account>")
    return (f'<GetCallerIdentityResponse xmlns="{NAMESPACE}">'
            f"<GetCallerIdentityResult>{result}</GetCallerIdentityResult>"
            f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
            "</GetCallerIdentityResponse>\n")


def error_xml(err: StsError, request_id: str) -> str:
    kind = "Sender" if err.status < 500 else "Receiver"
    return (f'<ErrorResponse xmlns="{NAMESPACE}"><Error><Type>{kind}</Type>'
            f"<Code>{escape(err.code)}</Code><Message>{escape(err.message)}</Message>"
            f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>\n")


def as_sts_error(err: KMSError) -> StsError:
    code, status, message = _STS_ERRORS.get(err.code, (err.code, err.status, None))
    return StsError(code, status, message if message is not None else err.message)


def operation_of(params: dict[str, str]) -> str:
    """The audit fact's operation: ``sts:`` and the Action named, if it is a plain name."""
    action = params.get("Action", "")
    return PREFIX + action if _ACTION.fullmatch(action) else OPERATION


def anonymous(request: web.Request) -> Caller:
    """Who a request is before (or without) authentication: for the audit record, the
    access key id it claims (header or presigned) and where it came from."""
    m = _CREDENTIAL.search(request.headers.get("Authorization", ""))
    key = m.group(1) if m else request.query.get("X-Amz-Credential", "").partition("/")[0]
    return Caller("anonymous", "", key[:128], request.remote or "",
                  request.headers.get("User-Agent", ""))


class StsEndpoint:
    """Answers one STS call; ``authenticate`` is the gateway's (request, body) -> Caller
    for service ``sts``, raising KMS's authentication errors; ``admit`` its flood rule."""

    def __init__(self, authenticate: Callable[[web.Request, bytes], Caller],
                 request_ids: Callable[[], str], admit: Admit) -> None:
        self._authenticate, self._ids, self._admit = authenticate, request_ids, admit

    async def handle(self, request: web.Request, record: Record) -> web.Response:
        """The answer, once ``record`` (the serving region's audit) has the call's fact."""
        request_id, started = self._ids(), time.perf_counter()
        caller, operation = anonymous(request), OPERATION
        audit = True  # whether the refusal below still needs its fact
        try:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise StsError("RequestEntityTooLarge", 413,
                               "The request body is too large.") from None
            params = parameters(request, body)
            operation = operation_of(params)
            try:
                caller = self._authenticate(request, body)
            except KMSError as exc:
                err = as_sts_error(exc)
                if isinstance(exc, AUTH_ERRORS):
                    audit = await self._admit(caller.source_ip, operation, err)
                raise err from None
            action, version = params.get("Action", ""), params.get("Version", "")
            if action != "GetCallerIdentity" or version != VERSION:
                raise StsError("InvalidAction", 400,
                               f"Could not find operation {action[:64]} for version "
                               f"{version[:16]}")
            failed = await record(operation, caller, request_id, None)
            if failed is not None:  # fail closed: no audit, no answer
                audit = False  # the service tried already, and logged why it could not
                raise as_sts_error(failed)
            response = web.Response(body=identity_xml(caller, request_id).encode(),
                                    content_type="text/xml")
            code = ""
        except StsError as err:
            answered = err
            if audit:  # else counted into its window's summary fact, or not writable
                answered = as_sts_error(await record(operation, caller, request_id, err)
                                        or err)
            code = answered.code
            response = web.Response(body=error_xml(answered, request_id).encode(),
                                    status=answered.status, content_type="text/xml")
        response.headers["x-amzn-RequestId"] = request_id
        fields = {"error": code} if code else {}
        log.info("request", request_id=request_id, op=operation,
                 status=response.status, ms=round((time.perf_counter() - started) * 1000, 2),
                 principal=caller.principal_arn, **fields)
        return response
