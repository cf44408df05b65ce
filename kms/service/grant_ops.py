"""Grant operations: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant,
RevokeGrant.

Rules: a key's grants live on ``grants/<key id>`` (kms.domain.grants); a decision pins
that stream (so two changes to one key's grants order themselves) and the key stream only
as a guard, never writing it, so in-flight cryptographic calls on the key, which pin only
the key stream, never conflict with a grant change. Lists read the projection
(``Service.grants``). CreateGrant's audit fact carries the grant id. A grant to an AWS
service principal (GranteeServicePrincipal) is indexed under that name, the one such a
caller answers to, and holds only for calls whose aws:SourceArn is its SourceArn.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from typing import Any

from kms.domain import grants as g
from kms.domain.errors import (
    AccessDeniedException,
    InvalidArnException,
    InvalidGrantIdException,
    NotFoundException,
    ValidationException,
)
from kms.domain.key import Key, check_state
from kms.service import authz
from kms.service.core import Call, Service, operation
from kms.service.crypto_ops import dry_run
from kms.service.grant_access import allowing_grants, caller_forms, new_token, parse_token
from kms.service.paging import page
from kms.service.views import seconds

_GRANT_ID = re.compile(r"[0-9a-f]{64}")
_PRINCIPAL = re.compile(
    r"\d{12}|arn:aws:iam::\d{12}:(root|user/.+|role/.+)"
    r"|arn:aws:sts::\d{12}:(assumed-role/.+/.+|federated-user/.+)"
)
_SERVICE_PRINCIPAL = re.compile(r"[a-z0-9.-]+\.amazonaws\.com")


def _check_principal(value: str, *, service_ok: bool) -> None:
    if _PRINCIPAL.fullmatch(value) or (service_ok and _SERVICE_PRINCIPAL.fullmatch(value)):
        return
    raise InvalidArnException(f"ARN does not refer to a valid principal: {value}")


def _service_filter(call: Call, member: str) -> None:
    """A *ServicePrincipal filter of ListGrants/ListRetirableGrants is only usable by
    callers in a service principal (the model's words)."""
    if call.caller.principal_type != "AWSService":
        raise ValidationException(
            f"The {member} filter is only usable by callers in a service principal."
        )


def _check_grant_id(grant_id: str) -> None:
    if not _GRANT_ID.fullmatch(grant_id):
        raise InvalidGrantIdException(f"Invalid grant ID {grant_id}")


def _pin(svc: Service, call: Call, key_id: str) -> str:
    stream = g.grants_stream(key_id)
    call.seen.setdefault(stream, svc.log.version(stream))
    return stream


def _grant_of(svc: Service, key: Key, grant_id: str) -> g.Grant:
    grant = svc.grants.get(key.key_id, grant_id)
    if grant is None:
        raise NotFoundException(f"Grant ID {grant_id} not found for key {key.arn}")
    return grant


def grant_entry(svc: Service, grant: g.Grant) -> dict[str, Any]:
    """A GrantListEntry (members that do not apply are left out, as AWS does)."""
    key = svc.state.keys.get(grant.key_id)
    entry: dict[str, Any] = {
        "KeyId": key.arn if key is not None else grant.key_id,
        "GrantId": grant.grant_id,
        "CreationDate": seconds(grant.created_ms),
        "GranteePrincipal": grant.grantee_principal,
        "IssuingAccount": f"arn:aws:iam::{grant.issuing_account}:root",
        "Operations": list(grant.operations),
    }
    if grant.name:
        entry["Name"] = grant.name
    if grant.grantee_service_principal:
        entry["GranteeServicePrincipal"] = grant.grantee_service_principal
    if grant.retiring_service_principal:
        entry["RetiringServicePrincipal"] = grant.retiring_service_principal
    elif grant.retiring_principal:
        entry["RetiringPrincipal"] = grant.retiring_principal
    constraints: dict[str, Any] = {}
    if grant.constraint_type:
        constraints[grant.constraint_type] = dict(grant.constraint)
    if grant.source_arn:
        constraints[g.SOURCE_ARN] = grant.source_arn
    if constraints:
        entry["Constraints"] = constraints
    return entry


def _grant_page(svc: Service, grants: list[g.Grant], p: dict[str, Any]) -> dict[str, Any]:
    ordered = sorted(grants, key=svc.grants.position)
    chunk, tail = page(ordered, p, lambda gr: f"{svc.grants.position(gr):016d}", default=50,
                       maximum=100, valid=lambda m: len(m) == 16 and m.isdigit())
    return {"Grants": [grant_entry(svc, gr) for gr in chunk], **tail}


@operation("CreateGrant", read_only=False)
async def create_grant(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    grantee_service = p.get("GranteeServicePrincipal", "")
    retiring_service = p.get("RetiringServicePrincipal", "")
    source_arn = g.source_arn_of(p.get("Constraints"))
    g.check_grantees(p.get("GranteePrincipal", ""), grantee_service,
                     p.get("RetiringPrincipal", ""), retiring_service, source_arn)
    key = svc.key_for(call, p["KeyId"], "CreateGrant", allow_alias=False)
    # A service principal is listed as the grantee too (GrantListEntry), and indexed as the
    # name such a caller answers to (grant_access.caller_forms: its own name).
    grantee = grantee_service or p["GranteePrincipal"]
    if not grantee_service:
        _check_principal(grantee, service_ok=False)
    retiring = retiring_service or p.get("RetiringPrincipal", "")
    if retiring and not retiring_service:
        _check_principal(retiring, service_ok=True)
    operations = tuple(dict.fromkeys(p["Operations"]))
    if not operations:
        raise ValidationException(
            "1 validation error detected: Value '[]' at 'operations' failed to satisfy "
            "constraint: Member must have length greater than or equal to 1"
        )
    constraint_type, constraint = g.constraint_of(p.get("Constraints"))
    g.check_request(key.arn, key.key_spec, key.key_usage, operations, constraint_type)
    dry_run(p)
    stream = _pin(svc, call, key.key_id)
    wanted = g.GrantCreated(
        key_id=key.key_id, grant_id="", grantee_principal=grantee,
        retiring_principal=retiring, operations=operations,
        constraint_type=constraint_type, constraint=constraint, name=p.get("Name", ""),
        issuing_account=key.account, grantee_service_principal=grantee_service,
        retiring_service_principal=retiring_service, source_arn=source_arn,
    )
    existing = next((gr for gr in svc.grants.named(key.key_id, wanted.name)
                     if gr.same_request(wanted)), None)
    if existing is not None:  # Name idempotency: the same grant, a new token
        grant_id = existing.grant_id
    else:
        g.check_quota(svc.grants.count(key.key_id))
        grant_id = secrets.token_hex(32)
        call.emit(stream, [dataclasses.replace(wanted, grant_id=grant_id)])
    call.additional["grantId"] = grant_id
    return {"GrantToken": new_token(svc.region, key.key_id, grant_id), "GrantId": grant_id}


@operation("ListGrants", read_only=True)
async def list_grants(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    if "GranteePrincipal" in p and "GranteeServicePrincipal" in p:
        raise ValidationException(
            "You can specify either GranteePrincipal or GranteeServicePrincipal, but not both."
        )
    key = svc.key_for(call, p["KeyId"], "ListGrants", allow_alias=False)
    grants = svc.grants.of_key(key.key_id)
    if "GrantId" in p:
        _check_grant_id(p["GrantId"])
        grants = [gr for gr in grants if gr.grant_id == p["GrantId"]]
    if "GranteePrincipal" in p:
        grants = [gr for gr in grants if gr.grantee_principal == p["GranteePrincipal"]]
    if "GranteeServicePrincipal" in p:
        _service_filter(call, "GranteeServicePrincipal")
        grants = [gr for gr in grants
                  if gr.grantee_service_principal == p["GranteeServicePrincipal"]]
    return _grant_page(svc, grants, p)


@operation("ListRetirableGrants", read_only=True)
async def list_retirable_grants(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    if "RetiringPrincipal" in p and "RetiringServicePrincipal" in p:
        raise ValidationException(
            "You must specify either RetiringPrincipal or RetiringServicePrincipal, but not "
            "both."
        )
    if "RetiringPrincipal" not in p and "RetiringServicePrincipal" not in p:
        raise ValidationException(
            "You must specify either RetiringPrincipal or RetiringServicePrincipal."
        )
    service = p.get("RetiringServicePrincipal")
    if service is None:
        authz.authorize(call, "ListRetirableGrants", None, account=svc.account)
        grants = [gr for gr in svc.grants.retirable_by(p["RetiringPrincipal"])
                  if not gr.retiring_service_principal]
        return _grant_page(svc, grants, p)
    _service_filter(call, "RetiringServicePrincipal")
    if call.caller.principal_arn != service:  # the authorized resource: the principal named
        authz.authorize(call, "ListRetirableGrants", None, account=svc.account)
    return _grant_page(svc, [gr for gr in svc.grants.retirable_by(service)
                             if gr.retiring_service_principal == service], p)


def may_retire(call: Call, grant: g.Grant) -> bool:
    """The retiring principal, the grantee if the grant includes RetireGrant, or the root
    of the account that created the grant (AWS: permission to retire is in the grant)."""
    forms = caller_forms(call)
    if grant.retiring_principal and g.grantee_form(grant.retiring_principal) in forms:
        return True
    if "RetireGrant" in grant.operations and g.grantee_form(grant.grantee_principal) in forms:
        return True
    caller = call.caller
    return caller.principal_type == "Root" and caller.account == grant.issuing_account


@operation("RetireGrant", read_only=False)
async def retire_grant(svc: Service, call: Call, p: dict[str, Any]) -> None:
    token, key_ref, grant_id = p.get("GrantToken"), p.get("KeyId"), p.get("GrantId")
    if token is None and (key_ref is None or grant_id is None):
        raise ValidationException(
            "Either GrantToken, or both KeyId and GrantId, must be specified."
        )
    if token is not None:
        ref = parse_token(token)
        if grant_id is not None and grant_id != ref.grant_id:
            raise InvalidGrantIdException(f"Grant ID {grant_id} does not match the grant token.")
        grant_id = ref.grant_id
        if key_ref is None:
            if ref.region != svc.region or ref.key_id not in svc.state.keys:
                raise NotFoundException("The grant token does not name a grant in this region.")
            key_ref = ref.key_id
    assert grant_id is not None and key_ref is not None
    _check_grant_id(grant_id)
    key = svc.resolve(call, key_ref, allow_alias=False)
    if token is not None and key.key_id != ref.key_id:
        raise NotFoundException(f"Grant ID {grant_id} not found for key {key.arn}")
    grant = _grant_of(svc, key, grant_id)
    call.additional["grantId"] = grant_id
    if not may_retire(call, grant):
        raise AccessDeniedException(
            f"User: {call.caller.principal_arn} is not authorized to perform: kms:RetireGrant "
            f"on resource: {key.arn} because the grant does not allow it"
        )
    check_state("RetireGrant", key)
    dry_run(p)
    call.emit(_pin(svc, call, key.key_id),
              [g.GrantRetired(key.key_id, grant_id, call.caller.principal_arn)])


@operation("RevokeGrant", read_only=False)
async def revoke_grant(svc: Service, call: Call, p: dict[str, Any]) -> None:
    key = svc.key_for(call, p["KeyId"], "RevokeGrant", allow_alias=False)
    _check_grant_id(p["GrantId"])
    grant = _grant_of(svc, key, p["GrantId"])
    call.additional["grantId"] = grant.grant_id
    dry_run(p)
    call.emit(_pin(svc, call, key.key_id), [g.GrantRevoked(key.key_id, grant.grant_id)])


__all__ = ["allowing_grants", "grant_entry", "may_retire"]
