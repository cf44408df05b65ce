"""Alias operations: CreateAlias, UpdateAlias, DeleteAlias, ListAliases.

Rules: an alias is its own stream; TargetKeyId takes a key id or key ARN only;
the alias rules themselves live in kms.domain.alias. ListAliases also shows AWS's
predefined ``alias/aws/<service>`` names, without a target until their key exists.
"""

from __future__ import annotations

from typing import Any

from kms.domain import alias as aliases
from kms.domain.alias import Alias
from kms.domain.ids import (
    ALIAS_PREFIX,
    AWS_ALIAS_PREFIX,
    alias_arn,
    check_alias_name,
    check_new_alias_name,
)
from kms.service import authz
from kms.service.core import AWS_MANAGED_SERVICES, Call, Service, operation
from kms.service.paging import page
from kms.service.views import alias_entry
from kms.store.state import alias_stream


def _seen_alias(svc: Service, call: Call, name: str) -> str:
    stream = alias_stream(name)
    call.seen.setdefault(stream, svc.log.version(stream))
    return stream


@operation("CreateAlias", read_only=False)
async def create_alias(svc: Service, call: Call, p: dict[str, Any]) -> None:
    name = check_new_alias_name(p["AliasName"])
    stream = _seen_alias(svc, call, name)
    key = svc.resolve(call, p["TargetKeyId"], allow_alias=False)
    authz.authorize(call, "CreateAlias", key)
    events = aliases.create(name, key, svc.state.aliases.get(name),
                            len(svc.state.aliases_of(key.key_id)))
    call.emit(stream, events)


@operation("UpdateAlias", read_only=False)
async def update_alias(svc: Service, call: Call, p: dict[str, Any]) -> None:
    name = check_new_alias_name(p["AliasName"])
    stream = _seen_alias(svc, call, name)
    new = svc.resolve(call, p["TargetKeyId"], allow_alias=False)
    authz.authorize(call, "UpdateAlias", new)
    current = svc.state.aliases.get(name)
    old = svc.state.keys.get(current.key_id) if current else None
    if old is not None:
        authz.authorize(call, "UpdateAlias", old)
    events = aliases.update(current, name, old, new, len(svc.state.aliases_of(new.key_id)))
    call.emit(stream, events)


@operation("DeleteAlias", read_only=False)
async def delete_alias(svc: Service, call: Call, p: dict[str, Any]) -> None:
    name = check_alias_name(p["AliasName"])
    stream = _seen_alias(svc, call, name)
    current = svc.state.aliases.get(name)
    target = svc.state.keys.get(current.key_id) if current else None
    if target is not None:
        call.resources.append(target.arn)
        authz.authorize(call, "DeleteAlias", target)
    call.emit(stream, aliases.delete(current, name, svc.region, svc.account))


# AWS lists these in every account before their AWS managed key exists (API Reference).
PREDEFINED_ALIASES = frozenset(AWS_ALIAS_PREFIX + service for service in AWS_MANAGED_SERVICES)


@operation("ListAliases", read_only=True)
async def list_aliases(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    authz.authorize(call, "ListAliases", None, account=svc.account)
    items: list[tuple[str, Alias | None]]
    if "KeyId" in p:
        key = svc.resolve(call, p["KeyId"], allow_alias=False)
        items = sorted(((a.name, a) for a in svc.state.aliases_of(key.key_id)),
                       key=lambda i: i[0])
    else:
        named = svc.state.aliases
        items = [(n, named.get(n)) for n in sorted(named.keys() | PREDEFINED_ALIASES)]
    chunk, tail = page(items, p, lambda i: i[0], default=50, maximum=100,
                       valid=lambda m: m.startswith(ALIAS_PREFIX))
    return {"Aliases": [_entry(svc, name, a) for name, a in chunk], **tail}


def _entry(svc: Service, name: str, alias: Alias | None) -> dict[str, Any]:
    if alias is None:  # predefined, not yet used: AWS shows the name and ARN only
        return {"AliasName": name, "AliasArn": alias_arn(svc.region, svc.account, name)}
    return alias_entry(alias, svc.region, svc.account)
