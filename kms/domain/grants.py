"""Grants: the Grant record, its events, the rules CreateGrant checks, and the fold.

Rules: pure (no I/O, clock or randomness: grant ids and creation times arrive from the
service). Grants live on their own stream per key (``grants/<key id>``), never on the key
stream, so creating or ending one never moves what a cryptographic call pinned. Grants are
per region: the stream is never shipped to peers. A grantee is an IAM principal or an AWS
service principal; the SourceArn constraint binds a grant to the resource a call is made
for (aws:SourceArn), beside an encryption context constraint or alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kms.domain import events as ev
from kms.domain.errors import LimitExceededException, ValidationException
from kms.domain.specs import (
    ENCAPSULATE_DECAPSULATE,
    ENCRYPT_DECRYPT,
    GENERATE_VERIFY_MAC,
    KEY_AGREEMENT,
    SIGN_VERIFY,
    SYMMETRIC,
)

GRANTS_PREFIX = "grants/"
MAX_GRANTS_PER_KEY = 50_000
MAX_CONSTRAINT_PAIRS = 8
MAX_CONSTRAINT_VALUE = 384
EQUALS = "EncryptionContextEquals"
SUBSET = "EncryptionContextSubset"
SOURCE_ARN = "SourceArn"

# Operations every key takes in a grant, whatever its type.
_ANY_KEY = ("CreateGrant", "RetireGrant", "DescribeKey")
_SYMMETRIC_OPS = (
    "Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom", "ReEncryptTo", "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
)
# The operations whose requests carry an encryption context (on symmetric keys): the only
# ones a constraint applies to. CreateGrant/RetireGrant/DescribeKey may sit beside a
# constraint, which does not apply to them.
CONTEXT_OPERATIONS = frozenset(_SYMMETRIC_OPS)
# Which request member holds the encryption context a grant's constraint is checked on.
CONTEXT_MEMBER = {
    "Encrypt": "EncryptionContext", "Decrypt": "EncryptionContext",
    "GenerateDataKey": "EncryptionContext", "GenerateDataKeyWithoutPlaintext":
        "EncryptionContext", "GenerateDataKeyPair": "EncryptionContext",
    "GenerateDataKeyPairWithoutPlaintext": "EncryptionContext",
    "ReEncryptFrom": "SourceEncryptionContext", "ReEncryptTo": "DestinationEncryptionContext",
}


def grants_stream(key_id: str) -> str:
    return f"{GRANTS_PREFIX}{key_id}"


def grantable(key_spec: str, key_usage: str) -> frozenset[str]:
    """The GrantOperation values a key of this spec and usage accepts in a grant."""
    if key_usage == ENCRYPT_DECRYPT and key_spec == SYMMETRIC:
        ops: tuple[str, ...] = _SYMMETRIC_OPS
    elif key_usage == ENCRYPT_DECRYPT:  # RSA (and SM2): no data keys
        ops = ("Decrypt", "Encrypt", "ReEncryptFrom", "ReEncryptTo", "GetPublicKey")
    elif key_usage == SIGN_VERIFY:
        ops = ("Sign", "Verify", "GetPublicKey")
    elif key_usage == GENERATE_VERIFY_MAC:
        ops = ("GenerateMac", "VerifyMac")
    elif key_usage == KEY_AGREEMENT:
        ops = ("DeriveSharedSecret", "GetPublicKey")
    elif key_usage == ENCAPSULATE_DECAPSULATE:
        ops = ("Encapsulate", "Decapsulate", "GetPublicKey")
    else:
        ops = ()
    return frozenset((*ops, *_ANY_KEY))


# -- the record and its events ----------------------------------------------------------
Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class GrantCreated(ev.Event):
    """CreateGrant. ``constraint_type`` is "" (none), EQUALS or SUBSET; ``constraint`` its
    pairs, sorted, exactly as given (keys compare case-insensitively when applied). A grant
    to an AWS service principal has it in both ``grantee_principal`` (as AWS lists it) and
    ``grantee_service_principal``; likewise a retiring service principal in both.
    ``source_arn`` is the SourceArn constraint ("" for none)."""

    key_id: str
    grant_id: str
    grantee_principal: str
    retiring_principal: str
    operations: tuple[str, ...]
    constraint_type: str
    constraint: Pairs
    name: str
    issuing_account: str
    grantee_service_principal: str = ""
    retiring_service_principal: str = ""
    source_arn: str = ""


@dataclass(frozen=True, slots=True)
class GrantRetired(ev.Event):
    key_id: str
    grant_id: str
    retired_by: str  # the caller's ARN


@dataclass(frozen=True, slots=True)
class GrantRevoked(ev.Event):
    key_id: str
    grant_id: str


ev.register(GrantCreated, GrantRetired, GrantRevoked)


@dataclass(frozen=True, slots=True)
class Grant:
    key_id: str
    grant_id: str
    grantee_principal: str
    retiring_principal: str
    operations: tuple[str, ...]
    constraint_type: str
    constraint: Pairs
    name: str
    issuing_account: str
    created_ms: int
    grantee_service_principal: str = ""
    retiring_service_principal: str = ""
    source_arn: str = ""

    def same_request(self, other: GrantCreated) -> bool:
        """Whether a CreateGrant with ``other``'s fields repeats this grant (Name
        idempotency): every field but the id and the issuing time."""
        return (self.grantee_principal, self.retiring_principal, frozenset(self.operations),
                self.constraint_type, self.constraint, self.name,
                self.grantee_service_principal, self.retiring_service_principal,
                self.source_arn) == (
            other.grantee_principal, other.retiring_principal, frozenset(other.operations),
            other.constraint_type, other.constraint, other.name,
            other.grantee_service_principal, other.retiring_service_principal,
            other.source_arn)


def created(e: GrantCreated, at_ms: int) -> Grant:
    return Grant(e.key_id, e.grant_id, e.grantee_principal, e.retiring_principal,
                 e.operations, e.constraint_type, e.constraint, e.name, e.issuing_account,
                 at_ms, e.grantee_service_principal, e.retiring_service_principal,
                 e.source_arn)


# -- CreateGrant's rules ----------------------------------------------------------------
def constraint_of(constraints: Mapping[str, Any] | None) -> tuple[str, Pairs]:
    """(type, pairs) of a request's encryption context constraint; an empty map counts as
    none given (SourceArn, which may sit beside one, is ``source_arn_of``'s)."""
    if not constraints:
        return "", ()
    given = [(name, pairs) for name, pairs in constraints.items()
             if pairs and name != SOURCE_ARN]
    if len(given) > 1:
        raise ValidationException(
            "Only one of EncryptionContextEquals or EncryptionContextSubset can be specified "
            "in the grant constraints."
        )
    if not given:
        return "", ()
    name, pairs = given[0]
    if len(pairs) > MAX_CONSTRAINT_PAIRS:
        raise ValidationException(
            f"The {name} grant constraint can have at most {MAX_CONSTRAINT_PAIRS} "
            "encryption context pairs."
        )
    for value in pairs.values():
        if len(value) > MAX_CONSTRAINT_VALUE:
            raise ValidationException(
                f"An encryption context value in the {name} grant constraint exceeds "
                f"{MAX_CONSTRAINT_VALUE} characters."
            )
    return name, tuple(sorted(pairs.items()))


def source_arn_of(constraints: Mapping[str, Any] | None) -> str:
    """A request's SourceArn constraint ("" when none)."""
    value = (constraints or {}).get(SOURCE_ARN, "")
    return value if isinstance(value, str) else ""


def check_grantees(grantee: str, grantee_service: str, retiring: str, retiring_service: str,
                   source_arn: str) -> None:
    """Exactly one grantee, at most one retiring principal; a grant to a service principal
    names its SourceArn constraint and who may retire it (AWS's rules, in the model's
    words: AWS's own messages for these are not recorded)."""
    if grantee and grantee_service:
        raise ValidationException(
            "You must specify either GranteePrincipal or GranteeServicePrincipal, but not both."
        )
    if not grantee and not grantee_service:
        raise ValidationException(
            "You must specify either GranteePrincipal or GranteeServicePrincipal."
        )
    if retiring and retiring_service:
        raise ValidationException(
            "You can specify either RetiringPrincipal or RetiringServicePrincipal, but not both."
        )
    if grantee_service and not source_arn:
        raise ValidationException(
            "When you specify a GranteeServicePrincipal, you must also specify a SourceArn "
            "grant constraint."
        )
    if grantee_service and not (retiring or retiring_service):
        raise ValidationException(
            "When you specify a GranteeServicePrincipal, you must also specify either a "
            "RetiringPrincipal or a RetiringServicePrincipal."
        )


def check_request(key_arn: str, key_spec: str, key_usage: str, operations: tuple[str, ...],
                  constraint_type: str) -> None:
    """The operations fit the key, are not CreateGrant alone, and a constraint is given
    only for operations that take an encryption context."""
    if set(operations) == {"CreateGrant"}:
        raise ValidationException("Grants must not contain only the CreateGrant operation.")
    allowed = grantable(key_spec, key_usage)
    bad = [op for op in dict.fromkeys(operations) if op not in allowed]
    if bad:
        raise ValidationException(
            f"Grant operations {', '.join(bad)} are not valid for key {key_arn} with key spec "
            f"{key_spec} and key usage {key_usage}."
        )
    if constraint_type and not (set(operations) & CONTEXT_OPERATIONS):
        raise ValidationException(
            "Grant constraints apply only to operations that take an encryption context; "
            f"the operations of this grant on key {key_arn} do not."
        )


def check_quota(live_on_key: int) -> None:
    if live_on_key >= MAX_GRANTS_PER_KEY:
        raise LimitExceededException(
            f"The key has reached the maximum of {MAX_GRANTS_PER_KEY} grants."
        )


# -- applying a grant to a call -----------------------------------------------------------
def _folded(pairs: Mapping[str, str] | Pairs) -> dict[str, str]:
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    return {k.lower(): v for k, v in items}


def constraint_holds(grant: Grant, action: str, context: Mapping[str, str] | None,
                     source_arn: str = "") -> bool:
    """Whether ``grant``'s constraints allow ``action`` for this call. An encryption context
    constraint: keys case-insensitive, values case-sensitive; operations without a context
    are unaffected. SourceArn: the call's aws:SourceArn (``source_arn``) is exactly the
    grant's, for every operation but RetireGrant (a call with none never matches)."""
    if grant.source_arn and action != "RetireGrant" and source_arn != grant.source_arn:
        return False
    if not grant.constraint_type or action not in CONTEXT_OPERATIONS:
        return True
    asked = _folded(context or {})
    wanted = _folded(grant.constraint)
    if grant.constraint_type == EQUALS:
        return asked == wanted
    return all(asked.get(k) == v for k, v in wanted.items())


def at_least_as_strict(parent: Grant, child_type: str, child: Pairs,
                       child_source_arn: str = "") -> bool:
    """A grant with CreateGrant and a constraint creates only grants whose constraint is
    equally strict or stricter (a SourceArn constraint: the same one)."""
    if parent.source_arn and child_source_arn != parent.source_arn:
        return False
    if not parent.constraint_type:
        return True
    if not child_type:
        return False
    mine, theirs = _folded(parent.constraint), _folded(child)
    if parent.constraint_type == EQUALS:
        return child_type == EQUALS and mine == theirs
    return all(theirs.get(k) == v for k, v in mine.items())


def principal_forms(principal_arn: str, account: str) -> tuple[str, ...]:
    """The grantee names a caller answers to: its ARN; for an assumed-role session the
    role (by account and name, whatever the role's path); and, when ``account`` is given
    (the service passes it for the account's root only), its account."""
    forms = [principal_arn]
    own = grantee_form(principal_arn)  # a role's own ARN, whatever its path
    if own != principal_arn and not own.startswith("account:"):
        forms.append(own)
    if principal_arn.startswith("arn:aws:sts::") and ":assumed-role/" in principal_arn:
        acct = principal_arn.split(":")[4]
        role = principal_arn.split(":assumed-role/", 1)[1].split("/", 1)[0]
        forms.append(f"role:{acct}:{role}")
    if account:
        forms.append(f"account:{account}")
    return tuple(forms)


def grantee_form(grantee: str) -> str:
    """How a grantee (or retiring principal) is indexed, in ``principal_forms`` terms: an
    account (id or root ARN) as ``account:<id>``, a role by account and name, else the
    ARN itself."""
    if grantee.isdigit() and len(grantee) == 12:
        return f"account:{grantee}"
    if grantee.startswith("arn:aws:iam::"):
        acct, _, rest = grantee[len("arn:aws:iam::"):].partition(":")
        if rest == "root":
            return f"account:{acct}"
        if rest.startswith("role/"):
            return f"role:{acct}:{rest.rsplit('/', 1)[1]}"
    return grantee
