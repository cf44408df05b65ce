"""``kms region promote`` and ``kms region conflicts`` on secured (non-dev) region nodes:
``admins`` is matched as ``audit_readers`` is, by the caller's ARN or its identity's (a
role listed there covers its assumed-role sessions, a role with a path too); anyone else is
refused with AccessDeniedException, exit status 1, one audit record, and nothing else
changes."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from kms.domain import multi_region as mr
from tests.conftest import client_for
from tests.support.audit_stream import read_all
from tests.support.cluster import region_cli
from tests.support.expect import eventually
from tests.support.secured import ACCOUNT, ALICE, ALLOW_ALL, peered_pair
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

ONCALL_ROLE = f"arn:aws:iam::{ACCOUNT}:role/ops/oncall"
ONCALL_SESSION = f"arn:aws:sts::{ACCOUNT}:assumed-role/oncall/pager"
MALLORY = f"arn:aws:iam::{ACCOUNT}:user/mallory"
DENIED = (f"User: {MALLORY} is not authorized to perform region administration on this node: "
          "it is not named in admins")
CONFIG = f"""
account_id = "{ACCOUNT}"
admins = ["{ONCALL_ROLE}"]
audit_readers = ["arn:aws:iam::{ACCOUNT}:user/alice"]

[[principals]]
arn = "arn:aws:iam::{ACCOUNT}:user/alice"
access_key_id = "{ALICE[0]}"
secret_access_key = "{ALICE[1]}"
policies = ['{ALLOW_ALL}']

[[principals]]
arn = "{ONCALL_ROLE}"
session_name = "pager"
access_key_id = "AKIAONCALL0000000001"
secret_access_key = "oncall-secret-key"

[[principals]]
arn = "{MALLORY}"
access_key_id = "AKIAMALLORY000000001"
secret_access_key = "mallory-secret-key"
policies = ['{ALLOW_ALL}']
"""
AS_ONCALL = ["--access-key", "AKIAONCALL0000000001", "--secret-key", "oncall-secret-key"]
AS_MALLORY = ["--access-key", "AKIAMALLORY000000001", "--secret-key", "mallory-secret-key"]


def rows(node: ServerProcess, key_id: str) -> list[tuple[str, str]]:
    """The key's rows (both streams) in that node's log."""
    db = node.data_dir / "events.sqlite3"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        found = conn.execute("SELECT stream, type FROM events WHERE stream IN (?, ?) "
                             "ORDER BY seq", (f"key/{key_id}", mr.mrk_stream(key_id)))
        return [(s, t) for s, t in found.fetchall()]


def mr_type(client: Any, key_id: str) -> tuple[str, str]:
    conf = client.describe_key(KeyId=key_id)["KeyMetadata"]["MultiRegionConfiguration"]
    return conf["MultiRegionKeyType"], conf["PrimaryKey"]["Region"]


def test_a_role_in_admins_promotes_through_its_session_and_an_unlisted_user_is_refused(
        tmp_path: Path) -> None:
    config = tmp_path / "kms.toml"
    config.write_text(CONFIG)
    with peered_pair(tmp_path, str(config)) as (us, eu):
        us_kms = client_for(us.url, access_key=ALICE[0], secret=ALICE[1])
        eu_kms = client_for(eu.url, region="eu-west-1", access_key=ALICE[0], secret=ALICE[1])
        key_id = us_kms.create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
        us_kms.replicate_key(KeyId=key_id, ReplicaRegion="eu-west-1")
        eventually(lambda: eu_kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == (
            "Enabled"), "the replica in eu-west-1")
        before = rows(eu, key_id)

        # A user not named in admins (with every KMS permission): refused, nothing changes.
        for args in (["promote", "--endpoint", eu.url, *AS_MALLORY, key_id],
                     ["conflicts", "--endpoint", eu.url, *AS_MALLORY]):
            out = region_cli(*args)
            assert (out.returncode, out.stdout) == (1, "")
            assert out.stderr == f"kms region: error: AccessDeniedException: {DENIED}\n"
        assert rows(eu, key_id) == before
        assert mr_type(eu_kms, key_id) == ("REPLICA", "us-east-1")

        # The role's session (the role, with its path, is what admins names): allowed.
        listed = region_cli("conflicts", "--endpoint", eu.url, *AS_ONCALL)
        assert (listed.returncode, listed.stdout) == (0, "no conflicts in eu-west-1\n")
        out = region_cli("promote", "--endpoint", eu.url, *AS_ONCALL, key_id)
        assert (out.returncode, out.stderr) == (0, "")
        assert out.stdout == f"promoted {key_id} to primary in eu-west-1 (epoch 2)\n"
        assert mr_type(eu_kms, key_id) == ("PRIMARY", "eu-west-1")
        eventually(lambda: mr_type(us_kms, key_id) == ("REPLICA", "eu-west-1"),
                   "us-east-1 to hear of the promotion")

        # Each refusal left its one audit record; the promotion names who promoted.
        records = read_all(eu.url, region="eu-west-1", cred=ALICE)
        refused = [r for r in records if r.get("errorCode") and r["eventName"] in (
            "PromoteReplicaKey", "ListMultiRegionConflicts")]
        assert [(r["eventName"], r["errorCode"], r["userIdentity"]["arn"], r["readOnly"])
                for r in refused] == [
            ("PromoteReplicaKey", "AccessDenied", MALLORY, False),
            ("ListMultiRegionConflicts", "AccessDenied", MALLORY, True)]
        assert refused[0]["requestParameters"] == {"keyId": key_id}
        assert refused[0]["errorMessage"] == DENIED
        listed_records = [r for r in records if r["eventName"] == "ListMultiRegionConflicts"
                          and not r.get("errorCode")]  # the admin's read is recorded too
        assert [(r["userIdentity"]["arn"], r["readOnly"]) for r in listed_records] == [
            (ONCALL_SESSION, True)]
        promoted = [r for r in records if r["eventName"] == "PromoteReplicaKey"
                    and not r.get("errorCode")]
        assert len(promoted) == 1
        assert promoted[0]["additionalEventData"]["promotedBy"] == ONCALL_SESSION
