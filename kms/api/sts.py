"""STS ``GetCallerIdentity`` on the node's endpoint, in the Query protocol AWS STS speaks.

Rules: a form POST (``Action=GetCallerIdentity&Version=2011-06-15``) or a presigned GET,
signed for service ``sts``; the answer is AWS's XML (Arn, UserId, Account), errors are
AWS's ``ErrorResponse`` with STS's codes (InvalidClientTokenId, SignatureDoesNotMatch, ...).
Nothing is written to the event log: the call only reads who signed it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

import structlog
from aiohttp import web

from kms.domain.errors import KMSError
from kms.service.core import Caller

log = structlog.get_logger("kms.api")

VERSION = "2011-06-15"
NAMESPACE = f"https://sts.amazonaws.com/doc/{VERSION}/"
FORM_TYPE = "application/x-www-form-urlencoded"
# KMS's authentication errors as STS names them: (code, HTTP status, message or None to keep).
_STS_ERRORS: dict[str, tuple[str, int, str | None]] = {
    "UnrecognizedClientException": ("InvalidClientTokenId", 403, None),
    "InvalidSignatureException": ("SignatureDoesNotMatch", 403, None),
    "IncompleteSignatureException": ("IncompleteSignature", 400, None),
    "MissingAuthenticationTokenException": ("MissingAuthenticationToken", 403,
                                            "Request is missing Authentication Token"),
}


class StsError(Exception):
    def __init__(self, code: str, status: int, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


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


class StsEndpoint:
    """Answers one STS call; ``authenticate`` is the gateway's (request, body) -> Caller
    for service ``sts``, raising KMS's authentication errors."""

    def __init__(self, authenticate: Callable[[web.Request, bytes], Caller],
                 request_ids: Callable[[], str],
                 refused: Callable[[web.Request, KMSError], None] | None = None) -> None:
        self._authenticate, self._ids, self._refused = authenticate, request_ids, refused

    async def handle(self, request: web.Request) -> web.Response:
        request_id, started = self._ids(), time.perf_counter()
        principal, code = "anonymous", ""
        try:
            body = await request.read()
            params = parameters(request, body)
            try:
                caller = self._authenticate(request, body)
            except KMSError as exc:
                if self._refused is not None:
                    self._refused(request, exc)
                raise as_sts_error(exc) from None
            principal = caller.principal_arn
            action, version = params.get("Action", ""), params.get("Version", "")
            if action != "GetCallerIdentity" or version != VERSION:
                raise StsError("InvalidAction", 400,
                               f"Could not find operation {action[:64]} for version "
                               f"{version[:16]}")
            response = web.Response(body=identity_xml(caller, request_id).encode(),
                                    content_type="text/xml")
        except StsError as err:
            code = err.code
            response = web.Response(body=error_xml(err, request_id).encode(),
                                    status=err.status, content_type="text/xml")
        response.headers["x-amzn-RequestId"] = request_id
        fields = {"error": code} if code else {}
        log.info("request", request_id=request_id, op="sts:GetCallerIdentity",
                 status=response.status, ms=round((time.perf_counter() - started) * 1000, 2),
                 principal=principal, **fields)
        return response
