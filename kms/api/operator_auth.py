"""Who is calling an operator endpoint (``/_kms/audit``, ``/_kms/audit/prune``,
``/_kms/region/promote|conflicts``): the same SigV4 check the gateway makes, per region.

Rules: with ``--dev`` every caller acts as the account root (the claimed access key kept for
the record); otherwise the request must be signed by a known principal (a KMSError says why
not), and the caller carries its identity's ARN (a role's, for an assumed-role session), so
``admins`` and ``audit_readers`` can name a role. A refusal is answered as AWS JSON errors are.
"""

from __future__ import annotations

import re

from aiohttp import web

from kms.api.sigv4 import SigV4Verifier
from kms.domain.errors import KMSError
from kms.node import Node
from kms.service.core import Caller

_CREDENTIAL = re.compile(r"Credential=([A-Za-z0-9]+)/")


def claimed_key(request: web.Request) -> str:
    """The access key an Authorization header claims ("" when none)."""
    m = _CREDENTIAL.search(request.headers.get("Authorization", ""))
    return m.group(1) if m else ""


def unauthenticated(request: web.Request) -> Caller:
    """The caller of a request not (yet) authenticated: anonymous, with its claimed key."""
    return Caller("anonymous", "", claimed_key(request), request.remote or "",
                  request.headers.get("User-Agent", ""))


class OperatorAuth:
    """Verifies operator requests for each region a process hosts (one verifier each)."""

    def __init__(self) -> None:
        self.verifiers: dict[str, SigV4Verifier] = {}

    def caller(self, request: web.Request, node: Node, body: bytes = b"") -> Caller:
        """The signed caller (root in ``--dev``); a KMSError when the signature fails."""
        ip, agent = request.remote or "", request.headers.get("User-Agent", "")
        account = node.config.account_id
        if node.config.dev:
            return Caller(f"arn:aws:iam::{account}:root", account, claimed_key(request),
                          ip, agent, principal_type="Root", user_id=account)
        region = node.config.region
        verifier = self.verifiers.get(region)
        if verifier is None:
            verifier = self.verifiers[region] = SigV4Verifier(node.credentials.secret, region,
                                                              now=node.clock.now)
        access_key = verifier.verify(request.method, request.raw_path.split("?", 1)[0],
                                     request.query_string, request.headers, body)
        principal = node.credentials.principal(access_key)
        assert principal is not None  # the verifier knew its secret
        return Caller(principal.arn, principal.account, access_key, ip, agent,
                      principal_type=principal.principal_type, user_id=principal.user_id,
                      identity_arn=principal.identity_arn or principal.arn)


def json_error(err: KMSError, request_id: str | None) -> web.Response:
    """An AWS JSON error body with the request id."""
    return web.json_response({"__type": err.code, "message": err.message}, status=err.status,
                             headers={"x-amzn-RequestId": request_id} if request_id else None)
