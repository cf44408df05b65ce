"""What grants let a caller do: grant tokens, the grant check the policy evaluation asks,
and CreateGrant's condition keys.

Rules: a grant token is opaque to clients, not a secret (AWS says so too): it names the
region, the key and the grant, plus a per-call nonce (every CreateGrant answers a new
token, all interchangeable) and a checksum, so garbage is ``InvalidGrantTokenException``
and a token is resolved without a scan. The projection is updated before CreateGrant
answers, so a token's grant is usable by the very next call that carries it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kms.domain import grants as g
from kms.domain.errors import InvalidGrantTokenException
from kms.domain.key import Key

if TYPE_CHECKING:
    from kms.service.core import Call
    from kms.store.grants import Grants

TOKEN_VERSION = 1
_NONCE = 16
_CHECK = 16
INVALID_TOKEN = "The grant token is not valid."
# The operations whose model declares InvalidGrantTokenException: every one that takes
# GrantTokens but DescribeKey (which ignores a bad token, as its model has no such error).
TOKENS_CHECKED = frozenset({
    "CreateGrant", "Decapsulate", "Decrypt", "DeriveSharedSecret", "Encapsulate", "Encrypt",
    "GenerateDataKey", "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext",
    "GenerateDataKeyWithoutPlaintext", "GenerateMac", "GetPublicKey", "ReEncrypt", "Sign",
    "Verify", "VerifyMac",
})


@dataclass(frozen=True, slots=True)
class TokenRef:
    region: str
    key_id: str
    grant_id: str


def _check(payload: bytes) -> bytes:
    return hashlib.sha256(b"kms-grant-token\x00" + payload).digest()[:_CHECK]


def new_token(region: str, key_id: str, grant_id: str) -> str:
    """A fresh token for a grant (a new nonce each call)."""
    r, k = region.encode(), key_id.encode()
    payload = (bytes([TOKEN_VERSION, len(r)]) + r + bytes([len(k)]) + k
               + bytes.fromhex(grant_id) + os.urandom(_NONCE))
    return base64.urlsafe_b64encode(payload + _check(payload)).rstrip(b"=").decode()


def parse_token(token: str) -> TokenRef:
    """The grant a token names, or InvalidGrantTokenException."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload, check = raw[:-_CHECK], raw[-_CHECK:]
        if len(raw) < 3 + 32 + _NONCE + _CHECK or raw[0] != TOKEN_VERSION \
                or _check(payload) != check:
            raise ValueError
        n = payload[1]
        region = payload[2:2 + n].decode("ascii")
        m = payload[2 + n]
        key_id = payload[3 + n:3 + n + m].decode("ascii")
        grant = payload[3 + n + m:]
        if len(grant) != 32 + _NONCE:
            raise ValueError
        return TokenRef(region, key_id, grant[:32].hex())
    except (ValueError, IndexError, binascii.Error, UnicodeDecodeError):
        raise InvalidGrantTokenException(INVALID_TOKEN) from None


def check_tokens(tokens: Iterable[str] | None) -> list[TokenRef]:
    """Every token of a call's GrantTokens parses (else InvalidGrantTokenException)."""
    return [parse_token(t) for t in tokens or ()]


def caller_forms(call: Call) -> tuple[str, ...]:
    """The grantee names the caller answers to (an account grantee: its root only)."""
    caller = call.caller
    root = caller.principal_type in ("Root", "AWSAccount")
    return g.principal_forms(caller.principal_arn, caller.account if root else "")


def context_for(call: Call, action: str) -> Mapping[str, str] | None:
    member = g.CONTEXT_MEMBER.get(action)
    value = call.params.get(member) if member else None
    return value if isinstance(value, dict) else None


def allowing_grants(grants: Grants, region: str, call: Call, action: str,
                    key: Key) -> list[g.Grant]:
    """The live grants on ``key`` that allow ``kms:<action>`` for this call: the caller is
    the grantee, ``action`` is among the operations, the constraint holds for the call's
    encryption context; for CreateGrant, the new grant is at least as constrained. Grants
    named by the call's tokens come first."""
    forms = caller_forms(call)
    seen: dict[str, g.Grant] = {}
    for ref in _token_refs(call):
        if ref.region == region and ref.key_id == key.key_id:
            grant = grants.get(key.key_id, ref.grant_id)
            if grant is not None and g.grantee_form(grant.grantee_principal) in forms:
                seen.setdefault(grant.grant_id, grant)
    for grant in grants.for_caller(key.key_id, forms):
        seen.setdefault(grant.grant_id, grant)
    context = context_for(call, action)
    out = []
    for grant in seen.values():
        if action not in grant.operations or not g.constraint_holds(
                grant, action, context, call.caller.source_arn):
            continue
        if action == "CreateGrant":  # a grantee may pass on only what it holds, as strictly
            child_type, child = g.constraint_of(call.params.get("Constraints"))
            if not g.at_least_as_strict(grant, child_type, child,
                                        g.source_arn_of(call.params.get("Constraints"))):
                continue
            if not set(call.params.get("Operations") or ()) <= set(grant.operations):
                continue
        out.append(grant)
    return out


def _token_refs(call: Call) -> list[TokenRef]:
    refs = []
    for token in call.params.get("GrantTokens") or ():
        try:
            refs.append(parse_token(token))
        except InvalidGrantTokenException:
            continue  # the call was refused for it before the handler ran
    return refs


def grant_condition_context(params: Mapping[str, Any], via_service: str = "") -> dict[str, Any]:
    """CreateGrant's condition keys for policy evaluation: kms:GrantOperations (a list),
    kms:GrantConstraintType (absent without a constraint), kms:GrantIsForAWSResource,
    kms:GranteePrincipal and kms:RetiringPrincipal (absent when not given)."""
    out: dict[str, Any] = {
        "kms:GrantOperations": list(params.get("Operations") or ()),
        "kms:GrantIsForAWSResource": bool(via_service),
        "kms:GranteePrincipal": params.get("GranteePrincipal", ""),
    }
    try:
        constraint_type, _ = g.constraint_of(params.get("Constraints"))
    except Exception:  # CreateGrant refuses it itself, with AWS's words
        constraint_type = ""
    if constraint_type:
        out["kms:GrantConstraintType"] = constraint_type
    if params.get("RetiringPrincipal"):
        out["kms:RetiringPrincipal"] = params["RetiringPrincipal"]
    return out
