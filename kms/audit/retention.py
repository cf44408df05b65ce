"""``POST /_kms/audit/prune``: drop old, exported audit facts from a running node's log.

Rules: the node's own event-log writer does it, in the transaction of the prune's own audit
fact (``EventLog.append(..., pruned=)``), so it is ordered with every append and group
commit and is durable, with the record of who pruned what, before the answer. The rules are
the offline prune's (kms.audit.prune): only audit facts that ``audit-exported.json`` says
are exported, older than the age by the node's clock, before the cut (the last signed
checkpoint the export covers; its row stays); state events never. Open in ``--dev``;
otherwise SigV4 by a principal named in the config's ``admins`` (as ``kms region promote``).
A refusal changes nothing and leaves only its audit fact. One prune at a time per log.
"""

from __future__ import annotations

import asyncio
import json
import uuid
import weakref
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from kms.api.operator_auth import OperatorAuth, json_error, unauthenticated
from kms.audit.cloudtrail import loggable_params, loggable_response
from kms.audit.export import EXPORTED_FILE
from kms.audit.prune import PRUNE_PATH as PRUNE_PATH  # the route, for kms.api.app
from kms.domain import events as ev
from kms.domain.errors import (
    AccessDeniedException,
    KMSError,
    KMSInvalidStateException,
    ValidationException,
)
from kms.service.core import Caller, printable
from kms.store.log import AUDIT_STREAM, Append, EventLog
from kms.store.pruning import AuditPruned

if TYPE_CHECKING:
    from kms.api.app import Regions
    from kms.node import Node

PRUNE_EVENT = "PruneAuditStream"  # the eventName of a prune's record
MAX_AGE_SECONDS = 100 * 365 * 86400
_LOCKS: weakref.WeakKeyDictionary[EventLog, asyncio.Lock] = weakref.WeakKeyDictionary()


def exported_through(data_dir: Path) -> int:
    """The last seq ``kms audit export`` wrote out of this data dir's log; a refusal when
    nothing is exported yet or the mark cannot be read."""
    path = data_dir / EXPORTED_FILE
    try:
        return int(json.loads(path.read_text())["last_seq"])
    except FileNotFoundError:
        raise KMSInvalidStateException(
            f"Nothing is exported yet ({path} is absent): run `kms audit export` first; only "
            "exported audit records are pruned.") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KMSInvalidStateException(f"Cannot read {path}: {exc}") from None


async def prune(node: Node, caller: Caller, request_id: str, older_than_s: int,
                params: dict[str, Any]) -> dict[str, Any]:
    """Prune ``node``'s log and record it; the answer (what was dropped)."""
    log = node.log
    lock = _LOCKS.setdefault(log, asyncio.Lock())
    async with lock:  # the plan holds until its commit: no other prune moves the rows
        exported = exported_through(Path(node.config.data_dir))
        cut = max((c.seq for c in await log._checkpoints() if c.seq <= exported), default=0)
        at_ms = node.clock.now_ms()
        before_ms = at_ms - older_than_s * 1000
        dropped, last = await log.prune_plan(cut, before_ms) if cut else (0, 0)
        result = {"Region": node.config.region, "PrunedFacts": dropped, "CheckpointSeq": cut,
                  "LastPrunedSeq": last, "PrunedBefore": _iso(before_ms),
                  "ExportedThroughSeq": exported}
        # Built here rather than by Service._record: the fact goes in with the deletion.
        fact = ev.ApiCallRecorded(
            request_id=request_id, operation=PRUNE_EVENT, principal_arn=caller.principal_arn,
            account=caller.account, access_key_id=printable(caller.access_key_id),
            source_ip=caller.source_ip, user_agent=printable(caller.user_agent[:512]),
            read_only=False, params=loggable_params(PRUNE_EVENT, params),
            principal_type=caller.principal_type if caller.account else "",
            user_id=caller.user_id, response=loggable_response(PRUNE_EVENT, result))
        change = AuditPruned(cut, before_ms, last) if dropped else None
        await log.append([Append(AUDIT_STREAM, (fact,))], at_ms, pruned=change)
    return result


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(max(ms, 0) / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PruneEndpoint:
    """The ``POST /_kms/audit/prune`` handler for the regions ``regions`` hosts."""

    def __init__(self, regions: Regions) -> None:
        self.regions = regions
        self.auth = OperatorAuth()

    async def __call__(self, request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        body = await request.read()
        node = self.regions.own
        caller = unauthenticated(request)
        params: dict[str, Any] = {}
        try:
            caller = self.auth.caller(request, node, body)
            self._check_admin(node, caller)
            doc = _document(body)
            params = {k: doc[k] for k in ("OlderThanSeconds", "Region") if k in doc}
            node = self._node(doc.get("Region"))
            age = _age(doc.get("OlderThanSeconds"))
            if not node.serving:
                raise KMSInvalidStateException("The node is starting; try again.")
            result = await prune(node, caller, request_id, age, params)
        except KMSError as exc:
            err = await node.service.record_beside(PRUNE_EVENT, params, caller, request_id, exc)
            return json_error(err or exc, request_id)
        return web.json_response(result, headers={"x-amzn-RequestId": request_id})

    def _check_admin(self, node: Node, caller: Caller) -> None:
        if node.config.dev:
            return
        admins = self.regions.own.config.admins
        if caller.principal_arn not in admins and caller.identity_arn not in admins:
            raise AccessDeniedException(
                f"User: {caller.principal_arn} is not authorized to prune the audit stream: "
                "it is not named in admins")

    def _node(self, region: Any) -> Node:
        from kms.node import Node

        own = self.regions.own
        if region is None or region == own.config.region:
            return own
        found = self.regions.routes.get(region) if isinstance(region, str) else None
        if not isinstance(found, Node):
            raise ValidationException(
                f"Region {str(region)[:40]!r} is not hosted by this node; ask that region's "
                "endpoint.")
        return found


def prune_handler(regions: Regions) -> PruneEndpoint:
    return PruneEndpoint(regions)


def _document(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise ValidationException('Send {"OlderThanSeconds": N} (and optionally "Region").')
    return doc


def _age(raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_AGE_SECONDS:
        raise ValidationException(
            f"1 validation error detected: Value '{str(raw)[:32]}' at 'OlderThanSeconds' "
            f"failed to satisfy constraint: Member must be a whole number of seconds from 0 "
            f"to {MAX_AGE_SECONDS}")
    return raw
