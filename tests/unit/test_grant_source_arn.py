"""The SourceArn grant constraint and service-principal grantees in kms.domain.grants:
pure rules, no service."""

from __future__ import annotations

import pytest

from kms.domain import grants as g
from kms.domain.errors import ValidationException

GROUP = "arn:aws:logs:us-east-1:111122223333:log-group:payments"
LOGS = "logs.amazonaws.com"


def grant(source_arn: str = GROUP, constraint_type: str = "", pairs: g.Pairs = ()) -> g.Grant:
    return g.Grant("k", "0" * 64, LOGS, LOGS, ("Encrypt", "DescribeKey", "RetireGrant",
                                                "CreateGrant"),
                   constraint_type, pairs, "", "111122223333", 0, LOGS, LOGS, source_arn)


@pytest.mark.parametrize("action, source_arn, holds", [
    ("Encrypt", GROUP, True),
    ("Encrypt", GROUP.upper(), False),  # exact, case-sensitive
    ("Encrypt", "", False),  # a call with no aws:SourceArn never matches
    ("DescribeKey", GROUP + "x", False),
    ("RetireGrant", "", True),  # the one operation SourceArn does not apply to
])
def test_source_arn_holds_only_for_the_grants_resource(action: str, source_arn: str,
                                                       holds: bool) -> None:
    assert g.constraint_holds(grant(), action, None, source_arn) is holds


def test_source_arn_sits_beside_a_context_constraint() -> None:
    both = grant(constraint_type=g.SUBSET, pairs=(("app", "pay"),))
    assert g.constraint_holds(both, "Encrypt", {"App": "pay"}, GROUP)
    assert not g.constraint_holds(both, "Encrypt", {"app": "other"}, GROUP)
    assert not g.constraint_holds(both, "Encrypt", {"app": "pay"}, "")
    assert g.constraint_of({"SourceArn": GROUP, g.SUBSET: {"app": "pay"}}) == (
        g.SUBSET, (("app", "pay"),))
    assert g.source_arn_of({"SourceArn": GROUP}) == GROUP and g.source_arn_of(None) == ""


def test_a_grant_passed_on_keeps_its_source_arn() -> None:
    assert g.at_least_as_strict(grant(), "", (), GROUP)
    assert not g.at_least_as_strict(grant(), "", (), "")
    assert not g.at_least_as_strict(grant(), "", (), GROUP + "x")
    assert g.at_least_as_strict(grant(source_arn=""), "", (), "")


@pytest.mark.parametrize("args, fragment", [
    (("", "", "", "", ""), "either GranteePrincipal or GranteeServicePrincipal."),
    (("arn:aws:iam::111122223333:user/a", LOGS, "", LOGS, GROUP), "but not both"),
    (("", LOGS, "", LOGS, ""), "SourceArn grant constraint"),
    (("", LOGS, "", "", GROUP), "RetiringPrincipal or a RetiringServicePrincipal"),
    (("x", "", "x", LOGS, ""), "RetiringPrincipal or RetiringServicePrincipal, but not both"),
])
def test_grantee_rules(args: tuple[str, str, str, str, str], fragment: str) -> None:
    with pytest.raises(ValidationException) as info:
        g.check_grantees(*args)
    assert fragment in info.value.message
    g.check_grantees("", LOGS, "", LOGS, GROUP)  # the complete form is accepted
