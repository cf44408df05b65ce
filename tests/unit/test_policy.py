"""The policy language (kms.domain.policy): parsing and validation in AWS's words, the
evaluation of statements, principals, actions, resources and every condition operator,
and the compile-once cache. Pure: no node, the request context is a dict."""

from __future__ import annotations

import json
from typing import Any

import botocore.session
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.domain import policy as pol
from kms.domain.errors import MalformedPolicyDocumentException

ACCOUNT = "111122223333"
OTHER = "444455556666"
ROOT = f"arn:aws:iam::{ACCOUNT}:root"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"
KEY = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"


class Ctx:
    def __init__(self, values: dict[str, Any] | None = None) -> None:
        self._v = {k.lower(): (tuple(v) if isinstance(v, list | tuple) else (v,))
                   for k, v in (values or {}).items()}

    def values(self, key: str) -> tuple[str, ...] | None:
        return self._v.get(key)


def req(action: str = "Encrypt", *, principal: str = ALICE, account: str = ACCOUNT,
        ptype: str = "IAMUser", resource: str = KEY, **ctx: Any) -> pol.Request:
    return pol.Request(action, resource, principal, account, ptype,
                       Ctx({k.replace("__", ":").replace("_", "/"): v for k, v in ctx.items()}))


def doc(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(**extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Principal": {"AWS": ALICE}, "Action": "kms:Encrypt",
            "Resource": "*", **extra}


def outcome(text: str, r: pol.Request) -> pol.Outcome:
    return pol.parse(text).evaluate(r)


# -- parsing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("not json", pol.NOT_JSON),  # AWS answers a document that is not JSON with no message
    ("[]", pol.MALFORMED),
    ('{"Version": "2012-10-17"}', pol.MALFORMED),
    (doc({"Effect": "Permit", "Principal": "*", "Action": "kms:*", "Resource": "*"}),
     pol.MALFORMED),
    (doc({"Effect": "Allow", "Action": "kms:*", "Resource": "*"}), pol.NO_PRINCIPAL),
    (doc(allow(Principal={"AWS": "alice"})), pol.INVALID_PRINCIPALS),
    (doc(allow(Principal={"AWS": "arn:aws:iam::1234:user/x"})), pol.INVALID_PRINCIPALS),
    (doc(allow(Principal={"Federated": "cognito-identity.amazonaws.com"})),
     pol.INVALID_PRINCIPALS),
    (doc(allow(Action="kms:Encrypts")), "Policy contains an unknown action: kms:Encrypts"),
    (doc(allow(Action="Encrypt")), "Invalid action: Encrypt"),
    (doc(allow(Condition={"StringSortOf": {"kms:ViaService": "x"}})),
     "Policy contains an unknown condition operator: StringSortOf"),
    (doc(allow(Extra=1)), pol.MALFORMED),
    ('{"Version": "2012-10-17", "Statement": []}', pol.MALFORMED),
    ('{"Statement": [' + json.dumps(allow()) + '], "Version": "1999-01-01"}', pol.MALFORMED),
    (doc(allow()).replace("Encrypt", "Encrypt\u0101"), "The policy contains characters "
     "that are not allowed."),
])
def test_malformed_documents_are_refused_in_aws_words(text: str, message: str) -> None:
    with pytest.raises(MalformedPolicyDocumentException) as info:
        pol.parse(text)
    assert info.value.message == message


def test_a_single_statement_object_and_every_principal_form_parse() -> None:
    text = json.dumps({"Version": "2012-10-17", "Id": "x", "Statement": {
        "Sid": "all", "Effect": "Allow", "Resource": "*", "Action": ["kms:Encrypt"],
        "Principal": {"AWS": [ACCOUNT, ROOT, ALICE, f"arn:aws:iam::{OTHER}:role/r",
                              f"arn:aws:sts::{OTHER}:assumed-role/r/s"],
                      "Service": "s3.amazonaws.com"}}})
    p = pol.parse(text)
    assert p.id == "x" and len(p.statements) == 1
    assert set(p.principals) == {ROOT, ALICE, f"arn:aws:iam::{OTHER}:role/r",
                                 f"arn:aws:sts::{OTHER}:assumed-role/r/s"}


def test_identity_policies_name_no_principal() -> None:
    text = doc({"Effect": "Allow", "Action": "kms:*", "Resource": "*"})
    assert pol.parse(text, resource_policy=False).evaluate(req()) is pol.Outcome.ALLOW
    with pytest.raises(MalformedPolicyDocumentException):
        pol.parse(doc(allow()), resource_policy=False)


def test_a_document_is_compiled_once_per_text() -> None:
    text = doc(allow(Sid="cached"))
    assert pol.parse(text) is pol.parse(text)


def test_the_action_list_is_the_models_with_reencrypt_split() -> None:
    model = botocore.session.get_session().get_service_model("kms")
    expected = (set(model.operation_names) - {"ReEncrypt"}) | {
        "ReEncryptFrom", "ReEncryptTo", "SynchronizeMultiRegionKey"}
    assert set(pol.KMS_ACTIONS) == expected


# -- principals, actions, resources --------------------------------------------------------------
def test_principal_forms_decide_direct_or_account_allows() -> None:
    assert outcome(doc(allow()), req()) is pol.Outcome.ALLOW
    account = doc(allow(Principal={"AWS": ROOT}))
    assert outcome(account, req()) is pol.Outcome.ALLOW_ACCOUNT
    assert outcome(doc(allow(Principal={"AWS": ACCOUNT})), req()) is pol.Outcome.ALLOW_ACCOUNT
    assert outcome(account, req(principal=ROOT, ptype="Root")) is pol.Outcome.ALLOW
    assert outcome(doc(allow(Principal="*")), req(account=OTHER)) is pol.Outcome.ALLOW
    assert outcome(account, req(account=OTHER,
                                principal=f"arn:aws:iam::{OTHER}:user/x")) is pol.Outcome.NONE


def test_a_role_names_its_sessions() -> None:
    role = f"arn:aws:iam::{ACCOUNT}:role/app"
    session = f"arn:aws:sts::{ACCOUNT}:assumed-role/app/run-1"
    r = req(principal=session, ptype="AssumedRole")
    assert outcome(doc(allow(Principal={"AWS": role})), r) is pol.Outcome.ALLOW
    assert outcome(doc(allow(Principal={"AWS": session})), r) is pol.Outcome.ALLOW
    other = f"arn:aws:sts::{ACCOUNT}:assumed-role/app/run-2"
    assert outcome(doc(allow(Principal={"AWS": other})), r) is pol.Outcome.NONE


def test_not_principal_allows_everyone_else() -> None:
    text = doc({"Effect": "Deny", "NotPrincipal": {"AWS": ALICE}, "Action": "kms:*",
                "Resource": "*"})
    assert outcome(text, req()) is pol.Outcome.NONE
    assert outcome(text, req(principal=f"arn:aws:iam::{ACCOUNT}:user/bob")) is pol.Outcome.DENY


@pytest.mark.parametrize("pattern, action, hit", [
    ("kms:*", "ScheduleKeyDeletion", True), ("*", "Encrypt", True),
    ("kms:Get*", "GetKeyPolicy", True), ("kms:Get*", "Encrypt", False),
    ("KMS:encrypt", "Encrypt", True), ("kms:ReEncrypt*", "ReEncryptFrom", True),
    ("kms:GenerateDataKey*", "GenerateDataKeyPairWithoutPlaintext", True),
    ("kms:?ncrypt", "Encrypt", True), ("s3:*", "Encrypt", False),
])
def test_action_patterns(pattern: str, action: str, hit: bool) -> None:
    got = outcome(doc(allow(Action=pattern)), req(action))
    assert (got is pol.Outcome.ALLOW) is hit


def test_not_action_and_not_resource() -> None:
    no_action = {k: v for k, v in allow(NotAction="kms:Decrypt").items() if k != "Action"}
    assert outcome(doc(no_action), req("Decrypt")) is pol.Outcome.NONE
    assert outcome(doc(no_action), req("Encrypt")) is pol.Outcome.ALLOW
    other_key = KEY.replace("1234abcd", "99999999")
    no_res = {k: v for k, v in allow(NotResource=other_key).items() if k != "Resource"}
    assert outcome(doc(no_res), req()) is pol.Outcome.ALLOW
    assert outcome(doc(no_res), req(resource=other_key)) is pol.Outcome.NONE
    wild = doc(allow(Resource=f"arn:aws:kms:*:{ACCOUNT}:key/*"))
    assert outcome(wild, req()) is pol.Outcome.ALLOW
    assert outcome(wild, req(resource=KEY.replace(ACCOUNT, OTHER))) is pol.Outcome.NONE


def test_a_statement_without_resource_is_ineffective_not_an_error() -> None:
    text = doc({k: v for k, v in allow().items() if k != "Resource"})
    assert outcome(text, req()) is pol.Outcome.NONE


def test_deny_wins_over_allow() -> None:
    text = doc(allow(), {"Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt",
                         "Resource": "*"})
    assert outcome(text, req()) is pol.Outcome.DENY


# -- conditions -----------------------------------------------------------------------------------
def cond(block: dict[str, Any], **ctx: Any) -> bool:
    return outcome(doc(allow(Condition=block)), req(**ctx)) is pol.Outcome.ALLOW


EC = "kms__EncryptionContext__app"


@pytest.mark.parametrize("block, ctx, hit", [
    ({"StringEquals": {"kms:EncryptionContext:app": "pay"}}, {EC: "pay"}, True),
    ({"StringEquals": {"kms:EncryptionContext:app": "pay"}}, {EC: "Pay"}, False),
    ({"StringEquals": {"kms:EncryptionContext:app": "pay"}}, {}, False),
    ({"StringEquals": {"kms:EncryptionContext:app": ["a", "pay"]}}, {EC: "pay"}, True),
    ({"StringNotEquals": {"kms:EncryptionContext:app": "pay"}}, {EC: "x"}, True),
    ({"StringNotEquals": {"kms:EncryptionContext:app": "pay"}}, {}, True),
    ({"StringEqualsIgnoreCase": {"kms:EncryptionContext:app": "PAY"}}, {EC: "pay"}, True),
    ({"StringNotEqualsIgnoreCase": {"kms:EncryptionContext:app": "PAY"}}, {EC: "pay"}, False),
    ({"StringLike": {"kms:ViaService": "s3.*.amazonaws.com"}},
     {"kms__ViaService": "s3.us-east-1.amazonaws.com"}, True),
    ({"StringNotLike": {"kms:ViaService": "s3.*"}}, {"kms__ViaService": "ec2.x"}, True),
    ({"StringEqualsIfExists": {"kms:ViaService": "s3"}}, {}, True),
    ({"StringEqualsIfExists": {"kms:ViaService": "s3"}}, {"kms__ViaService": "ec2"}, False),
    ({"NumericLessThanEquals": {"kms:RotationPeriodInDays": "180"}},
     {"kms__RotationPeriodInDays": "90"}, True),
    ({"NumericGreaterThan": {"kms:RotationPeriodInDays": 180}},
     {"kms__RotationPeriodInDays": "90"}, False),
    ({"NumericEquals": {"kms:ScheduleKeyDeletionPendingWindowInDays": "30"}},
     {"kms__ScheduleKeyDeletionPendingWindowInDays": "30"}, True),
    ({"NumericNotEquals": {"kms:ScheduleKeyDeletionPendingWindowInDays": "30"}},
     {"kms__ScheduleKeyDeletionPendingWindowInDays": "7"}, True),
    ({"DateLessThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"}},
     {"aws__CurrentTime": "2026-12-02T01:00:00Z"}, True),
    ({"DateGreaterThan": {"aws:EpochTime": "2030-01-01T00:00:00Z"}},
     {"aws__EpochTime": "1764637200"}, False),
    ({"Bool": {"aws:SecureTransport": "true"}}, {"aws__SecureTransport": "false"}, False),
    ({"Bool": {"kms:BypassPolicyLockoutSafetyCheck": True}},
     {"kms__BypassPolicyLockoutSafetyCheck": "true"}, True),
    ({"Null": {"kms:ViaService": "true"}}, {}, True),
    ({"Null": {"kms:ViaService": "false"}}, {}, False),
    ({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {"aws__SourceIp": "10.1.2.3"}, True),
    ({"IpAddress": {"aws:SourceIp": ["192.168.0.0/16", "127.0.0.1/32"]}},
     {"aws__SourceIp": "127.0.0.1"}, True),
    ({"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {"aws__SourceIp": "10.1.2.3"}, False),
    ({"IpAddress": {"aws:SourceIp": "2001:db8::/32"}}, {"aws__SourceIp": "2001:db8::1"}, True),
    ({"ArnLike": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:user/*"}},
     {"aws__PrincipalArn": ALICE}, True),
    ({"ArnEquals": {"aws:PrincipalArn": ALICE}}, {"aws__PrincipalArn": ALICE}, True),
    ({"ArnNotLike": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:role/*"}},
     {"aws__PrincipalArn": ALICE}, True),
    ({"ArnNotEquals": {"aws:PrincipalArn": ALICE}}, {"aws__PrincipalArn": ALICE}, False),
    ({"BinaryEquals": {"kms:EncryptionContext:app": "cGF5"}}, {EC: "pay"}, True),
    ({"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": ["app", "x"]}},
     {"kms__EncryptionContextKeys": ["app", "team"]}, True),
    ({"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": "x"}}, {}, False),
    ({"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["app", "team"]}},
     {"kms__EncryptionContextKeys": ["app", "team"]}, True),
    ({"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["app"]}},
     {"kms__EncryptionContextKeys": ["app", "team"]}, False),
    ({"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["app"]}}, {}, True),
    ({"ForAnyValue:StringLike": {"kms:ResourceAliases": "alias/pay-*"}},
     {"kms__ResourceAliases": ["alias/x", "alias/pay-1"]}, True),
    ({"StringEquals": {"aws:PrincipalTag/team": "${aws:PrincipalTag/owner}"}},
     {"aws__PrincipalTag_team": "pay", "aws__PrincipalTag_owner": "pay"}, True),
    ({"StringLike": {"kms:EncryptionContext:app": "${aws:username}-*"}},
     {EC: "alice-data", "aws__username": "alice"}, True),
    ({"StringLike": {"kms:EncryptionContext:app": "${aws:username}-*"}}, {EC: "x-data"}, False),
])
def test_condition_operators(block: dict[str, Any], ctx: dict[str, Any], hit: bool) -> None:
    assert cond(block, **ctx) is hit


def test_keys_and_operators_and_values_or() -> None:
    block = {"StringEquals": {"kms:EncryptionContext:app": ["a", "b"],
                              "kms:CallerAccount": ACCOUNT},
             "Bool": {"aws:SecureTransport": "true"}}
    base = {EC: "b", "kms__CallerAccount": ACCOUNT, "aws__SecureTransport": "true"}
    assert cond(block, **base)
    assert not cond(block, **(base | {"aws__SecureTransport": "false"}))
    assert not cond(block, **(base | {"kms__CallerAccount": OTHER}))


def test_condition_key_names_are_case_insensitive() -> None:
    block = {"StringEquals": {"KMS:ENCRYPTIONCONTEXT:App": "pay"}}
    assert cond(block, **{EC: "pay"})


# -- properties -----------------------------------------------------------------------------------
actions = st.sampled_from(pol.KMS_ACTIONS)


@given(actions, actions)
def test_an_explicit_deny_always_wins(allowed: str, denied: str) -> None:
    text = doc({"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"},
               {"Effect": "Deny", "Principal": "*", "Action": f"kms:{denied}",
                "Resource": "*"})
    got = outcome(text, req(allowed))
    assert got is (pol.Outcome.DENY if allowed == denied else pol.Outcome.ALLOW)


@given(st.text(max_size=200))
def test_any_text_parses_or_raises_the_one_declared_error(text: str) -> None:
    try:
        pol.parse(text)
    except MalformedPolicyDocumentException:
        pass


@given(st.recursive(st.none() | st.booleans() | st.text(max_size=8) | st.integers(),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(
                        st.sampled_from(["Effect", "Principal", "Action", "Resource",
                                         "Condition", "AWS", "Statement", "Version",
                                         "StringEquals", "Sid"]), c, max_size=4),
                    max_leaves=12))
def test_any_json_shape_parses_or_raises_the_one_declared_error(shape: Any) -> None:
    try:
        pol.parse(json.dumps({"Version": "2012-10-17", "Statement": shape}))
    except MalformedPolicyDocumentException:
        pass


MEMO_POLICY = doc(
    allow(Condition={"StringEquals": {"kms:EncryptionContext:app": "pay"},
                     "IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}),
    {"Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*",
     "Condition": {"StringEquals": {"aws:PrincipalTag/team": "${aws:username}"}}})


@given(st.lists(st.tuples(st.sampled_from(["pay", "web", None]),
                          st.sampled_from(["10.1.1.1", "192.168.1.1", None]),
                          st.sampled_from(["alice", "bob", None]),
                          st.sampled_from([ALICE, f"arn:aws:iam::{ACCOUNT}:user/bob"])),
                min_size=1, max_size=12))
def test_remembered_outcomes_are_the_outcomes(requests: list[tuple[Any, ...]]) -> None:
    compiled = pol.parse(MEMO_POLICY)
    for app, ip, tag, who in requests:
        values = {"kms:EncryptionContext:app": app, "aws:SourceIp": ip,
                  "aws:PrincipalTag/team": tag, "aws:username": who.rsplit("/", 1)[1]}
        r = pol.Request("Encrypt", KEY, who, ACCOUNT, "IAMUser",
                        Ctx({k: v for k, v in values.items() if v is not None}))
        fresh = pol._decide(compiled.by_action["encrypt"][0], r)
        assert compiled.evaluate(r) is fresh
        assert compiled.evaluate(r) is fresh


def test_an_unreadable_identity_policy_denies_everything() -> None:
    """A Deny written with a typo must not leave the Allow beside it standing (fail closed)."""
    from kms.service import authz
    from kms.service.core import Call, Caller

    allow_all = doc({"Effect": "Allow", "Action": "kms:*", "Resource": "*"})
    typo = doc({"Effect": "Deny", "Action": "kms:ListKey", "Resource": "*"})
    caller = Caller(ALICE, ACCOUNT, "AK", principal_type="IAMUser",
                    identity_policies=(allow_all, typo))

    why = authz.decide(Call("r", "ListKeys", caller, 0, {}), "ListKeys", None, account=ACCOUNT)

    assert why == authz.EXPLICIT_DENY_IDENTITY


def test_an_identity_policy_statement_must_name_actions_and_resources() -> None:
    # IAM refuses these; a Deny that silently never applied would leave its Allows standing.
    for missing in ("Action", "Resource"):
        statement = {"Effect": "Deny", "Action": "kms:CreateKey", "Resource": "*"}
        del statement[missing]
        text = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
        with pytest.raises(MalformedPolicyDocumentException) as refused:
            pol.parse(text, resource_policy=False)
        assert refused.value.message == (
            f"Policy statement must contain {missing.lower()}s.")
