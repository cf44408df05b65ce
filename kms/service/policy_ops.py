"""Key policy operations: GetKeyPolicy, PutKeyPolicy, ListKeyPolicies, and the checks every
new key policy passes (CreateKey, PutKeyPolicy, ReplicateKey).

Rules: a key has exactly one policy, named ``default``. A new policy is refused unless it
is a well-formed document (kms.domain.policy) of at most 32 KB whose IAM principals of this
account exist, and (unless BypassPolicyLockoutSafetyCheck) it lets the caller call
PutKeyPolicy afterwards. The policy changes by one ``KeyPolicyUpdated`` event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kms.domain import events as ev
from kms.domain import policy as pol
from kms.domain.errors import (
    LimitExceededException,
    MalformedPolicyDocumentException,
    NotFoundException,
)
from kms.domain.key import Key
from kms.service import authz
from kms.service.core import Call, Service, operation
from kms.service.paging import page
from kms.store.state import key_stream

MAX_POLICY_BYTES = 32768
POLICY_NAME = "default"
LOCKOUT = "The new key policy will not allow you to update the key policy in the future."


def check_size_and_shape(text: str) -> pol.Policy:
    """A policy's size (LimitExceededException) and its document (Malformed...)."""
    if len(text.encode("utf-8")) > MAX_POLICY_BYTES:
        raise LimitExceededException(
            f"The key policy exceeds the maximum size of {MAX_POLICY_BYTES} bytes.")
    return pol.parse(text)


def check_new_policy(svc: Service, call: Call, key: Key, text: str) -> None:
    """Every check a policy a caller gives passes before it is attached to ``key``."""
    doc = check_size_and_shape(text)
    exists: Callable[[str], bool] | None = getattr(svc, "principal_exists", None)
    for arn in doc.principals:
        own = arn.split(":")[4] == svc.account if arn.count(":") >= 5 else False
        if own and exists is not None and not exists(arn):
            raise MalformedPolicyDocumentException(pol.INVALID_PRINCIPALS)
    if not call.params.get("BypassPolicyLockoutSafetyCheck") and \
            not authz.lockout_safe(call, key, text):
        raise MalformedPolicyDocumentException(LOCKOUT)


def _policy_name(p: dict[str, Any], key: Key) -> None:
    name = p.get("PolicyName", POLICY_NAME)
    if name != POLICY_NAME:
        raise NotFoundException(f"Policy {name} does not exist for key {key.arn}. The only "
                                f"key policy name is {POLICY_NAME}.")


@operation("GetKeyPolicy", read_only=True)
async def get_key_policy(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key = svc.key_for(call, p["KeyId"], "GetKeyPolicy", allow_alias=False)
    _policy_name(p, key)
    return {"Policy": key.policy, "PolicyName": POLICY_NAME}


@operation("ListKeyPolicies", read_only=True)
async def list_key_policies(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    svc.key_for(call, p["KeyId"], "ListKeyPolicies", allow_alias=False)
    chunk, tail = page([POLICY_NAME], p, lambda n: n, default=100, maximum=1000)
    return {"PolicyNames": chunk, **tail}


@operation("PutKeyPolicy", read_only=False)
async def put_key_policy(svc: Service, call: Call, p: dict[str, Any]) -> None:
    key = svc.key_for(call, p["KeyId"], "PutKeyPolicy", allow_alias=False)
    _policy_name(p, key)
    check_new_policy(svc, call, key, p["Policy"])
    call.emit(key_stream(key.key_id), [ev.KeyPolicyUpdated(key.key_id, p["Policy"])])
