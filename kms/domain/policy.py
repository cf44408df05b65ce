"""The policy language: parse and validate a policy document, compile it once per text into
an evaluator of statements, and evaluate it against a request context as IAM does.

Rules: pure (no I/O, no clock; conditions are kms.domain.conditions'). A document is
compiled once per exact text (bounded LRU), every action pattern expanded against the KMS
action list at compile time, so evaluation is set lookups and pre-built matchers, and
recent outcomes are remembered per policy; the request context is asked lazily.
"""

from __future__ import annotations

import enum
import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kms.domain.conditions import (
    INVALID_PRINCIPALS,
    MALFORMED,
    VARIABLE,
    Condition,
    Context,
    conditions,
    glob,
    glob_cached,
    malformed,
    substitute,
)

# AWS's recorded words (README "Access control" lists the sources): a document that is not
# JSON is refused with no message at all (aws/aws-sdk-ruby#1784); a statement with neither
# Principal nor NotPrincipal with NO_PRINCIPAL (terraform-aws-modules/terraform-aws-eks#2163).
# Unknown actions and other shape errors keep this node's words (AWS's are not recorded).
NOT_JSON = ""
NO_PRINCIPAL = "Policy contains a statement with no principal."

# Every IAM action of KMS (ReEncrypt is authorized as ReEncryptFrom + ReEncryptTo).
KMS_ACTIONS: tuple[str, ...] = (
    "CancelKeyDeletion", "ConnectCustomKeyStore", "CreateAlias", "CreateCustomKeyStore",
    "CreateGrant", "CreateKey", "Decapsulate", "Decrypt", "DeleteAlias", "DeleteCustomKeyStore",
    "DeleteImportedKeyMaterial", "DeriveSharedSecret", "DescribeCustomKeyStores", "DescribeKey",
    "DisableKey", "DisableKeyRotation", "DisconnectCustomKeyStore", "EnableKey",
    "EnableKeyRotation", "Encapsulate", "Encrypt", "GenerateDataKey", "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext", "GenerateDataKeyWithoutPlaintext", "GenerateMac",
    "GenerateRandom", "GetKeyLastUsage", "GetKeyPolicy", "GetKeyRotationStatus",
    "GetParametersForImport", "GetPublicKey", "ImportKeyMaterial", "ListAliases", "ListGrants",
    "ListKeyPolicies", "ListKeyRotations", "ListKeys", "ListResourceTags",
    "ListRetirableGrants", "PutKeyPolicy", "ReEncryptFrom", "ReEncryptTo", "ReplicateKey",
    "RetireGrant", "RevokeGrant", "RotateKeyOnDemand", "ScheduleKeyDeletion", "Sign",
    "SynchronizeMultiRegionKey", "TagResource", "UntagResource", "UpdateAlias",
    "UpdateCustomKeyStore", "UpdateKeyDescription", "UpdatePrimaryRegion", "Verify",
    "VerifyMac",
)
_ACTIONS_LOWER = {a.lower(): a for a in KMS_ACTIONS}
ALL_ACTIONS = frozenset(_ACTIONS_LOWER)

_ACCOUNT = re.compile(r"^\d{12}$")
_IAM_PRINCIPAL = re.compile(
    r"^arn:aws:iam::(\d{12}):(root|user/[\w+=,.@/-]+|role/[\w+=,.@/-]+)$")
_ASSUMED_ROLE = re.compile(r"^arn:aws:sts::(\d{12}):assumed-role/([\w+=,.@-]+)/([\w+=,.@-]+)$")
_SERVICE = re.compile(r"^[a-z0-9.-]+\.amazonaws\.com(\.cn)?$")



class Outcome(enum.Enum):
    """What one policy says of a request (a resource policy tells direct from account)."""

    NONE = "none"
    DENY = "deny"
    ALLOW = "allow"  # the principal itself (or "*") is allowed
    ALLOW_ACCOUNT = "allow-account"  # only the principal's account: IAM policies must allow


@dataclass(frozen=True, slots=True)
class Request:
    action: str  # "Encrypt" (no "kms:" prefix)
    resource: str  # the key ARN, or "*" for actions without a key
    principal_arn: str
    account: str
    principal_type: str  # Root | IAMUser | AssumedRole | AWSAccount | AWSService
    context: Context
    identity_arn: str = ""  # the IAM entity behind the caller ARN (a role's, path included)

    @property
    def role_arn(self) -> str:
        """The role an assumed-role session acts for ("" for other principals)."""
        if self.principal_type == "AssumedRole" and self.identity_arn:
            return self.identity_arn
        m = _ASSUMED_ROLE.match(self.principal_arn)
        return f"arn:aws:iam::{m.group(1)}:role/{m.group(2)}" if m else ""


# -- compiled pieces ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Principals:
    anyone: bool
    arns: frozenset[str]
    accounts: frozenset[str]  # account ids named by id or root ARN
    services: frozenset[str]

    def match(self, r: Request) -> Outcome:
        """ALLOW when the principal itself is named, ALLOW_ACCOUNT when only its account."""
        if self.anyone:
            return Outcome.ALLOW
        if r.principal_type == "AWSService":
            return Outcome.ALLOW if r.principal_arn in self.services else Outcome.NONE
        if r.principal_arn in self.arns or (self.arns and r.role_arn in self.arns):
            return Outcome.ALLOW
        if r.account in self.accounts:
            # The account root is its account: naming the account names it directly.
            return Outcome.ALLOW if r.principal_type == "Root" else Outcome.ALLOW_ACCOUNT
        return Outcome.NONE


def _principals(value: Any) -> Principals:
    if value == "*":
        return Principals(True, frozenset(), frozenset(), frozenset())
    if not isinstance(value, dict) or not value:
        raise malformed(INVALID_PRINCIPALS)
    anyone, arns, accounts, services = False, set(), set(), set()
    for kind, raw in value.items():
        items = _strings(raw, INVALID_PRINCIPALS)
        if kind == "AWS":
            for p in items:
                if p == "*":
                    anyone = True
                elif _ACCOUNT.match(p):
                    accounts.add(p)
                elif (m := _IAM_PRINCIPAL.match(p)) is not None:
                    if m.group(2) == "root":
                        accounts.add(m.group(1))
                    else:
                        arns.add(p)
                elif _ASSUMED_ROLE.match(p):
                    arns.add(p)
                else:
                    raise malformed(INVALID_PRINCIPALS)
        elif kind == "Service":
            for p in items:
                if not _SERVICE.match(p):
                    raise malformed(INVALID_PRINCIPALS)
                services.add(p)
        else:
            raise malformed(INVALID_PRINCIPALS)
    return Principals(anyone, frozenset(arns), frozenset(accounts), frozenset(services))


def _strings(raw: Any, message: str = MALFORMED) -> list[str]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise malformed(message)
    return items


def _actions(raw: Any) -> frozenset[str]:
    """The KMS actions (lowercase) the patterns name; other services' actions name none."""
    matched: set[str] = set()
    for pattern in _strings(raw):
        if pattern == "*":
            return ALL_ACTIONS
        service, sep, name = pattern.partition(":")
        if not sep or not service or not name:
            raise malformed(f"Invalid action: {pattern}")
        if service.lower() != "kms":
            continue
        if "*" in name or "?" in name:
            rx = glob(name, ignore_case=True)
            matched.update(a for a in ALL_ACTIONS if rx.match(a))
        elif name.lower() in ALL_ACTIONS:
            matched.add(name.lower())
        else:
            raise malformed(f"Policy contains an unknown action: {pattern}")
    return frozenset(matched)


@dataclass(frozen=True, slots=True)
class Resources:
    anything: bool
    patterns: tuple[str, ...]

    def match(self, resource: str, r: Request) -> bool:
        if self.anything:
            return True
        for raw in self.patterns:
            p = substitute(raw, r.context) if "${" in raw else raw
            if p is not None and glob_cached(p, False).match(resource):
                return True
        return False


def _resources(raw: Any) -> Resources:
    items = _strings(raw)
    return Resources("*" in items, tuple(items))


# -- conditions -----------------------------------------------------------------------------
# -- statements and documents ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Statement:
    sid: str
    allow: bool
    principals: Principals | None  # None: an identity policy's statement (its principal)
    not_principal: bool
    actions: frozenset[str]  # lowercase KMS actions
    not_action: bool
    resources: Resources | None  # None: no Resource element (the statement is ineffective)
    not_resource: bool
    conditions: tuple[Condition, ...]

    def acts_on(self, action: str) -> bool:
        return (action in self.actions) != self.not_action

    def applies(self, r: Request) -> Outcome:
        """Whether this statement (already known to name the action) speaks to ``r``: the
        principal outcome it matched, or NONE."""
        if self.resources is None or self.resources.match(r.resource, r) == self.not_resource:
            return Outcome.NONE
        if self.principals is None:
            who = Outcome.ALLOW
        else:
            who = self.principals.match(r)
            if self.not_principal:
                who = Outcome.NONE if who is not Outcome.NONE else Outcome.ALLOW
            if who is Outcome.NONE:
                return Outcome.NONE
        ctx = r.context
        for c in self.conditions:
            if not c.holds(ctx):
                return Outcome.NONE
        return who


MEMO_SIZE = 512  # outcomes kept per compiled policy


@dataclass(frozen=True, slots=True)
class Policy:
    """A compiled document. ``by_action`` holds, per lowercase action, the statements that
    name it and the request-context keys they read; ``memo`` keeps recent outcomes by
    everything an outcome depends on (action, resource, principal, those keys' values),
    so the steady stream of alike requests costs one lookup per policy."""

    id: str
    statements: tuple[Statement, ...]
    principals: tuple[str, ...]  # every IAM principal ARN named (for existence checks)
    by_action: dict[str, tuple[tuple[Statement, ...], tuple[str, ...]]]
    memo: dict[tuple[Any, ...], Outcome] = field(default_factory=dict, compare=False)

    def evaluate(self, r: Request) -> Outcome:
        """DENY if a Deny statement applies; else the strongest Allow; else NONE."""
        action = r.action.lower()
        entry = self.by_action.get(action)
        if entry is None:
            return Outcome.NONE
        statements, keys = entry
        memo_key = (action, r.resource, r.principal_arn, r.account, r.principal_type,
                    *map(r.context.values, keys))
        got = self.memo.get(memo_key)
        if got is None:
            got = _decide(statements, r)
            if len(self.memo) >= MEMO_SIZE:
                self.memo.clear()
            self.memo[memo_key] = got
        return got


def _decide(statements: tuple[Statement, ...], r: Request) -> Outcome:
    best = Outcome.NONE
    for s in statements:
        got = s.applies(r)
        if got is Outcome.NONE:
            continue
        if not s.allow:
            return Outcome.DENY
        if got is Outcome.ALLOW or best is Outcome.NONE:
            best = got
    return best


def _reads(s: Statement) -> set[str]:
    """The request-context keys a statement's outcome can depend on."""
    keys = {c.key for c in s.conditions}
    texts = [p for c in s.conditions for p in c.patterns]
    if s.resources is not None:
        texts.extend(s.resources.patterns)
    for t in texts:
        for m in VARIABLE.finditer(t):
            name = m.group(1).partition(",")[0].strip().lower()
            if name not in ("*", "?", "$"):
                keys.add(name)
    return keys


def _compile(pid: str, statements: tuple[Statement, ...], named: list[str]) -> Policy:
    index: dict[str, tuple[tuple[Statement, ...], tuple[str, ...]]] = {}
    for a in ALL_ACTIONS:
        chosen = tuple(s for s in statements if s.acts_on(a))
        if chosen:
            index[a] = (chosen, tuple(sorted(set().union(*map(_reads, chosen)))))
    return Policy(pid, statements, tuple(dict.fromkeys(named)), index)


_TOP = {"Version", "Id", "Statement"}
_STATEMENT = {"Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction", "Resource",
              "NotResource", "Condition"}


def _statement(raw: Any, resource_policy: bool, named: list[str]) -> Statement:
    if not isinstance(raw, dict) or set(raw) - _STATEMENT:
        raise malformed()
    sid = raw.get("Sid", "")
    effect = raw.get("Effect")
    if not isinstance(sid, str) or effect not in ("Allow", "Deny"):
        raise malformed()
    if ("Action" in raw) == ("NotAction" in raw) and "Action" in raw:
        raise malformed()
    if "Resource" in raw and "NotResource" in raw:
        raise malformed()
    principals: Principals | None = None
    not_principal = False
    if resource_policy:
        if "Principal" not in raw and "NotPrincipal" not in raw:
            raise malformed(NO_PRINCIPAL)
        if "Principal" in raw and "NotPrincipal" in raw:
            raise malformed(INVALID_PRINCIPALS)
        not_principal = "NotPrincipal" in raw
        value = raw["NotPrincipal" if not_principal else "Principal"]
        principals = _principals(value)
        if isinstance(value, dict):
            named.extend(p for p in _strings(value.get("AWS", "*")) if p.startswith("arn:"))
    elif "Principal" in raw or "NotPrincipal" in raw:
        raise malformed("Identity policies do not name a Principal.")
    # A key policy statement without Action or Resource is ineffective, not an error (as
    # KMS answers it); IAM refuses such an identity policy, and so does this node: a Deny
    # that silently never applied would leave its Allows standing.
    not_action = "NotAction" in raw
    if not resource_policy and not_action == ("Action" in raw):
        raise malformed("Policy statement must contain actions.")
    actions = _actions(raw["NotAction" if not_action else "Action"]) \
        if ("Action" in raw or not_action) else frozenset()
    not_resource = "NotResource" in raw
    if not resource_policy and not_resource == ("Resource" in raw):
        raise malformed("Policy statement must contain resources.")
    resources = None
    if "Resource" in raw or not_resource:
        resources = _resources(raw["NotResource" if not_resource else "Resource"])
    compiled = conditions(raw["Condition"]) if "Condition" in raw else ()
    if not ("Action" in raw or not_action):  # a missing Action is ineffective, not an error
        not_action, actions = False, frozenset()
    return Statement(sid, effect == "Allow", principals, not_principal, actions, not_action,
                     resources, not_resource, compiled)


def parse(text: str, *, resource_policy: bool = True) -> Policy:
    """Validate and compile a policy document (MalformedPolicyDocumentException if not).
    Compiled once per text: repeated calls with the same text are dictionary lookups."""
    return _compiled(text, resource_policy)  # an LRU hit hashes the (cached) str hash


@functools.lru_cache(maxsize=1024)
def _compiled(text: str, resource_policy: bool) -> Policy:  # positional: the cache's fast path
    if any(not (c in "\t\n\r" or " " <= c <= "\u00ff") for c in text):
        raise malformed("The policy contains characters that are not allowed.")
    try:
        doc = json.loads(text)
    except ValueError:
        raise malformed(NOT_JSON) from None
    if not isinstance(doc, dict) or set(doc) - _TOP or "Statement" not in doc:
        raise malformed()
    version = doc.get("Version", "2008-10-17")
    if version not in ("2012-10-17", "2008-10-17"):
        raise malformed()
    pid = doc.get("Id", "")
    if not isinstance(pid, str):
        raise malformed()
    raw = doc["Statement"]
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise malformed()
    named: list[str] = []
    statements = tuple(_statement(s, resource_policy, named) for s in items)
    return _compile(pid, statements, named)


def aws_text(doc: Any, indent: int = 0) -> str:
    """A document as KMS prints policies it writes (Jackson's pretty printer: ``" : "``,
    arrays inline, objects expanded), so GetKeyPolicy answers what AWS answers."""
    pad = " " * indent
    if isinstance(doc, dict):
        inner = ",\n".join(f"{pad}  {json.dumps(k)} : {aws_text(v, indent + 2)}"
                           for k, v in doc.items())
        return "{\n" + inner + "\n" + pad + "}"
    if isinstance(doc, list):
        return "[ " + ", ".join(aws_text(v, indent) for v in doc) + " ]"
    return json.dumps(doc)


def evaluate_all(policies: Iterable[Policy], r: Request) -> Outcome:
    """The identity side: DENY if any denies, ALLOW if any allows, else NONE."""
    best = Outcome.NONE
    for p in policies:
        got = p.evaluate(r)
        if got is Outcome.DENY:
            return got
        if got is not Outcome.NONE:
            best = Outcome.ALLOW
    return best
