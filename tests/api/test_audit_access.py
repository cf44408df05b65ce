"""Who may read the audit stream and what each account sees, on secured nodes: audit readers
only (others refused, and their refusals and bad signatures recorded), a cross-account call
gives each account its record, and the ``account`` filter, in reads and ``kms audit tail``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import ACCOUNT, REGION, client_for
from tests.support.audit_stream import (
    AUDITOR,
    CROSS,
    MALLORY,
    OLGA,
    OTHER,
    READ,
    SECURED,
    audit,
    by_request,
    calls,
    read_all,
    rid,
    secured_node,
    tail,
)
from tests.support.secured import ALICE


def test_a_secured_node_serves_audit_readers_only_and_records_bad_signatures(
        tmp_path: Path) -> None:
    node = secured_node(tmp_path, SECURED)
    try:
        alice = client_for(node.url, access_key=ALICE[0], secret=ALICE[1])
        made = alice.create_key(Description="alice's")
        forged = client_for(node.url, access_key=ALICE[0], secret="not-alices-secret")
        with pytest.raises(ClientError) as bad:
            forged.list_keys()
        assert bad.value.response["Error"]["Code"] == "InvalidSignatureException"
        mallory = client_for(node.url, access_key=MALLORY[0], secret=MALLORY[1])
        with pytest.raises(ClientError) as refused_call:
            mallory.describe_key(KeyId=made["KeyMetadata"]["KeyId"])
        assert refused_call.value.response["Error"]["Code"] == "AccessDeniedException"

        status, unsigned = audit(node.url)
        assert (status, unsigned["__type"]) == (400, "MissingAuthenticationTokenException")
        status, denied = audit(node.url, cred=ALICE)
        assert (status, denied["__type"]) == (403, "AccessDeniedException")
        assert "alice" in denied["message"] and "audit_readers" in denied["message"]

        records = read_all(node.url, cred=AUDITOR)
        r = by_request(records, made)
        assert r["userIdentity"]["type"] == "IAMUser"
        assert r["userIdentity"]["arn"] == f"arn:aws:iam::{ACCOUNT}:user/alice"
        assert r["userIdentity"]["userName"] == "alice"
        assert r["userIdentity"]["accessKeyId"] == ALICE[0]
        assert r["userIdentity"]["principalId"].startswith("AIDA")
        r = by_request(records, refused_call.value)
        # CloudTrail's code for an authorization refusal is "AccessDenied" (the client got
        # AccessDeniedException), with the caller's identity and AWS's message.
        assert (r["eventName"], r["errorCode"]) == ("DescribeKey", "AccessDenied")
        assert r["errorMessage"] == refused_call.value.response["Error"]["Message"]
        assert (r["userIdentity"]["type"], r["userIdentity"]["arn"]) == \
            ("IAMUser", f"arn:aws:iam::{ACCOUNT}:user/mallory")
        assert r["resources"][0]["ARN"] == made["KeyMetadata"]["Arn"]
        r = by_request(records, bad.value)
        assert r["eventName"] == "ListKeys" and r["errorCode"] == "InvalidSignatureException"
        assert r["userIdentity"] == {"type": "Unknown", "accessKeyId": ALICE[0]}
        reads = [r for r in records if r["eventName"] == READ]
        assert [(r["errorCode"], r["userIdentity"].get("arn")) for r in reads[:2]] == [
            ("MissingAuthenticationTokenException", None),
            ("AccessDenied", f"arn:aws:iam::{ACCOUNT}:user/alice")]

        # kms audit tail signs with the usual credential chain (here: the environment)
        env = {"AWS_ACCESS_KEY_ID": AUDITOR[0], "AWS_SECRET_ACCESS_KEY": AUDITOR[1],
               "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
        out = tail(node.url, "--event-name", "CreateKey", env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[1:5] == [REGION, "CreateKey",
                                            f"arn:aws:iam::{ACCOUNT}:user/alice",
                                            made["KeyMetadata"]["KeyId"]]
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = ALICE
        refused = tail(node.url, env=env)
        assert refused.returncode == 1 and "AccessDeniedException" in refused.stderr
    finally:
        node.stop()


# -- cross-account calls: a record for each account ---------------------------------------
def test_a_cross_account_call_gives_each_account_its_record(tmp_path: Path) -> None:
    node = secured_node(tmp_path, CROSS)
    try:
        alice = client_for(node.url, access_key=ALICE[0], secret=ALICE[1])
        policy = json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
             "Action": "kms:*", "Resource": "*"},
            {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{OTHER}:root"},
             "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*"}]})
        arn = alice.create_key(Policy=policy)["KeyMetadata"]["Arn"]
        olga = client_for(node.url, access_key=OLGA[0], secret=OLGA[1])
        used = olga.encrypt(KeyId=arn, Plaintext=b"cross")
        own = alice.encrypt(KeyId=arn, Plaintext=b"own")

        records = read_all(node.url, cred=AUDITOR)
        mine = [r for r in records if r["requestID"] == rid(used)]
        assert [r["recipientAccountId"] for r in mine] == [ACCOUNT, OTHER]
        owner, caller = mine
        assert owner["sharedEventID"] == caller["sharedEventID"]
        assert owner["eventID"] != caller["eventID"]
        assert owner["userIdentity"] == {"type": "AWSAccount", "principalId":
                                         owner["userIdentity"]["principalId"],
                                         "accountId": OTHER, "accessKeyId": OLGA[0]}
        assert caller["userIdentity"]["type"] == "IAMUser"
        assert caller["userIdentity"]["arn"] == f"arn:aws:iam::{OTHER}:user/olga"
        for r in mine:
            assert r["resources"] == [{"accountId": ACCOUNT, "type": "AWS::KMS::Key",
                                       "ARN": arn}]
            assert (r["eventName"], r["requestParameters"]["keyId"]) == ("Encrypt", arn)
        usage = alice.get_key_last_usage(KeyId=arn)  # the key owner's record is the one named
        assert usage["KeyLastUsage"]["CloudTrailEventId"] in (
            r["eventID"] for r in records if r["requestID"] == rid(own))
        one = [r for r in records if r["requestID"] == rid(own)]
        assert len(one) == 1 and "sharedEventID" not in one[0]

        for account, expected in ((OTHER, caller), (ACCOUNT, owner)):
            view = read_all(node.url, cred=AUDITOR, account=account)
            assert {r["recipientAccountId"] for r in view} == {account}
            assert [r for r in view if r["requestID"] == rid(used)] == [expected]
        assert not [r for r in read_all(node.url, cred=AUDITOR, account=OTHER)
                    if r["requestID"] == rid(own)]
        paged, cursor = [], ""  # a page holds whole facts: both records of a cross call
        while True:
            status, page = audit(node.url, cred=AUDITOR, after=cursor, limit=1)
            assert status == 200 and len({r["requestID"] for r in page["Records"]}) <= 1
            paged += page["Records"]
            cursor = page["NextCursor"]
            if not page["Records"]:
                break
        assert calls(paged)[:len(calls(records))] == calls(records)  # then GetKeyLastUsage
        again = olga.encrypt(KeyId=arn, Plaintext=b"again")  # read from the recent ring
        status, page = audit(node.url, cred=AUDITOR, after=cursor, limit=1)
        assert [(r["requestID"], r["recipientAccountId"]) for r in page["Records"]] == \
            [(rid(again), ACCOUNT), (rid(again), OTHER)]
        status, bad = audit(node.url, cred=AUDITOR, account="12")
        assert (status, bad["__type"]) == (400, "ValidationException")
        assert "at 'account' failed to satisfy constraint" in bad["message"]
        env = {"AWS_ACCESS_KEY_ID": AUDITOR[0], "AWS_SECRET_ACCESS_KEY": AUDITOR[1],
               "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
        out = tail(node.url, "--json", "--account", OTHER, "--event-name", "Encrypt", env=env)
        assert out.returncode == 0, out.stderr
        lines = [json.loads(line) for line in out.stdout.splitlines()]
        assert lines[0] == caller and [r["requestID"] for r in lines] == [rid(used), rid(again)]
        assert {r["recipientAccountId"] for r in lines} == {OTHER}
    finally:
        node.stop()
