"""Key ids, multi-Region ids, ARNs and alias names: parse and validate.

Pure: no I/O. A reference a caller passes ("KeyId") is classified once here; the
service resolves aliases against state. Malformed references get AWS's messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import NewType

from kms.domain.errors import NotFoundException, ValidationException

KeyId = NewType("KeyId", str)
AliasName = NewType("AliasName", str)

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_MRK = re.compile(r"mrk-[0-9a-f]{32}")
_ARN = re.compile(r"arn:(aws[a-z-]*):kms:([a-z0-9-]+):(\d{12}):(key|alias)/(.+)")
_ALIAS_NAME = re.compile(r"alias/[a-zA-Z0-9:/_-]+")

ALIAS_PREFIX = "alias/"
AWS_ALIAS_PREFIX = "alias/aws/"


class RefKind(Enum):
    KEY_ID = "key-id"
    KEY_ARN = "key-arn"
    ALIAS_NAME = "alias-name"
    ALIAS_ARN = "alias-arn"


@dataclass(frozen=True, slots=True)
class KeyRef:
    """What a caller named: a key (by id or ARN) or an alias (by name or ARN)."""

    kind: RefKind
    raw: str
    key_id: KeyId | None = None
    alias: AliasName | None = None

    @property
    def is_alias(self) -> bool:
        return self.alias is not None


def is_key_id(value: str) -> bool:
    return bool(_UUID.fullmatch(value) or _MRK.fullmatch(value))


def key_arn(region: str, account: str, key_id: str) -> str:
    return f"arn:aws:kms:{region}:{account}:key/{key_id}"


def alias_arn(region: str, account: str, alias: str) -> str:
    return f"arn:aws:kms:{region}:{account}:{alias}"


@lru_cache(maxsize=4096)
def parse_key_ref(raw: str, region: str, account: str, *, allow_alias: bool) -> KeyRef:
    """Classify a KeyId parameter. Management operations pass ``allow_alias=False``.
    Pure, so cached: the same few key ids arrive on every request."""
    if raw.startswith("arn:"):
        m = _ARN.fullmatch(raw)
        if m is None:
            raise NotFoundException(f"Invalid arn {raw}")
        _, arn_region, arn_account, kind, rest = m.groups()
        if arn_region != region:
            raise NotFoundException(f"Invalid arn {arn_region}")
        if arn_account != account:
            # Cross-account keys live in another node's account; none exist here.
            raise NotFoundException(f"Key '{raw}' does not exist")
        if kind == "key":
            if not is_key_id(rest):
                raise NotFoundException(f"Invalid keyId '{raw}'")
            return KeyRef(RefKind.KEY_ARN, raw, key_id=KeyId(rest))
        if not allow_alias:
            raise NotFoundException(f"Invalid keyId '{raw}'")
        return KeyRef(RefKind.ALIAS_ARN, raw, alias=AliasName(f"alias/{rest}"))
    if raw.startswith(ALIAS_PREFIX):
        if not allow_alias:
            raise NotFoundException(f"Invalid keyId '{raw}'")
        return KeyRef(RefKind.ALIAS_NAME, raw, alias=AliasName(raw))
    if is_key_id(raw):
        return KeyRef(RefKind.KEY_ID, raw, key_id=KeyId(raw))
    raise NotFoundException(f"Invalid keyId '{raw}'")


def check_alias_name(name: str) -> AliasName:
    """AliasName rules of CreateAlias/UpdateAlias/DeleteAlias (pattern checked by the model)."""
    if not name.startswith(ALIAS_PREFIX):
        raise ValidationException(
            'Alias must start with the prefix "alias/". Please see '
            "https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html"
        )
    if not _ALIAS_NAME.fullmatch(name) or name == ALIAS_PREFIX:
        raise ValidationException(
            f"1 validation error detected: Value '{name}' at 'aliasName' failed to satisfy "
            "constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"
        )
    return AliasName(name)


def check_new_alias_name(name: str) -> AliasName:
    """CreateAlias/UpdateAlias: the model's pattern allows ':', but AWS refuses it in a name
    it would create or point (its guide: letters, digits, '/', '_' and '-' only)."""
    checked = check_alias_name(name)
    if ":" in checked:
        raise ValidationException(f"{checked} contains invalid characters for an alias")
    return checked
