"""Operator endpoints of a region node: promote a replica, list fenced conflicts.

Rules: ``POST /_kms/region/promote {"KeyId": ..., "Region"?: ...}`` and ``GET
/_kms/region/conflicts[?region=R]`` act on this node's own region (or, in ``--dev``, a
region it hosts). With ``--dev`` they are open; otherwise the request must be SigV4-signed
(service ``kms``, this node's region) by a principal whose ARN is in the config's
``admins``. Every refusal is a JSON ``{"__type", "message"}`` with an HTTP status.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from kms.api.sigv4 import SigV4Verifier
from kms.domain.errors import KMSError
from kms.node import Node
from kms.service import region_ops

if TYPE_CHECKING:
    from regions.host import RegionHost

log = structlog.get_logger("regions.admin")

PROMOTE_PATH = "/_kms/region/promote"
CONFLICTS_PATH = "/_kms/region/conflicts"


def _bad(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"__type": code, "message": message}, status=status)


class Admin:
    def __init__(self, host: RegionHost) -> None:
        self.host = host
        self.node: Node = host.own
        config = self.node.config
        self.dev = config.dev
        self.admins = frozenset(config.admins)
        self.verifier = SigV4Verifier(self.node.credentials.secret, config.region,
                                      now=self.node.clock.now)

    def install(self, app: web.Application) -> None:
        app.add_routes([web.post(PROMOTE_PATH, self.promote),
                        web.get(CONFLICTS_PATH, self.conflicts)])

    def _who(self, request: web.Request, body: bytes) -> str | web.Response:
        """The admin's ARN, or the refusal."""
        if self.dev:
            return "dev"
        try:
            access_key = self.verifier.verify(request.method,
                                              request.raw_path.split("?", 1)[0],
                                              request.query_string, request.headers, body)
        except KMSError as exc:
            return _bad(exc.status, exc.code, exc.message)
        principal = self.node.credentials.principal(access_key)
        arn = principal.arn if principal else ""
        identity = getattr(principal, "identity_arn", "") or arn
        if arn not in self.admins and identity not in self.admins:
            log.warning("region_admin_refused", principal=arn, path=request.path)
            return _bad(403, "AccessDeniedException",
                        f"{arn} is not authorized to perform region administration on this "
                        "node: its ARN is not in the config's admins.")
        return arn

    async def _node(self, region: str | None) -> Node | web.Response:
        own = self.node.config.region
        if not region or region == own:
            node = self.node
        else:
            found = self.host.routes.get(region) if self.dev else None
            if not isinstance(found, Node):
                return _bad(400, "ValidationException",
                            f"This node serves region {own}"
                            + (" and the regions it hosts" if self.dev else "")
                            + f", not {region[:40]!r}.")
            node = found
        if not node.serving:
            return _bad(503, "KMSInternalException", "The node is starting.")
        return node

    async def promote(self, request: web.Request) -> web.Response:
        body = await request.read()
        who = self._who(request, body)
        if isinstance(who, web.Response):
            return who
        try:
            doc = json.loads(body or b"{}")
            key_ref = doc["KeyId"]
            region = doc.get("Region")
            if not isinstance(key_ref, str) or not key_ref or not (
                    region is None or isinstance(region, str)):
                raise ValueError
        except (ValueError, KeyError, TypeError, AttributeError):
            return _bad(400, "ValidationException",
                        'Send {"KeyId": "<key id or ARN>"} (and optionally "Region").')
        node = await self._node(region)
        if isinstance(node, web.Response):
            return node
        try:
            out = await region_ops.promote_replica(node.service, key_ref, who)
        except KMSError as exc:
            return _bad(exc.status, exc.code, exc.message)
        log.warning("replica_promoted", key_id=out["KeyId"], region=out["PrimaryRegion"],
                    epoch=out["Epoch"], previous=out["PreviousPrimaryRegion"], by=who)
        return web.json_response(out)

    async def conflicts(self, request: web.Request) -> web.Response:
        who = self._who(request, b"")
        if isinstance(who, web.Response):
            return who
        node = await self._node(request.query.get("region"))
        if isinstance(node, web.Response):
            return node
        return web.json_response({"Region": node.config.region,
                                  "Conflicts": region_ops.conflicts(node.service)})
