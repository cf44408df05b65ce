"""Grants through boto3: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant,
RevokeGrant, with AWS's errors; Name idempotency, filters and pages, constraints, grant
tokens; refused calls append only their audit fact; grants survive a restart, are per
region for multi-region keys, and never make concurrent Encrypt calls conflict."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import msgpack
import pytest
from botocore.exceptions import ClientError

from tests.api.test_aws_parity import log_seq, refused_alone
from tests.conftest import client_for
from tests.support.expect import eventually, refused
from tests.support.server import ServerProcess

ACCOUNT = "111122223333"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"
BOB = f"arn:aws:iam::{ACCOUNT}:user/bob"
CAROL = f"arn:aws:iam::{ACCOUNT}:user/carol"
DRY_RUN = "The request would have succeeded, but the DryRun option is set."


def new_key(kms: Any, **params: Any) -> str:
    return str(kms.create_key(**params)["KeyMetadata"]["KeyId"])


def grant_ids(kms: Any, key_id: str, **params: Any) -> list[str]:
    return [g["GrantId"] for g in kms.list_grants(KeyId=key_id, **params)["Grants"]]


def test_create_list_retire_and_revoke(kms: Any) -> None:
    key_id = new_key(kms)
    arn = kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    first = kms.create_grant(KeyId=arn, GranteePrincipal=ALICE, RetiringPrincipal=CAROL,
                             Operations=["Encrypt", "Decrypt"], Name="app-grant")
    second = kms.create_grant(KeyId=key_id, GranteePrincipal=BOB, Operations=["DescribeKey"])
    assert len(first["GrantId"]) == 64 and int(first["GrantId"], 16) >= 0
    assert first["GrantToken"] != second["GrantToken"]
    grants = kms.list_grants(KeyId=key_id)
    assert grants["Truncated"] is False and "NextMarker" not in grants
    entry, other = grants["Grants"]
    assert {k: v for k, v in entry.items() if k != "CreationDate"} == {
        "KeyId": arn, "GrantId": first["GrantId"], "Name": "app-grant",
        "GranteePrincipal": ALICE, "RetiringPrincipal": CAROL,
        "IssuingAccount": f"arn:aws:iam::{ACCOUNT}:root", "Operations": ["Encrypt", "Decrypt"],
    }
    assert "Name" not in other and "RetiringPrincipal" not in other
    assert "Constraints" not in other

    kms.retire_grant(GrantToken=first["GrantToken"])
    assert grant_ids(kms, key_id) == [second["GrantId"]]
    kms.revoke_grant(KeyId=key_id, GrantId=second["GrantId"])
    assert grant_ids(kms, key_id) == []
    # Retiring by key and grant id works too.
    third = kms.create_grant(KeyId=key_id, GranteePrincipal=BOB, Operations=["Decrypt"])
    kms.retire_grant(KeyId=arn, GrantId=third["GrantId"])
    assert grant_ids(kms, key_id) == []


def test_name_makes_create_grant_idempotent_with_a_new_token_each_time(
        server: ServerProcess, kms: Any) -> None:
    key_id = new_key(kms)
    ask = {"KeyId": key_id, "GranteePrincipal": ALICE, "Operations": ["Encrypt", "Decrypt"],
           "Name": "retry-me", "Constraints": {"EncryptionContextSubset": {"app": "pay"}}}
    first = kms.create_grant(**ask)
    seq = log_seq(server)
    again = kms.create_grant(**{**ask, "Operations": ["Decrypt", "Encrypt"]})
    assert again["GrantId"] == first["GrantId"]
    assert again["GrantToken"] != first["GrantToken"]
    assert log_seq(server) == seq + 1  # the repeat appends only its audit fact
    assert grant_ids(kms, key_id) == [first["GrantId"]]
    # The same name with other parameters is another grant; no name, always another.
    other = kms.create_grant(**{**ask, "Operations": ["Decrypt"]})
    unnamed = {"KeyId": key_id, "GranteePrincipal": BOB, "Operations": ["Decrypt"]}
    a, b = kms.create_grant(**unnamed), kms.create_grant(**unnamed)
    assert len({first["GrantId"], other["GrantId"], a["GrantId"], b["GrantId"]}) == 4
    # Every token of a grant is interchangeable.
    kms.retire_grant(GrantToken=again["GrantToken"])
    refused(kms.retire_grant, "NotFoundException", GrantToken=first["GrantToken"])


def test_filters_and_pages(kms: Any) -> None:
    key_id = new_key(kms)
    made = [kms.create_grant(KeyId=key_id, GranteePrincipal=BOB if n % 2 else ALICE,
                             Operations=["Decrypt"])["GrantId"] for n in range(5)]
    assert grant_ids(kms, key_id, GrantId=made[3]) == [made[3]]
    assert grant_ids(kms, key_id, GranteePrincipal=BOB) == [made[1], made[3]]
    assert grant_ids(kms, key_id, GrantId="0" * 64) == []
    seen: list[str] = []
    marker: dict[str, str] = {}
    while True:
        page = kms.list_grants(KeyId=key_id, Limit=2, **marker)
        assert len(page["Grants"]) <= 2
        seen += [g["GrantId"] for g in page["Grants"]]
        if not page["Truncated"]:
            break
        marker = {"Marker": page["NextMarker"]}
    assert seen == made
    refused(kms.list_grants, "InvalidMarkerException", KeyId=key_id, Marker="nope")
    refused(kms.list_grants, "ValidationException",
            "1 validation error detected: Value '101' at 'limit' failed to satisfy constraint: "
            "Member must have value less than or equal to 100", KeyId=key_id, Limit=101)
    refused(kms.list_grants, "InvalidGrantIdException", KeyId=key_id, GrantId="not-a-grant")


def test_list_retirable_grants_spans_keys(kms: Any) -> None:
    one, two = new_key(kms), new_key(kms)
    a = kms.create_grant(KeyId=one, GranteePrincipal=ALICE, RetiringPrincipal=CAROL,
                         Operations=["Decrypt"])["GrantId"]
    kms.create_grant(KeyId=two, GranteePrincipal=ALICE, Operations=["Decrypt"])
    b = kms.create_grant(KeyId=two, GranteePrincipal=BOB, RetiringPrincipal=CAROL,
                         Operations=["Encrypt"])["GrantId"]
    listed = kms.list_retirable_grants(RetiringPrincipal=CAROL)
    assert [(g["GrantId"], g["KeyId"].rsplit("/", 1)[1]) for g in listed["Grants"]] == [
        (a, one), (b, two)]
    page = kms.list_retirable_grants(RetiringPrincipal=CAROL, Limit=1)
    assert page["Truncated"] and [g["GrantId"] for g in page["Grants"]] == [a]
    rest = kms.list_retirable_grants(RetiringPrincipal=CAROL, Marker=page["NextMarker"])
    assert [g["GrantId"] for g in rest["Grants"]] == [b]
    assert kms.list_retirable_grants(RetiringPrincipal=BOB)["Grants"] == []


def test_constraints_are_kept_and_checked(server: ServerProcess, kms: Any) -> None:
    key_id = new_key(kms)
    made = kms.create_grant(KeyId=key_id, GranteePrincipal=ALICE,
                            Operations=["Decrypt", "DescribeKey"],
                            Constraints={"EncryptionContextEquals": {"Dept": "IT"}})
    entry = kms.list_grants(KeyId=key_id, GrantId=made["GrantId"])["Grants"][0]
    assert entry["Constraints"] == {"EncryptionContextEquals": {"Dept": "IT"}}
    signer = new_key(kms, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    refused_alone(server, kms.create_grant, "ValidationException", KeyId=signer,
                  GranteePrincipal=ALICE, Operations=["Sign"],
                  Constraints={"EncryptionContextSubset": {"a": "b"}})
    refused_alone(server, kms.create_grant, "ValidationException", KeyId=key_id,
                  GranteePrincipal=ALICE, Operations=["Decrypt"],
                  Constraints={"EncryptionContextSubset": {"a": "b"},
                               "EncryptionContextEquals": {"a": "b"}})
    refused_alone(server, kms.create_grant, "ValidationException", KeyId=key_id,
                  GranteePrincipal=ALICE, Operations=["Decrypt"],
                  Constraints={"EncryptionContextSubset": {f"k{i}": "v" for i in range(9)}})


def test_operations_must_fit_the_key(server: ServerProcess, kms: Any) -> None:
    symmetric = new_key(kms)
    signer = new_key(kms, KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")
    message = refused_alone(server, kms.create_grant, "ValidationException", KeyId=symmetric,
                            GranteePrincipal=ALICE, Operations=["Decrypt", "Sign"]
                            )["Error"]["Message"]
    assert "Sign" in message and "Decrypt" not in message
    refused_alone(server, kms.create_grant, "ValidationException", KeyId=signer,
                  GranteePrincipal=ALICE, Operations=["Encrypt"])
    refused_alone(server, kms.create_grant, "ValidationException",
                  "Grants must not contain only the CreateGrant operation.", KeyId=symmetric,
                  GranteePrincipal=ALICE, Operations=["CreateGrant"])
    kms.create_grant(KeyId=signer, GranteePrincipal=ALICE,
                     Operations=["Sign", "Verify", "GetPublicKey", "DescribeKey"])
    kem = new_key(kms, KeySpec="ML_KEM_768", KeyUsage="ENCAPSULATE_DECAPSULATE")
    kms.create_grant(KeyId=kem, GranteePrincipal=ALICE,
                     Operations=["Encapsulate", "Decapsulate", "GetPublicKey"])
    refused_alone(server, kms.create_grant, "ValidationException", KeyId=kem,
                  GranteePrincipal=ALICE, Operations=["Decrypt"])
    assert grant_ids(kms, symmetric) == []


def test_grantee_required(server: ServerProcess, raw_kms: Any) -> None:
    """(Service principal grantees: tests/api/test_service_principal_grants.py.)"""
    key_id = new_key(raw_kms)
    refused_alone(server, raw_kms.create_grant, "ValidationException",
                  "You must specify either GranteePrincipal or GranteeServicePrincipal.",
                  KeyId=key_id, Operations=["Decrypt"])
    refused_alone(server, raw_kms.list_retirable_grants, "ValidationException")
    assert raw_kms.list_grants(KeyId=key_id)["Grants"] == []


def test_grant_tokens_are_checked_on_every_operation_that_takes_them(
        server: ServerProcess, kms: Any) -> None:
    key_id = new_key(kms)
    token = kms.create_grant(KeyId=key_id, GranteePrincipal=ALICE,
                             Operations=["Encrypt", "Decrypt"])["GrantToken"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"p", GrantTokens=[token])["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob, GrantTokens=[token, token])["Plaintext"] == b"p"
    kms.describe_key(KeyId=key_id, GrantTokens=[token])
    bad = token[:-4] + ("AAAA" if token[-4:] != "AAAA" else "BBBB")
    for call, params in [
        (kms.encrypt, {"KeyId": key_id, "Plaintext": b"p"}),
        (kms.decrypt, {"CiphertextBlob": blob}),
        (kms.generate_data_key, {"KeyId": key_id, "KeySpec": "AES_256"}),
        (kms.create_grant, {"KeyId": key_id, "GranteePrincipal": BOB,
                            "Operations": ["Decrypt"]}),
    ]:
        for garbage in ("garbage", bad):
            refused_alone(server, call, "InvalidGrantTokenException",
                          "The grant token is not valid.", GrantTokens=[token, garbage],
                          **params)
    refused_alone(server, kms.retire_grant, "InvalidGrantTokenException", GrantToken="xyz")
    kms.describe_key(KeyId=key_id, GrantTokens=["garbage"])  # its model has no such error
    assert len(grant_ids(kms, key_id)) == 1


def test_errors_with_aws_names_and_nothing_changed(server: ServerProcess, kms: Any) -> None:
    key_id = new_key(kms)
    arn = kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName="alias/granted", TargetKeyId=key_id)
    ok = {"GranteePrincipal": ALICE, "Operations": ["Decrypt"]}
    refused_alone(server, kms.create_grant, "NotFoundException",
                  "Invalid keyId 'alias/granted'", KeyId="alias/granted", **ok)
    missing = "11111111-2222-3333-4444-555555555555"
    refused_alone(server, kms.create_grant, "NotFoundException",
                  f"Key 'arn:aws:kms:us-east-1:{ACCOUNT}:key/{missing}' does not exist",
                  KeyId=missing, **ok)
    refused_alone(server, kms.create_grant, "InvalidArnException",
                  "ARN does not refer to a valid principal: ec2.amazonaws.com",
                  KeyId=key_id, GranteePrincipal="ec2.amazonaws.com", Operations=["Decrypt"])
    refused_alone(server, kms.create_grant, "DryRunOperationException", DRY_RUN,
                  KeyId=key_id, DryRun=True, **ok)
    unknown = "ab" * 32
    refused_alone(server, kms.revoke_grant, "NotFoundException",
                  f"Grant ID {unknown} not found for key {arn}", KeyId=key_id, GrantId=unknown)
    refused_alone(server, kms.revoke_grant, "InvalidGrantIdException", KeyId=key_id,
                  GrantId="bogus")
    refused_alone(server, kms.retire_grant, "NotFoundException", KeyId=key_id, GrantId=unknown)
    refused_alone(server, kms.retire_grant, "ValidationException", KeyId=key_id)
    made = kms.create_grant(KeyId=key_id, **ok)
    refused_alone(server, kms.revoke_grant, "DryRunOperationException", DRY_RUN,
                  KeyId=key_id, GrantId=made["GrantId"], DryRun=True)
    refused_alone(server, kms.retire_grant, "DryRunOperationException", DRY_RUN,
                  GrantToken=made["GrantToken"], DryRun=True)
    assert grant_ids(kms, key_id) == [made["GrantId"]]

    kms.disable_key(KeyId=key_id)
    refused_alone(server, kms.create_grant, "DisabledException", f"{arn} is disabled.",
                  KeyId=key_id, **ok)
    external = new_key(kms, Origin="EXTERNAL")
    ext_arn = kms.describe_key(KeyId=external)["KeyMetadata"]["Arn"]
    refused_alone(server, kms.create_grant, "KMSInvalidStateException",
                  f"{ext_arn} is pending import.", KeyId=external, **ok)
    kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    refused_alone(server, kms.create_grant, "KMSInvalidStateException",
                  f"{arn} is pending deletion.", KeyId=key_id, **ok)
    # Listing, retiring and revoking work in every state.
    assert grant_ids(kms, key_id) == [made["GrantId"]]
    kms.revoke_grant(KeyId=key_id, GrantId=made["GrantId"])
    assert grant_ids(kms, key_id) == []


def test_a_call_appends_the_grant_stream_only(server: ServerProcess, kms: Any) -> None:
    key_id = new_key(kms)
    seq = log_seq(server)
    made = kms.create_grant(KeyId=key_id, GranteePrincipal=ALICE, Operations=["Decrypt"])
    assert log_seq(server) == seq + 2  # GrantCreated and the audit fact
    kms.revoke_grant(KeyId=key_id, GrantId=made["GrantId"])
    assert log_seq(server) == seq + 4


# -- who may retire ---------------------------------------------------------------------------
PRINCIPALS = f"""
account_id = "{ACCOUNT}"
[[principals]]
arn = "{ALICE}"
access_key_id = "AKIAALICE00000000001"
secret_access_key = "alice-secret-key"
[[principals]]
arn = "{CAROL}"
access_key_id = "AKIACAROL00000000001"
secret_access_key = "carol-secret-key"
[[principals]]
arn = "{BOB}"
access_key_id = "AKIABOB0000000000001"
secret_access_key = "bob-secret-key"
"""


@pytest.fixture(scope="module")
def named_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("grants-principals")
    (base / "kms.toml").write_text(PRINCIPALS)
    node = ServerProcess(base / "data", extra=["--config", str(base / "kms.toml")]).start()
    try:
        yield node
    finally:
        node.stop()


def as_(node: ServerProcess, who: str) -> Any:
    keys = {"alice": ("AKIAALICE00000000001", "alice-secret-key"),
            "carol": ("AKIACAROL00000000001", "carol-secret-key"),
            "bob": ("AKIABOB0000000000001", "bob-secret-key")}
    access, secret = keys.get(who, ("AKIDEXAMPLE", "secret"))
    return client_for(node.url, access_key=access, secret=secret)


def test_who_may_retire_a_grant(named_node: ServerProcess) -> None:
    root = as_(named_node, "root")
    key_id = new_key(root)
    arn = root.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    by_retiring = root.create_grant(KeyId=key_id, GranteePrincipal=ALICE,
                                    RetiringPrincipal=CAROL, Operations=["Decrypt"])
    by_grantee = root.create_grant(KeyId=key_id, GranteePrincipal=ALICE,
                                   Operations=["Decrypt", "RetireGrant"])
    not_retirable = root.create_grant(KeyId=key_id, GranteePrincipal=ALICE,
                                      Operations=["Decrypt"])
    for grant, outsider in ((by_retiring, "bob"), (by_grantee, "bob"), (not_retirable, "alice")):
        refused_alone(named_node, as_(named_node, outsider).retire_grant, "AccessDeniedException",
                      f"User: arn:aws:iam::{ACCOUNT}:user/{outsider} is not authorized to "
                      f"perform: kms:RetireGrant on resource: {arn} because the grant does not "
                      "allow it", GrantToken=grant["GrantToken"])
    as_(named_node, "carol").retire_grant(GrantToken=by_retiring["GrantToken"])
    as_(named_node, "alice").retire_grant(KeyId=arn, GrantId=by_grantee["GrantId"])
    root.retire_grant(KeyId=key_id, GrantId=not_retirable["GrantId"])  # the account
    assert grant_ids(root, key_id) == []


def test_grants_authorize_principals_the_policies_do_not(named_node: ServerProcess) -> None:
    """alice and bob have no identity policies, so the default key policy (which delegates
    to IAM) lets them do nothing: only grants do, within their operations and constraint."""
    root, alice, bob = (as_(named_node, who) for who in ("root", "alice", "bob"))
    key_id = new_key(root)
    arn = root.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]

    def denied(client: Any, who: str, action: str, call: Any, **params: Any) -> None:
        refused_alone(named_node, call, "AccessDeniedException",
                      f"User: arn:aws:iam::{ACCOUNT}:user/{who} is not authorized to perform: "
                      f"kms:{action} on resource: {arn} because no identity-based policy "
                      f"allows the kms:{action} action", **params)

    denied(alice, "alice", "Encrypt", alice.encrypt, KeyId=key_id, Plaintext=b"p")
    pay = {"app": "pay"}
    made = root.create_grant(KeyId=key_id, GranteePrincipal=ALICE,
                             Operations=["Encrypt", "Decrypt", "CreateGrant", "DescribeKey"],
                             Constraints={"EncryptionContextSubset": pay})
    tokens = [made["GrantToken"]]
    blob = alice.encrypt(KeyId=key_id, Plaintext=b"p", EncryptionContext={"APP": "pay"},
                         GrantTokens=tokens)["CiphertextBlob"]
    assert alice.decrypt(CiphertextBlob=blob, EncryptionContext={"APP": "pay"})[
        "Plaintext"] == b"p"
    alice.describe_key(KeyId=key_id)  # the constraint does not apply to DescribeKey
    denied(alice, "alice", "Encrypt", alice.encrypt, KeyId=key_id, Plaintext=b"p",
           EncryptionContext={"app": "PAY"})
    denied(alice, "alice", "Encrypt", alice.encrypt, KeyId=key_id, Plaintext=b"p")
    denied(alice, "alice", "GenerateDataKey", alice.generate_data_key, KeyId=key_id,
           KeySpec="AES_256", EncryptionContext=pay)
    denied(bob, "bob", "Encrypt", bob.encrypt, KeyId=key_id, Plaintext=b"p",
           EncryptionContext=pay, GrantTokens=tokens)  # a token helps its grantee only

    # alice's grant includes CreateGrant: she may pass on as much, constrained as strictly.
    denied(alice, "alice", "CreateGrant", alice.create_grant, KeyId=key_id,
           GranteePrincipal=BOB, Operations=["Encrypt"])
    denied(alice, "alice", "CreateGrant", alice.create_grant, KeyId=key_id,
           GranteePrincipal=BOB, Operations=["Encrypt"],
           Constraints={"EncryptionContextSubset": {"team": "a"}})
    # ... and only operations she holds: not GenerateDataKey (nor for herself).
    for grantee in (BOB, ALICE):
        denied(alice, "alice", "CreateGrant", alice.create_grant, KeyId=key_id,
               GranteePrincipal=grantee, Operations=["Encrypt", "GenerateDataKey"],
               Constraints={"EncryptionContextSubset": pay})
    passed = alice.create_grant(KeyId=key_id, GranteePrincipal=BOB, Operations=["Encrypt"],
                                Constraints={"EncryptionContextSubset": {**pay, "team": "a"}})
    bob.encrypt(KeyId=key_id, Plaintext=b"p", EncryptionContext={**pay, "team": "a"},
                GrantTokens=[passed["GrantToken"]])
    denied(bob, "bob", "Decrypt", bob.decrypt, CiphertextBlob=blob, EncryptionContext=pay)

    root.revoke_grant(KeyId=key_id, GrantId=made["GrantId"])
    denied(alice, "alice", "Encrypt", alice.encrypt, KeyId=key_id, Plaintext=b"p",
           EncryptionContext=pay, GrantTokens=tokens)
    bob.encrypt(KeyId=key_id, Plaintext=b"p", EncryptionContext={**pay, "team": "a"})


# -- restart, regions, concurrency ----------------------------------------------------------
def audit_additional(data_dir: Path, operation: str) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(data_dir / "events.sqlite3")) as db:
        rows = db.execute("SELECT body FROM events WHERE stream = 'audit'").fetchall()
    facts = [msgpack.unpackb(body, raw=False) for (body,) in rows]
    return [f["additional"] for f in facts if f["operation"] == operation and not f["error_code"]]


def test_grants_survive_a_restart_and_create_grant_is_audited_with_its_id(
        tmp_path: Path) -> None:
    node = ServerProcess(tmp_path / "data").start()
    try:
        kms = client_for(node.url)
        key_id = new_key(kms)
        kept = kms.create_grant(KeyId=key_id, GranteePrincipal=ALICE, Operations=["Decrypt"],
                                RetiringPrincipal=CAROL, Name="kept",
                                Constraints={"EncryptionContextSubset": {"a": "1"}})
        gone = kms.create_grant(KeyId=key_id, GranteePrincipal=BOB, Operations=["Encrypt"])
        kms.retire_grant(GrantToken=gone["GrantToken"])
        before = kms.list_grants(KeyId=key_id)["Grants"]
        node.stop()
        node.start()
        assert kms.list_grants(KeyId=key_id)["Grants"] == before
        assert [g["GrantId"] for g in before] == [kept["GrantId"]]
        assert [g["GrantId"] for g in kms.list_retirable_grants(
            RetiringPrincipal=CAROL)["Grants"]] == [kept["GrantId"]]
        # Name idempotency holds across the restart; the old token still retires.
        again = kms.create_grant(KeyId=key_id, GranteePrincipal=ALICE, Operations=["Decrypt"],
                                 RetiringPrincipal=CAROL, Name="kept",
                                 Constraints={"EncryptionContextSubset": {"a": "1"}})
        assert again["GrantId"] == kept["GrantId"]
        kms.retire_grant(GrantToken=kept["GrantToken"])
        assert grant_ids(kms, key_id) == []
    finally:
        node.stop()
    created = audit_additional(tmp_path / "data", "CreateGrant")
    assert [a["grantId"] for a in created] == [kept["GrantId"], gone["GrantId"],
                                               kept["GrantId"]]
    retired = audit_additional(tmp_path / "data", "RetireGrant")
    assert [a["grantId"] for a in retired] == [gone["GrantId"], kept["GrantId"]]


def test_grants_of_a_multi_region_key_are_per_region(server: ServerProcess, kms: Any) -> None:
    replica_region = "eu-west-1"
    there = client_for(server.url, region=replica_region)
    key_id = new_key(kms, MultiRegion=True)
    kms.replicate_key(KeyId=key_id, ReplicaRegion=replica_region)
    eventually(lambda: there.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled",
               "the replica to be Enabled")
    here_grant = kms.create_grant(KeyId=key_id, GranteePrincipal=ALICE, Operations=["Decrypt"])
    there_grant = there.create_grant(KeyId=key_id, GranteePrincipal=BOB,
                                     Operations=["Encrypt"])
    assert grant_ids(kms, key_id) == [here_grant["GrantId"]]
    assert grant_ids(there, key_id) == [there_grant["GrantId"]]
    # A token of one region names nothing in the other.
    refused(there.retire_grant, "NotFoundException", GrantToken=here_grant["GrantToken"])
    refused(there.revoke_grant, "NotFoundException", KeyId=key_id,
            GrantId=here_grant["GrantId"])
    there.revoke_grant(KeyId=key_id, GrantId=there_grant["GrantId"])
    assert grant_ids(kms, key_id) == [here_grant["GrantId"]]


def test_grant_changes_never_make_concurrent_encrypts_decide_again(tmp_path: Path) -> None:
    """Encrypt calls on a key run beside CreateGrant/RevokeGrant on it: none answers "The
    request conflicted with concurrent changes", and none even had to decide again (the
    node logs ``decided_again`` for each retried decision)."""
    node = ServerProcess(tmp_path / "data", log_path=tmp_path / "node.log").start()
    stop = threading.Event()
    errors: list[str] = []
    encrypted = [0]
    try:
        kms = client_for(node.url)
        key_id = new_key(kms)

        def encrypt_loop() -> None:
            client = client_for(node.url)
            while not stop.is_set():
                try:
                    client.encrypt(KeyId=key_id, Plaintext=b"x")
                    encrypted[0] += 1
                except ClientError as exc:
                    errors.append(exc.response["Error"]["Message"])

        workers = [threading.Thread(target=encrypt_loop) for _ in range(4)]
        for w in workers:
            w.start()
        changes = 0
        try:
            eventually(lambda: encrypted[0] >= 20, "Encrypt calls to be flowing")
            for _ in range(40):
                made = kms.create_grant(KeyId=key_id, GranteePrincipal=ALICE,
                                        Operations=["Encrypt"])
                kms.revoke_grant(KeyId=key_id, GrantId=made["GrantId"])
                changes += 2
        finally:
            stop.set()
            for w in workers:
                w.join()
        assert grant_ids(kms, key_id) == []
    finally:
        node.stop()
    assert changes == 80 and encrypted[0] > 20
    assert errors == [], errors[:3]
    retried = [line for line in node.log_lines() if line.get("event") == "decided_again"]
    assert retried == []
