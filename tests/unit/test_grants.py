"""Grant rules (kms.domain.grants), grant tokens, and the grant check policy evaluation
asks (Service.grants_allow), in process: a real Service over the in-memory log, the
grants made through its own CreateGrant; nothing mocked."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

import kms.service  # noqa: F401  (registers every operation)
from kms.clock import Clock
from kms.crypto.keyring import Keyring
from kms.crypto.sealing import RootKey
from kms.domain import grants as g
from kms.domain.errors import (
    InvalidGrantTokenException,
    LimitExceededException,
    ValidationException,
)
from kms.schedule import Scheduler
from kms.service.core import Call, Caller, Service
from kms.service.grant_access import grant_condition_context, new_token, parse_token
from kms.store.log import MemoryLog

ACCOUNT = "111122223333"
ROOT = Caller(f"arn:aws:iam::{ACCOUNT}:root", ACCOUNT, "AKIDROOT")
ALICE_ARN = f"arn:aws:iam::{ACCOUNT}:user/alice"
ALICE = Caller(ALICE_ARN, ACCOUNT, "AKIDALICE", principal_type="IAMUser")
BOB = Caller(f"arn:aws:iam::{ACCOUNT}:user/bob", ACCOUNT, "AKIDBOB", principal_type="IAMUser")
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/team/app-role"
SESSION = Caller(f"arn:aws:sts::{ACCOUNT}:assumed-role/app-role/worker-1", ACCOUNT, "ASIAX",
                 principal_type="AssumedRole")


# -- pure rules ---------------------------------------------------------------------------
def test_operations_must_fit_the_key_type() -> None:
    sym = g.grantable("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT")
    assert {"Encrypt", "GenerateDataKey", "ReEncryptTo", "DescribeKey"} <= sym
    assert "Sign" not in sym and "GetPublicKey" not in sym
    signing = g.grantable("ECC_NIST_P256", "SIGN_VERIFY")
    assert {"Sign", "Verify", "GetPublicKey", "CreateGrant"} <= signing
    assert "Encrypt" not in signing
    rsa = g.grantable("RSA_2048", "ENCRYPT_DECRYPT")
    assert "GenerateDataKey" not in rsa and "Decrypt" in rsa
    assert {"GenerateMac", "VerifyMac"} <= g.grantable("HMAC_256", "GENERATE_VERIFY_MAC")
    arn = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/k"
    with pytest.raises(ValidationException) as info:
        g.check_request(arn, "ECC_NIST_P256", "SIGN_VERIFY", ("Encrypt", "Sign"), "")
    assert "Encrypt" in info.value.message and "Sign," not in info.value.message
    with pytest.raises(ValidationException) as info:
        g.check_request(arn, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", ("CreateGrant",), "")
    assert info.value.message == "Grants must not contain only the CreateGrant operation."
    with pytest.raises(ValidationException):  # a constraint on a signing key's grant
        g.check_request(arn, "ECC_NIST_P256", "SIGN_VERIFY", ("Sign",), g.SUBSET)
    g.check_request(arn, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", ("Decrypt", "DescribeKey"),
                    g.EQUALS)


def test_constraints_one_kind_at_most_eight_pairs_values_up_to_384() -> None:
    assert g.constraint_of(None) == ("", ())
    assert g.constraint_of({g.SUBSET: {}}) == ("", ())
    assert g.constraint_of({g.SUBSET: {"b": "2", "a": "1"}}) == (g.SUBSET, (("a", "1"),
                                                                            ("b", "2")))
    with pytest.raises(ValidationException):
        g.constraint_of({g.SUBSET: {"a": "1"}, g.EQUALS: {"a": "1"}})
    with pytest.raises(ValidationException):
        g.constraint_of({g.EQUALS: {f"k{i}": "v" for i in range(9)}})
    g.constraint_of({g.EQUALS: {f"k{i}": "v" for i in range(8)}})
    with pytest.raises(ValidationException):
        g.constraint_of({g.EQUALS: {"k": "v" * 385}})
    g.constraint_of({g.EQUALS: {"k": "v" * 384}})


def test_fifty_thousand_grants_per_key() -> None:
    g.check_quota(g.MAX_GRANTS_PER_KEY - 1)
    with pytest.raises(LimitExceededException):
        g.check_quota(50_000)


def grant(constraint_type: str = "", constraint: g.Pairs = (),
          operations: tuple[str, ...] = ("Encrypt", "Decrypt", "CreateGrant",
                                         "DescribeKey")) -> g.Grant:
    return g.Grant("k", "0" * 64, ALICE_ARN, "", operations, constraint_type, constraint, "",
                   ACCOUNT, 0)


def test_constraint_keys_compare_case_insensitively_values_case_sensitively() -> None:
    subset = grant(g.SUBSET, (("Dept", "IT"),))
    assert g.constraint_holds(subset, "Encrypt", {"dept": "IT", "extra": "x"})
    assert not g.constraint_holds(subset, "Encrypt", {"dept": "it"})
    assert not g.constraint_holds(subset, "Encrypt", None)
    assert g.constraint_holds(subset, "DescribeKey", None)  # not applied to DescribeKey
    equals = grant(g.EQUALS, (("Dept", "IT"),))
    assert g.constraint_holds(equals, "Decrypt", {"DEPT": "IT"})
    assert not g.constraint_holds(equals, "Decrypt", {"dept": "IT", "extra": "x"})


def test_a_constrained_grant_creates_only_grants_as_strict_or_stricter() -> None:
    subset = grant(g.SUBSET, (("a", "1"),))
    assert g.at_least_as_strict(subset, g.SUBSET, (("A", "1"), ("b", "2")))
    assert g.at_least_as_strict(subset, g.EQUALS, (("a", "1"),))
    assert not g.at_least_as_strict(subset, "", ())
    assert not g.at_least_as_strict(subset, g.SUBSET, (("b", "2"),))
    equals = grant(g.EQUALS, (("a", "1"),))
    assert g.at_least_as_strict(equals, g.EQUALS, (("a", "1"),))
    assert not g.at_least_as_strict(equals, g.SUBSET, (("a", "1"),))
    assert g.at_least_as_strict(grant(), "", ())


def test_an_assumed_role_session_answers_to_its_role_whatever_the_path() -> None:
    forms = g.principal_forms(SESSION.principal_arn, "")
    assert g.grantee_form(ROLE_ARN) in forms
    assert g.grantee_form(f"arn:aws:iam::{ACCOUNT}:role/other") not in forms
    assert g.grantee_form(ACCOUNT) == g.grantee_form(f"arn:aws:iam::{ACCOUNT}:root")
    assert g.grantee_form(ACCOUNT) not in forms  # an account grantee: its root only
    assert g.grantee_form(ACCOUNT) in g.principal_forms(ROOT.principal_arn, ACCOUNT)


def test_grant_tokens_are_fresh_each_time_and_garbage_is_refused() -> None:
    gid = "ab" * 32
    one, two = new_token("us-east-1", "mrk-" + "0" * 32, gid), new_token("us-east-1", "k", gid)
    assert one != new_token("us-east-1", "mrk-" + "0" * 32, gid)
    ref = parse_token(one)
    assert (ref.region, ref.key_id, ref.grant_id) == ("us-east-1", "mrk-" + "0" * 32, gid)
    assert parse_token(two).key_id == "k"
    tampered = one[:-3] + ("A" if one[-3] != "A" else "B") + one[-2:]
    for bad in ("t", "", "garbage!!", tampered, one[:40]):
        with pytest.raises(InvalidGrantTokenException):
            parse_token(bad)


def test_create_grant_condition_keys() -> None:
    ctx = grant_condition_context({"Operations": ["Encrypt", "Decrypt"],
                                   "GranteePrincipal": ALICE_ARN,
                                   "Constraints": {g.EQUALS: {"a": "1"}}},
                                  via_service="ebs.us-east-1.amazonaws.com")
    assert ctx == {"kms:GrantOperations": ["Encrypt", "Decrypt"],
                   "kms:GrantIsForAWSResource": True, "kms:GranteePrincipal": ALICE_ARN,
                   "kms:GrantConstraintType": g.EQUALS}
    plain = grant_condition_context({"Operations": ["Sign"], "GranteePrincipal": ALICE_ARN,
                                     "RetiringPrincipal": ROLE_ARN})
    assert "kms:GrantConstraintType" not in plain
    assert plain["kms:GrantIsForAWSResource"] is False
    assert plain["kms:RetiringPrincipal"] == ROLE_ARN


# -- the hook, over a real service ----------------------------------------------------------
class Region:
    def __init__(self) -> None:
        self.log = MemoryLog("us-east-1")
        self.service = Service(region="us-east-1", account=ACCOUNT, log_=self.log,
                               keyring=Keyring(RootKey(os.urandom(32)), self.log.vault),
                               clock=Clock())

    async def call(self, operation: str, caller: Caller = ROOT, **params: Any) -> Any:
        return await self.service.call(operation, params, caller, str(uuid.uuid4()))

    def allows(self, caller: Caller, operation: str, action: str, key_id: str,
               **params: Any) -> bool:
        call = Call("r", operation, caller, 0, params)
        return self.service.grants_allow(call, action, self.service.state.keys[key_id])


@pytest.fixture
async def region() -> AsyncIterator[Region]:
    r = Region()
    await r.log.open()
    yield r
    await r.log.close()


async def test_grants_allow_the_grantee_its_operations_under_its_constraint(
        region: Region) -> None:
    key = (await region.call("CreateKey"))["KeyMetadata"]["KeyId"]
    got = await region.call("CreateGrant", KeyId=key, GranteePrincipal=ALICE_ARN,
                            Operations=["Encrypt", "DescribeKey"],
                            Constraints={g.SUBSET: {"app": "pay"}})
    assert region.allows(ALICE, "Encrypt", "Encrypt", key, EncryptionContext={"APP": "pay"})
    assert not region.allows(ALICE, "Encrypt", "Encrypt", key, EncryptionContext={"app": "x"})
    assert not region.allows(ALICE, "Encrypt", "Encrypt", key)
    assert region.allows(ALICE, "DescribeKey", "DescribeKey", key)  # constraint not applied
    assert not region.allows(ALICE, "Decrypt", "Decrypt", key, EncryptionContext={"app": "pay"})
    assert not region.allows(BOB, "Encrypt", "Encrypt", key, EncryptionContext={"app": "pay"})
    # A token names the grant; it gives nothing to anyone but the grantee.
    assert not region.allows(BOB, "DescribeKey", "DescribeKey", key,
                             GrantTokens=[got["GrantToken"]])
    assert region.allows(ALICE, "DescribeKey", "DescribeKey", key,
                         GrantTokens=[got["GrantToken"]])
    await region.call("RevokeGrant", KeyId=key, GrantId=got["GrantId"])
    assert not region.allows(ALICE, "DescribeKey", "DescribeKey", key,
                             GrantTokens=[got["GrantToken"]])


async def test_reencrypt_checks_each_side_with_its_own_context(region: Region) -> None:
    key = (await region.call("CreateKey"))["KeyMetadata"]["KeyId"]
    await region.call("CreateGrant", KeyId=key, GranteePrincipal=ALICE_ARN,
                      Operations=["ReEncryptFrom"], Constraints={g.EQUALS: {"a": "1"}})
    assert region.allows(ALICE, "ReEncrypt", "ReEncryptFrom", key,
                         SourceEncryptionContext={"a": "1"},
                         DestinationEncryptionContext={"b": "2"})
    assert not region.allows(ALICE, "ReEncrypt", "ReEncryptFrom", key,
                             DestinationEncryptionContext={"a": "1"})
    assert not region.allows(ALICE, "ReEncrypt", "ReEncryptTo", key,
                             DestinationEncryptionContext={"a": "1"})


async def test_a_role_grant_serves_its_sessions(region: Region) -> None:
    key = (await region.call("CreateKey"))["KeyMetadata"]["KeyId"]
    await region.call("CreateGrant", KeyId=key, GranteePrincipal=ROLE_ARN,
                      Operations=["Decrypt"])
    assert region.allows(SESSION, "Decrypt", "Decrypt", key)
    assert not region.allows(ALICE, "Decrypt", "Decrypt", key)


async def test_create_grant_through_a_constrained_grant_must_be_as_strict(
        region: Region) -> None:
    key = (await region.call("CreateKey"))["KeyMetadata"]["KeyId"]
    await region.call("CreateGrant", KeyId=key, GranteePrincipal=ALICE_ARN,
                      Operations=["Decrypt", "CreateGrant"],
                      Constraints={g.SUBSET: {"a": "1"}})
    child = {"GranteePrincipal": f"arn:aws:iam::{ACCOUNT}:user/carol", "Operations": ["Decrypt"]}
    assert region.allows(ALICE, "CreateGrant", "CreateGrant", key, KeyId=key,
                         Constraints={g.SUBSET: {"a": "1", "b": "2"}}, **child)
    assert not region.allows(ALICE, "CreateGrant", "CreateGrant", key, KeyId=key, **child)
    assert not region.allows(ALICE, "CreateGrant", "CreateGrant", key, KeyId=key,
                             Constraints={g.SUBSET: {"b": "2"}}, **child)


async def test_a_deleted_key_takes_its_grants_with_it(region: Region) -> None:
    key = (await region.call("CreateKey"))["KeyMetadata"]["KeyId"]
    await region.call("CreateGrant", KeyId=key, GranteePrincipal=ALICE_ARN,
                      Operations=["Decrypt"], RetiringPrincipal=ROLE_ARN)
    assert region.service.grants.count(key) == 1
    assert len(region.service.grants.retirable_by(ROLE_ARN)) == 1
    await region.call("ScheduleKeyDeletion", KeyId=key, PendingWindowInDays=7)
    region.service.clock.advance(8 * 86_400)
    await Scheduler(region.service).run_due()
    assert key not in region.service.state.keys
    assert region.service.grants.count(key) == 0
    assert region.service.grants.retirable_by(ROLE_ARN) == []


async def test_the_projection_indexes_names_and_forgets_ended_grants(region: Region) -> None:
    key = (await region.call("CreateKey"))["KeyMetadata"]["KeyId"]
    ask = {"KeyId": key, "GranteePrincipal": ALICE_ARN, "Operations": ["Decrypt"],
           "Name": "n"}
    first = await region.call("CreateGrant", **ask)
    other = await region.call("CreateGrant", **{**ask, "Operations": ["Encrypt"]})
    grants = region.service.grants
    assert [x.grant_id for x in grants.named(key, "n")] == [first["GrantId"], other["GrantId"]]
    again = await region.call("CreateGrant", **ask)
    assert again["GrantId"] == first["GrantId"]
    await region.call("RetireGrant", GrantToken=again["GrantToken"])
    assert [x.grant_id for x in grants.named(key, "n")] == [other["GrantId"]]
    anew = await region.call("CreateGrant", **ask)  # the name is free for a new grant again
    assert anew["GrantId"] not in (first["GrantId"], other["GrantId"])
    await region.call("RevokeGrant", KeyId=key, GrantId=other["GrantId"])
    await region.call("RevokeGrant", KeyId=key, GrantId=anew["GrantId"])
    assert grants.named(key, "n") == [] and grants.count(key) == 0
    assert not region.allows(ALICE, "Decrypt", "Decrypt", key)
