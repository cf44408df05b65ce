"""Aliases: friendly names that point at one customer managed key.

Rules: pure; an alias lives in its own stream ``alias/<name>``; the quota of 50
aliases per key and the "same type and usage" rule of UpdateAlias live here.
"""

from __future__ import annotations

from dataclasses import dataclass

from kms.domain import events as ev
from kms.domain.errors import (
    AccessDeniedException,
    AlreadyExistsException,
    LimitExceededException,
    NotFoundException,
    ValidationException,
)
from kms.domain.ids import AWS_ALIAS_PREFIX, alias_arn
from kms.domain.key import Key, KeyState, check_state
from kms.domain.specs import SPECS

MAX_ALIASES_PER_KEY = 50


@dataclass(frozen=True, slots=True)
class Alias:
    name: str
    key_id: str
    created_at_ms: int
    updated_at_ms: int


def _reserved(name: str, region: str, account: str) -> None:
    if name.startswith(AWS_ALIAS_PREFIX):
        raise AccessDeniedException(  # AWS's implicit deny on AWS managed aliases
            f"Alias {alias_arn(region, account, name)} is reserved for AWS managed keys."
        )


def create(name: str, key: Key, existing: Alias | None, aliases_of_key: int) -> list[ev.Event]:
    _reserved(name, key.region, key.account)
    if existing is not None:
        raise AlreadyExistsException(
            f"An alias with the name {alias_arn(key.region, key.account, name)} already exists"
        )
    check_state("CreateAlias", key)
    if aliases_of_key >= MAX_ALIASES_PER_KEY:
        raise LimitExceededException(
            f"Key {key.arn} already has the maximum of {MAX_ALIASES_PER_KEY} aliases."
        )
    return [ev.AliasCreated(name, key.key_id)]


def update(alias: Alias | None, name: str, old: Key | None, new: Key,
           aliases_of_new: int) -> list[ev.Event]:
    _reserved(name, new.region, new.account)
    if alias is None or old is None:
        raise NotFoundException(f"Alias {alias_arn(new.region, new.account, name)} is not found.")
    if new.state in (KeyState.PENDING_DELETION, KeyState.PENDING_REPLICA_DELETION):
        check_state("UpdateAlias", new)
    if _key_type(old) != _key_type(new) or old.key_usage != new.key_usage:
        raise ValidationException(
            f"{new.arn} is not the same key type and key usage as {old.arn}; "
            "an alias can only be moved to a key of the same type and usage."
        )
    if alias.key_id == new.key_id:
        return []
    if aliases_of_new >= MAX_ALIASES_PER_KEY:
        raise LimitExceededException(
            f"Key {new.arn} already has the maximum of {MAX_ALIASES_PER_KEY} aliases."
        )
    return [ev.AliasUpdated(name, new.key_id)]


def _key_type(key: Key) -> str:
    family = SPECS[key.key_spec].family
    return family if family in ("symmetric", "hmac") else "asymmetric"


def delete(alias: Alias | None, name: str, region: str, account: str) -> list[ev.Event]:
    _reserved(name, region, account)
    if alias is None:
        raise NotFoundException(f"Alias {alias_arn(region, account, name)} is not found.")
    return [ev.AliasDeleted(name)]
