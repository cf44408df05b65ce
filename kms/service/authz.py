"""The one authorize step every handler passes: the key policy, the caller's identity (IAM)
policies and grants, evaluated as AWS does (kms.domain.policy holds the language).

Rules: an explicit Deny in the key policy or an identity policy wins; otherwise the key
policy must allow the principal itself, or allow its account (root ARN or account id)
while an identity policy of the caller allows too; or a grant allows (the grants hook,
``Service.grants_allow(call, action, key)``). A caller of another account needs both the
key policy and its own identity policy. Actions without a key are decided by identity
policies alone (an account root always may). The request context is built lazily from
the call: only the condition keys a policy asks for are computed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kms.domain import events as ev
from kms.domain import policy as pol
from kms.domain.errors import AccessDeniedException, KMSError
from kms.domain.ids import ALIAS_PREFIX
from kms.domain.key import Key

if TYPE_CHECKING:
    from kms.service.core import Call, Caller, Service

SYMMETRIC_ALGORITHM_OPS = frozenset({
    "Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
    "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext",
})
_PRINCIPAL_TYPES = {"Root": "Account", "IAMUser": "User", "AssumedRole": "AssumedRole",
                    "AWSAccount": "Account", "AWSService": "AWSService"}


def _flag(value: Any) -> str:
    return "true" if value else "false"


_UNSET: Any = object()


class CallContext:
    """The request context of one authorization, computed key by key on demand."""

    __slots__ = ("_cache", "action", "call", "key", "service")

    def __init__(self, call: Call, action: str, key: Key | None, service: Service | None,
                 ) -> None:
        self.call, self.action, self.key, self.service = call, action, key, service
        self._cache: dict[str, tuple[str, ...] | None] = {}

    def values(self, name: str) -> tuple[str, ...] | None:
        cache = self._cache
        got = cache.get(name, _UNSET)
        if got is _UNSET:
            exact = _KEYS.get(name)
            got = cache[name] = exact(self) if exact is not None else self._prefixed(name)
        return got  # type: ignore[no-any-return]

    # -- what each key is ---------------------------------------------------------------
    def encryption_context(self) -> dict[str, str]:
        p = self.call.params
        if self.call.operation == "ReEncrypt":
            member = ("DestinationEncryptionContext" if self.action == "ReEncryptTo"
                      else "SourceEncryptionContext")
            ctx = p.get(member)
        else:
            ctx = p.get("EncryptionContext")
        return ctx if isinstance(ctx, dict) else {}

    def request_tags(self) -> list[tuple[str, str]]:
        tags = self.call.params.get("Tags") or ()
        return [(t.get("TagKey", ""), t.get("TagValue", "")) for t in tags
                if isinstance(t, dict)]

    def _prefixed(self, name: str) -> tuple[str, ...] | None:
        """The condition keys that name a context key, principal tag or tag."""
        if name.startswith("kms:encryptioncontext:"):
            want = name[len("kms:encryptioncontext:"):]
            for k, v in self.encryption_context().items():
                if k.lower() == want:
                    return (str(v),)
            return None
        caller, key = self.call.caller, self.key
        if name.startswith("aws:principaltag/"):
            return _tag(caller.tags, name[len("aws:principaltag/"):])
        if name.startswith("aws:resourcetag/"):
            return _tag(key.tags, name[len("aws:resourcetag/"):]) if key else None
        if name.startswith("aws:requesttag/"):
            return _tag(self.request_tags(), name[len("aws:requesttag/"):])
        return None

    def same_key(self) -> tuple[str, ...] | None:
        """kms:ReEncryptOnSameKey: ReEncrypt's destination names the key it decrypts with."""
        raw, key = self.call.params.get("DestinationKeyId"), self.key
        if self.call.operation != "ReEncrypt" or not isinstance(raw, str) or key is None:
            return None
        if raw in (key.key_id, key.arn):
            return ("true",)
        alias = ALIAS_PREFIX + raw.split(":alias/", 1)[1] if ":alias/" in raw else raw
        target = self.service.state.aliases.get(alias) if self.service is not None else None
        return (_flag(target is not None and target.key_id == key.key_id),)

    def request_alias(self) -> tuple[str, ...] | None:
        raw = self.call.params.get("DestinationKeyId" if self.action == "ReEncryptTo"
                                   else "KeyId")
        if not isinstance(raw, str):
            return None
        if raw.startswith(ALIAS_PREFIX):
            return (raw,)
        if raw.startswith("arn:") and ":alias/" in raw:
            return (ALIAS_PREFIX + raw.split(":alias/", 1)[1],)
        return None

    def resource_aliases(self) -> tuple[str, ...] | None:
        if self.key is None or self.service is None:
            return None
        got = alias_index(self.service).of(self.key.key_id)
        staged = [name for name, k in self.call.staged.items() if k.key_id == self.key.key_id]
        return tuple(sorted({*got, *staged})) or None

    def multi_region_type(self) -> tuple[str, ...] | None:
        key = self.key
        if key is None or not key.multi_region or self.service is None:
            return None
        mrk = self.service.state.mrks.get(key.key_id)
        if mrk is None:
            return None
        return ("PRIMARY" if mrk.primary_region == key.region else "REPLICA",)


def _param(p: dict[str, Any], *names: str) -> tuple[str, ...] | None:
    for n in names:
        v = p.get(n)
        if isinstance(v, str):
            return (v,)
    return None


def _tag(tags: Any, want: str) -> tuple[str, ...] | None:
    for k, v in tags:
        if k.lower() == want:
            return (v,)
    return None


def _region_of(c: CallContext) -> str:
    """The region serving a call with no key (CreateKey, ListKeys, GenerateRandom, ...)."""
    svc = c.service or c.call.service
    return svc.region if svc is not None else ""


def _principal_arn(caller: Caller) -> str:
    """aws:PrincipalArn: an assumed-role session is its role."""
    if caller.identity_arn:
        return caller.identity_arn
    if caller.principal_type == "AssumedRole" and ":assumed-role/" in caller.principal_arn:
        account = caller.principal_arn.split(":")[4]
        role = caller.principal_arn.split(":assumed-role/", 1)[1].split("/", 1)[0]
        return f"arn:aws:iam::{account}:role/{role}"
    return caller.principal_arn


# -- the request context: one entry per exact condition key ---------------------------------
Lookup = Callable[[CallContext], "tuple[str, ...] | None"]


def _only(ops: frozenset[str] | tuple[str, ...], member: str, default: Any) -> Lookup:
    """A parameter's value as a condition key, for the operations that take it."""
    def get(c: CallContext) -> tuple[str, ...] | None:
        if c.call.operation not in ops:
            return None
        value = c.call.params.get(member, default)
        return (_flag(value) if isinstance(value, bool) or value is None else str(value),)
    return get


def _member(*names: str) -> Lookup:
    return lambda c: _param(c.call.params, *names)


def _encryption_algorithm(c: CallContext) -> tuple[str, ...] | None:
    got = _param(c.call.params, "EncryptionAlgorithm")
    if got is None and c.call.operation in SYMMETRIC_ALGORITHM_OPS:
        return ("SYMMETRIC_DEFAULT",)
    return got


def _grant_constraint_type(c: CallContext) -> tuple[str, ...] | None:
    constraints = c.call.params.get("Constraints") if c.call.operation == "CreateGrant" else None
    return tuple(constraints) if isinstance(constraints, dict) and constraints else None


def _grant_operations(c: CallContext) -> tuple[str, ...] | None:
    ops = c.call.params.get("Operations") if c.call.operation == "CreateGrant" else None
    return tuple(ops) if ops else None


def _tag_keys(c: CallContext) -> tuple[str, ...] | None:
    if c.call.operation == "UntagResource":
        return tuple(c.call.params.get("TagKeys") or ()) or None
    return tuple(k for k, _ in c.request_tags()) or None


_LAST_SECOND: list[Any] = [None, ()]  # (epoch second, its aws:CurrentTime): one a second


def _current_time(c: CallContext) -> tuple[str, ...]:
    second = c.call.at_ms // 1000
    if _LAST_SECOND[0] != second:
        when = dt.datetime.fromtimestamp(second, dt.UTC)
        _LAST_SECOND[:] = [second, (when.strftime("%Y-%m-%dT%H:%M:%SZ"),)]
    got: tuple[str, ...] = _LAST_SECOND[1]
    return got


def _username(c: CallContext) -> tuple[str, ...] | None:
    caller = c.call.caller
    if caller.principal_type != "IAMUser":
        return None
    return (caller.principal_arn.rsplit("/", 1)[-1],)


def _of_key(attr: str, *members: str, default: str | None = None) -> Lookup:
    """A key property (or, for CreateKey, the parameter that will set it)."""
    def get(c: CallContext) -> tuple[str, ...] | None:
        if c.key is not None:
            return (str(getattr(c.key, attr)),)
        got = _param(c.call.params, *members)
        return got if got is not None or default is None else (default,)
    return get


def _optional(value: str) -> tuple[str, ...] | None:
    return (value,) if value else None


_GRANT_OPS = ("CreateGrant", "ListGrants", "RevokeGrant")
_POLICY_OPS = ("CreateKey", "PutKeyPolicy", "ReplicateKey")
_KEYS: dict[str, Lookup] = {
    "kms:encryptioncontextkeys": lambda c: tuple(c.encryption_context()) or None,
    "kms:calleraccount": lambda c: _optional(c.call.caller.account),
    "kms:viaservice": lambda c: _optional(c.call.caller.via_service),
    "kms:keyspec": _of_key("key_spec", "KeySpec", "CustomerMasterKeySpec",
                           default="SYMMETRIC_DEFAULT"),
    "kms:customermasterkeyspec": _of_key("key_spec", "KeySpec", "CustomerMasterKeySpec",
                                         default="SYMMETRIC_DEFAULT"),
    "kms:keyusage": _of_key("key_usage", "KeyUsage"),
    "kms:customermasterkeyusage": _of_key("key_usage", "KeyUsage"),
    "kms:keyorigin": _of_key("origin", "Origin", default="AWS_KMS"),
    "kms:multiregion": lambda c: (_flag(c.key.multi_region if c.key is not None
                                        else c.call.params.get("MultiRegion")),),
    "kms:multiregionkeytype": lambda c: c.multi_region_type(),
    "kms:requestalias": lambda c: c.request_alias(),
    "kms:resourcealiases": lambda c: c.resource_aliases(),
    "kms:encryptionalgorithm": _encryption_algorithm,
    "kms:signingalgorithm": _member("SigningAlgorithm"),
    "kms:messagetype": _only(("Sign", "Verify"), "MessageType", "RAW"),
    "kms:macalgorithm": _member("MacAlgorithm"),
    "kms:keyagreementalgorithm": _member("KeyAgreementAlgorithm"),
    "kms:datakeypairspec": _member("KeyPairSpec"),
    "kms:wrappingalgorithm": _member("WrappingAlgorithm"),
    "kms:wrappingkeyspec": _member("WrappingKeySpec"),
    "kms:expirationmodel": _member("ExpirationModel"),
    "kms:replicaregion": _member("ReplicaRegion"),
    "kms:primaryregion": _member("PrimaryRegion"),
    "kms:granteeprincipal": _member("GranteePrincipal"),
    "kms:granteeserviceprincipal": _member("GranteeServicePrincipal"),
    "kms:grantconstraintsourcearn": lambda c: _optional(str(
        (c.call.params.get("Constraints") or {}).get("SourceArn", "")))
    if c.call.operation == "CreateGrant" else None,
    "kms:retiringprincipal": _member("RetiringPrincipal"),
    "kms:grantoperations": _grant_operations,
    "kms:grantconstrainttype": _grant_constraint_type,
    "kms:grantisforawsresource": lambda c: (_flag(bool(c.call.caller.via_service)),)
    if c.call.operation in _GRANT_OPS else None,
    "kms:rotationperiodindays": _only(("EnableKeyRotation",), "RotationPeriodInDays", 365),
    "kms:schedulekeydeletionpendingwindowindays": _only(("ScheduleKeyDeletion",),
                                                        "PendingWindowInDays", 30),
    "kms:bypasspolicylockoutsafetycheck": _only(_POLICY_OPS, "BypassPolicyLockoutSafetyCheck",
                                                False),
    "kms:reencryptonsamekey": lambda c: c.same_key(),
    "aws:principalarn": lambda c: (_principal_arn(c.call.caller),),
    "aws:principalaccount": lambda c: _optional(c.call.caller.account),
    "aws:principaltype": lambda c: (_PRINCIPAL_TYPES.get(c.call.caller.principal_type,
                                                         c.call.caller.principal_type),),
    "aws:tagkeys": _tag_keys,
    "aws:sourcearn": lambda c: _optional(c.call.caller.source_arn),
    "aws:sourceaccount": lambda c: _optional(c.call.caller.source_arn.split(":")[4]
                                             if c.call.caller.source_arn else ""),
    "aws:sourceip": lambda c: None if c.call.caller.forwarded_by
    else _optional(c.call.caller.source_ip),
    "aws:currenttime": _current_time,
    "aws:epochtime": lambda c: (str(c.call.at_ms // 1000),),
    "aws:securetransport": lambda c: None if c.call.caller.forwarded_by
    else (_flag(c.call.caller.secure_transport),),
    "aws:userid": lambda c: _optional(c.call.caller.user_id),
    "aws:username": _username,
    "aws:requestedregion": lambda c: (c.key.region,) if c.key is not None
    else _optional(_region_of(c)),
}


# -- the alias index behind kms:ResourceAliases ----------------------------------------------
class AliasIndex:
    """key id -> its alias names, folded from the alias events (no scan per request)."""

    def __init__(self, aliases: dict[str, Any]) -> None:
        self._of: dict[str, set[str]] = {}
        self._target: dict[str, str] = {}
        for name, alias in aliases.items():
            self._set(name, alias.key_id)

    def _set(self, name: str, key_id: str | None) -> None:
        old = self._target.pop(name, None)
        if old is not None:
            self._of.get(old, set()).discard(name)
        if key_id is not None:
            self._target[name] = key_id
            self._of.setdefault(key_id, set()).add(name)

    def of(self, key_id: str) -> frozenset[str]:
        return frozenset(self._of.get(key_id, ()))

    def __call__(self, envelopes: Any) -> None:
        if envelopes is None:
            self._of.clear()
            self._target.clear()
            return
        for env in envelopes:
            e = env.event
            if isinstance(e, ev.AliasCreated | ev.AliasUpdated):
                self._set(e.alias, e.key_id)
            elif isinstance(e, ev.AliasDeleted):
                self._set(e.alias, None)


def alias_index(svc: Service) -> AliasIndex:
    """The service's alias index, made from its state on first use and then kept by the log."""
    index: AliasIndex | None = getattr(svc, "_alias_index", None)
    if index is None:
        index = AliasIndex(svc.state.aliases)
        svc.log.subscribe(index)
        svc._alias_index = index  # type: ignore[attr-defined]
    return index


# -- the decision ----------------------------------------------------------------------------
def _denied(caller: Caller, action: str, resource: str, why: str) -> AccessDeniedException:
    return AccessDeniedException(
        f"User: {caller.principal_arn} is not authorized to perform: kms:{action} on "
        f"resource: {resource} {why}")


def _no_policy(kind: str, action: str) -> str:
    return f"because no {kind}-based policy allows the kms:{action} action"


EXPLICIT_DENY_RESOURCE = "with an explicit deny in a resource-based policy"
EXPLICIT_DENY_IDENTITY = "with an explicit deny in an identity-based policy"


# An identity policy this evaluator cannot read stands for a Deny of everything (fail
# closed): a Deny statement with a typo must not silently grant what it was written to stop.
_UNREADABLE = pol.parse('{"Version": "2012-10-17", "Statement": [{"Effect": "Deny", '
                        '"Action": "*", "Resource": "*"}]}', resource_policy=False)


def identity_policies(caller: Caller) -> list[pol.Policy]:
    out = []
    for text in caller.identity_policies:
        try:
            out.append(pol.parse(text, resource_policy=False))
        except KMSError:
            out.append(_UNREADABLE)
    return out


def decide(call: Call, action: str, key: Key | None, *, policy_text: str | None = None,
           account: str | None = None, service: Service | None = None,
           grants: bool = True) -> str:
    """Why ``kms:<action>`` is refused ("" when allowed). ``policy_text`` stands in for the
    key's policy (the lockout safety check asks of a policy not yet in place)."""
    caller = call.caller
    resource = key.arn if key is not None else "*"
    ctx = CallContext(call, action, key, service)
    r = pol.Request(action, resource, caller.principal_arn, caller.account,
                    caller.principal_type, ctx, caller.identity_arn)
    is_root = caller.principal_type == "Root"
    ident = pol.Outcome.ALLOW if is_root else pol.evaluate_all(identity_policies(caller), r)
    if key is None and policy_text is None:
        if account is not None and caller.account != account:
            return _no_policy("resource", action)
        if ident is pol.Outcome.DENY:
            return EXPLICIT_DENY_IDENTITY
        return "" if ident is pol.Outcome.ALLOW else _no_policy("identity", action)
    try:
        text = policy_text if policy_text is not None else key.policy  # type: ignore[union-attr]
        resource_outcome = pol.parse(text).evaluate(r)
    except KMSError:
        resource_outcome = pol.Outcome.NONE
    if resource_outcome is pol.Outcome.DENY:
        return EXPLICIT_DENY_RESOURCE
    if ident is pol.Outcome.DENY:
        return EXPLICIT_DENY_IDENTITY
    owner = key.account if key is not None else account
    same_account = caller.account == owner
    if resource_outcome is pol.Outcome.ALLOW and (same_account or ident is pol.Outcome.ALLOW):
        return ""
    if resource_outcome is pol.Outcome.ALLOW_ACCOUNT and ident is pol.Outcome.ALLOW:
        return ""
    if grants and key is not None and service is not None:
        hook = getattr(service, "grants_allow", None)
        if hook is not None and hook(call, action, key):
            return ""
    if resource_outcome is not pol.Outcome.NONE:
        return _no_policy("identity", action)
    return _no_policy("resource", action)


def authorize(call: Call, action: str, key: Key | None, account: str | None = None) -> None:
    """Allow ``kms:<action>`` on ``key`` (or on the account, for IAM-only actions) or raise
    AccessDeniedException in AWS's words; the reason goes into the call's audit fact."""
    why = decide(call, action, key, account=account, service=call.service)
    if why:
        resource = key.arn if key is not None else "*"
        call.additional["authorizationDenied"] = {"action": f"kms:{action}", "reason": why}
        raise _denied(call.caller, action, resource, why)


def lockout_safe(call: Call, key: Key, policy_text: str) -> bool:
    """The lockout safety check: would ``policy_text`` let this caller call PutKeyPolicy on
    ``key`` afterwards (grants do not count)."""
    return not decide(call, "PutKeyPolicy", key, policy_text=policy_text,
                      service=call.service, grants=False)
