"""Operator endpoints of a region node: promote a replica, list fenced conflicts.

Rules: ``POST /_kms/region/promote {"KeyId": ..., "Region"?: ...}`` and ``GET
/_kms/region/conflicts[?region=R]`` act on this node's own region (or, in ``--dev``, a
region it hosts). With ``--dev`` they are open; otherwise the request must be SigV4-signed
(service ``kms``, this node's region) by a principal named in the config's ``admins``,
matched as ``audit_readers`` is (kms.audit.stream): the caller's ARN or its identity's, so
a role listed there covers its assumed-role sessions (a role with a path too). Every
refusal is a JSON ``{"__type", "message"}`` with an HTTP status. An unsigned or badly
signed request, or a caller not named in ``admins``, leaves one audit fact
(``PromoteReplicaKey`` or ``ListMultiRegionConflicts``; AccessDenied for a non-admin) and
changes nothing else, as does a refused promotion (its fact in the region asked); a
promotion done is its ``PromoteReplicaKey`` AwsServiceEvent. Every
conflicts read leaves one ``ListMultiRegionConflicts`` fact (readOnly), refused or served,
durable before the answer (in the region it read; a refusal in the own region). The
conflicts answer also names this region's orphaned keys (``Orphans``: a replica whose
``ReplicaAdded`` was fenced) with what to do about each.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from kms.api.operator_auth import OperatorAuth, json_error, unauthenticated
from kms.domain.errors import (
    AccessDeniedException,
    KMSError,
    KMSInternalException,
    ValidationException,
)
from kms.identity import Principal
from kms.node import Node
from kms.service import region_ops
from kms.service.core import Caller, printable
from regions.replication import is_orphan

if TYPE_CHECKING:
    from regions.host import RegionHost

log = structlog.get_logger("regions.admin")

PROMOTE_PATH = "/_kms/region/promote"
CONFLICTS_PATH = "/_kms/region/conflicts"
PROMOTE_EVENT = "PromoteReplicaKey"  # the eventName of a refused promotion (and a done one)
CONFLICTS_EVENT = "ListMultiRegionConflicts"


class NodeStarting(KMSInternalException):
    """The region's node is not serving yet (HTTP 503)."""

    code = "KMSInternalException"
    status = 503


class AdminDenied(AccessDeniedException):
    """A signed caller not named in ``admins`` (HTTP 403, like a refused audit reader)."""

    code = "AccessDeniedException"
    status = 403


def named_in(principal: Principal, arns: frozenset[str]) -> bool:
    """Whether ``arns`` names the principal: its ARN, or its identity's (a role's own ARN,
    path included, for an assumed-role session), as ``audit_readers`` is matched."""
    return principal.arn in arns or bool(principal.identity_arn
                                         and principal.identity_arn in arns)


def denial(principal: Principal) -> str:
    identity = principal.identity_arn
    whom = (f"neither it nor {identity} is" if identity and identity != principal.arn
            else "it is not")
    return (f"User: {principal.arn} is not authorized to perform region administration on "
            f"this node: {whom} named in admins")


class Admin:
    def __init__(self, host: RegionHost) -> None:
        self.host = host
        self.node: Node = host.own
        config = self.node.config
        self.dev = config.dev
        self.admins = frozenset(config.admins)
        self.auth = OperatorAuth()

    def install(self, app: web.Application) -> None:
        app.add_routes([web.post(PROMOTE_PATH, self.promote),
                        web.get(CONFLICTS_PATH, self.conflicts)])

    async def _who(self, request: web.Request, body: bytes, event: str,
                   params: dict[str, Any]) -> Caller | web.Response:
        """The admin, or the refusal, audited (one fact, as a refused audit read)."""
        additional: dict[str, Any] = {}
        try:
            caller = self.auth.caller(request, self.node, body)
        except KMSError as exc:
            caller, refusal = unauthenticated(request), exc
        else:
            if self.dev:  # open: whoever calls acts as the account root, as the gateway's --dev
                return caller
            principal = self.node.credentials.principal(caller.access_key_id)
            assert principal is not None  # the verifier knew its secret
            if named_in(principal, self.admins):
                return caller
            log.warning("region_admin_refused", principal=principal.arn, path=request.path)
            refusal = AdminDenied(denial(principal))
            additional["authorizationDenied"] = {"action": "kms region administration",
                                                 "reason": "not named in admins"}
        return await self._refused(self.node, event, params, caller, refusal, additional)

    async def _refused(self, node: Node, event: str, params: dict[str, Any], caller: Caller,
                       refusal: KMSError, additional: dict[str, Any] | None = None,
                       ) -> web.Response:
        request_id = str(uuid.uuid4())
        err = await node.service.record_beside(
            event, params, caller, request_id, refusal, additional,
            read_only=event != PROMOTE_EVENT) or refusal
        return json_error(err, request_id)

    def _node(self, region: str | None) -> Node:
        """The node of ``region`` (the own one by default); ValidationException for one
        not served here, NodeStarting while it starts."""
        own = self.node.config.region
        if not region or region == own:
            node = self.node
        else:
            found = self.host.routes.get(region) if self.dev else None
            if not isinstance(found, Node):
                raise ValidationException(
                    f"This node serves region {own}"
                    + (" and the regions it hosts" if self.dev else "")
                    + f", not {region[:40]!r}.")
            node = found
        if not node.serving:
            raise NodeStarting("The node is starting.")
        return node

    async def promote(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            doc = None
        asked = ({k: printable(str(doc[k])[:256]) for k in ("KeyId", "Region") if k in doc}
                 if isinstance(doc, dict) else {})
        caller = await self._who(request, body, PROMOTE_EVENT, asked)
        if isinstance(caller, web.Response):
            return caller
        who = "dev" if self.dev else caller.principal_arn
        try:
            if doc is None:
                raise ValueError
            key_ref = doc["KeyId"]
            region = doc.get("Region")
            if not isinstance(key_ref, str) or not key_ref or not (
                    region is None or isinstance(region, str)):
                raise ValueError
        except (ValueError, KeyError, TypeError, AttributeError):
            return await self._refused(self.node, PROMOTE_EVENT, asked, caller, ValidationException(
                'Send {"KeyId": "<key id or ARN>"} (and optionally "Region").'))
        node = self.node
        try:
            node = self._node(region)
            out = await region_ops.promote_replica(node.service, key_ref, who)
        except KMSError as exc:  # a refused promotion: its one fact, in the region asked
            return await self._refused(node, PROMOTE_EVENT, asked, caller, exc)
        log.warning("replica_promoted", key_id=out["KeyId"], region=out["PrimaryRegion"],
                    epoch=out["Epoch"], previous=out["PreviousPrimaryRegion"], by=who)
        return web.json_response(out)

    async def conflicts(self, request: web.Request) -> web.Response:
        region = request.query.get("region")
        params = {"Region": printable(region[:64])} if region is not None else {}
        caller = await self._who(request, b"", CONFLICTS_EVENT, params)
        if isinstance(caller, web.Response):
            return caller
        try:
            node = self._node(region)
        except KMSError as exc:  # refused: audited in the own region
            return await self._refused(self.node, CONFLICTS_EVENT, params, caller, exc)
        answer = {"Region": node.config.region,
                  "Conflicts": region_ops.conflicts(node.service), "Orphans": orphans(node)}
        request_id = str(uuid.uuid4())
        err = await node.service.record_beside(  # durable before the answer (fail closed)
            CONFLICTS_EVENT, params, caller, request_id,
            additional={"conflicts": len(answer["Conflicts"]),
                        "orphans": len(answer["Orphans"])})
        if err is not None:
            return json_error(err, request_id)
        return web.json_response(answer, headers={"x-amzn-RequestId": request_id})


def orphans(node: Node) -> list[dict[str, Any]]:
    """This region's keys that their multi-region key's set no longer lists (regions.
    replication.is_orphan), with what an operator can do about each."""
    out: list[dict[str, Any]] = []
    state = node.service.state
    for key_id, mrk in sorted(state.mrks.items()):
        key = state.keys.get(key_id)
        if key is None or not is_orphan(key, mrk):
            continue
        here, primary = key.region, mrk.primary_region
        out.append({"KeyId": key_id, "KeyArn": key.arn, "Region": here,
                    "KeyState": key.state.value, "PrimaryRegion": primary,
                    "Epoch": mrk.epoch,
                    "Hint": f"The key in {here} is not a member of its multi-Region key: the "
                            "primary that replicated it here lost its epoch. It keeps its "
                            "material and still decrypts what it encrypted, but no longer "
                            f"follows the primary. ReplicateKey from {primary} to {here} "
                            f"makes it a member again; ScheduleKeyDeletion in {here} "
                            "removes it."})
    return out
