"""The audit stream a consumer follows: ``GET /_kms/audit`` and ``kms audit tail``.

Each call made through boto3 appears once, in order, as AWS's CloudTrail record, while a
long-poll follower runs, across a node restart and a reset; records of each operation
family have AWS's shapes; nothing secret appears in any record or log line.
"""

from __future__ import annotations

import base64
import json
import queue
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.conftest import ACCOUNT, REGION, client_for
from tests.support.expect import eventually
from tests.support.secured import ALICE, ALLOW_ALL
from tests.support.server import ServerProcess

READ = "ReadAuditStream"
AWS_DATE = re.compile(r"^[A-Z][a-z]{2} \d{1,2}, \d{4}, \d{1,2}:\d\d:\d\d [AP]M$")
EVENT_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


# -- reading the stream -------------------------------------------------------------------
def audit(url: str, *, after: str = "", limit: int = 1000, wait: float = 0,
          region: str | None = None, cred: tuple[str, str] | None = None,
          account: str | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of one read, SigV4-signed with ``cred`` if given."""
    query = {"limit": str(limit)}
    if after:
        query["after"] = after
    if account:
        query["account"] = account
    if wait:
        query["wait"] = str(wait)
    if region:
        query["region"] = region
    full = f"{url}/_kms/audit?{urllib.parse.urlencode(query)}"
    headers: dict[str, str] = {}
    if cred is not None:
        from botocore.awsrequest import AWSRequest

        req = AWSRequest(method="GET", url=full)
        SigV4Auth(Credentials(*cred), "kms", region or REGION).add_auth(req)
        headers = dict(req.headers.items())
    try:
        with urllib.request.urlopen(urllib.request.Request(full, headers=headers),
                                    timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def read_all(url: str, **kw: Any) -> list[dict[str, Any]]:
    """Every record from the start (several pages if need be)."""
    out: list[dict[str, Any]] = []
    cursor = ""
    while True:
        status, body = audit(url, after=cursor, **kw)
        assert status == 200, body
        out += body["Records"]
        cursor = body["NextCursor"]
        if not body["Records"]:
            return out


def calls(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of API calls (not the stream's own reads)."""
    return [r for r in records if r["eventName"] != READ]


def rid(response_or_error: Any) -> str:
    meta = (response_or_error.response if isinstance(response_or_error, ClientError)
            else response_or_error)["ResponseMetadata"]
    return str(meta["RequestId"])


class Follower:
    """A consumer long-polling the stream in a thread, resuming from its cursor when the
    node is away (connection refused while it restarts)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.records: list[dict[str, Any]] = []
        self.refusals: list[dict[str, Any]] = []
        self.cursor = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = audit(self.url, after=self.cursor, wait=2)
            except OSError:  # the node is restarting: ask again
                self._stop.wait(0.05)
                continue
            if status != 200:
                self.refusals.append(body)
                return
            self.records += body["Records"]
            self.cursor = body["NextCursor"]

    def request_ids(self) -> list[str]:
        return [r["requestID"] for r in calls(self.records)]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "d", log_path=tmp_path / "node.log").start()
    yield server
    server.stop()


# -- following ----------------------------------------------------------------------------
def test_a_follower_sees_each_call_once_in_order_across_a_restart(node: ServerProcess) -> None:
    kms = client_for(node.url)
    follower = Follower(node.url)
    try:
        made: list[str] = []
        key = kms.create_key(Description="followed")
        made.append(rid(key))
        key_id = key["KeyMetadata"]["KeyId"]
        for i in range(5):
            made.append(rid(kms.encrypt(KeyId=key_id, Plaintext=b"p%d" % i)))
        with pytest.raises(ClientError) as failed:
            kms.describe_key(KeyId="alias/missing")
        made.append(rid(failed.value))
        eventually(lambda: follower.request_ids() == made, "the follower to see every call")

        node.stop()
        node.start()
        kms = client_for(node.url)
        for _ in range(3):
            made.append(rid(kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")))
        made.append(rid(kms.disable_key(KeyId=key_id)))
        eventually(lambda: follower.request_ids() == made, "the calls made after the restart")
    finally:
        follower.stop()
    assert follower.refusals == []
    ids = [r["eventID"] for r in follower.records]
    assert len(ids) == len(set(ids))  # nothing shown twice, reads included
    # A consumer starting again from the beginning sees exactly the same records.
    assert read_all(node.url)[:len(follower.records)] == follower.records


def test_a_reset_expires_old_cursors_and_new_ones_work(server: ServerProcess, kms: Any) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    status, first = audit(server.url)
    assert status == 200 and [r["eventName"] for r in calls(first["Records"])] == ["CreateKey"]
    old = first["NextCursor"]

    held: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
    status, caught_up = audit(server.url, after=old)  # past its own read's record
    waiting = threading.Thread(target=lambda: held.put(audit(server.url,
                                                             after=caught_up["NextCursor"],
                                                             wait=15)))
    waiting.start()
    server.reset()
    waiting.join()
    status, body = held.get()
    assert status == 410 and body["__type"] == "ExpiredCursorException"

    for cursor in (old, caught_up["NextCursor"]):
        status, body = audit(server.url, after=cursor)
        assert status == 410, body
        assert body["__type"] == "ExpiredCursorException"
        assert "reset" in body["message"] and "without 'after'" in body["message"]

    new_key = kms.create_key()["KeyMetadata"]["KeyId"]
    status, fresh = audit(server.url)
    assert status == 200
    names = [(r["eventName"], r.get("errorCode")) for r in fresh["Records"]]
    # after the reset: the refused reads (audited), then the new key; the old key is gone
    assert names == [(READ, "ExpiredCursorException")] * 3 + [("CreateKey", None)]
    assert key_id not in json.dumps(fresh) and new_key in json.dumps(fresh)
    status, after_fresh = audit(server.url, after=fresh["NextCursor"])
    assert status == 200 and calls(after_fresh["Records"]) == []


def test_a_restored_data_dir_refuses_cursors_of_the_history_it_lost(node: ServerProcess,
                                                                    tmp_path: Path) -> None:
    import shutil

    kms = client_for(node.url)
    kms.create_key(Description="before the backup")
    node.stop()
    shutil.copytree(node.data_dir, tmp_path / "backup")
    node.start()
    kms = client_for(node.url)
    lost = kms.create_key(Description="lost by the restore")
    status, seen = audit(node.url)
    assert status == 200 and rid(lost) in json.dumps(seen)
    node.stop()
    shutil.rmtree(node.data_dir)
    shutil.copytree(tmp_path / "backup", node.data_dir)
    node.start()
    kms = client_for(node.url)
    for _ in range(4):  # the same seqs again, holding other rows
        kms.create_key(Description="after the restore")
    status, body = audit(node.url, after=seen["NextCursor"])
    assert (status, body["__type"]) == (410, "ExpiredCursorException")
    assert "restored" in body["message"]
    assert rid(lost) not in json.dumps(read_all(node.url))


def test_an_unknown_operation_is_recorded(server: ServerProcess) -> None:
    req = urllib.request.Request(server.url + "/", data=b"{}", method="POST", headers={
        "X-Amz-Target": "TrentService.NoSuchThing",
        "Content-Type": "application/x-amz-json-1.1"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    request_id = err.value.headers["x-amzn-RequestId"]
    r = [r for r in read_all(server.url) if r["requestID"] == request_id]
    assert [(x["eventName"], x["errorCode"]) for x in r] == \
        [("NoSuchThing", "UnknownOperationException")]


def test_reading_the_stream_never_feeds_a_loop_of_reads(server: ServerProcess, kms: Any) -> None:
    made = kms.create_key()
    status, first = audit(server.url)  # returns a call: this read is audited
    assert [r["requestID"] for r in first["Records"]] == [rid(made)]
    status, second = audit(server.url, after=first["NextCursor"])  # only that read's record
    assert [(r["eventName"], r["requestParameters"]) for r in second["Records"]] == \
        [(READ, {"limit": "1000"})]
    assert second["Records"][0]["readOnly"] is True
    status, third = audit(server.url, after=second["NextCursor"], wait=0.2)
    assert (status, third["Records"]) == (200, [])  # the read of a read left no record
    assert third["NextCursor"] == second["NextCursor"]


def test_bad_reads_answer_aws_errors_and_change_nothing(server: ServerProcess, kms: Any) -> None:
    for query, message in (({"after": "nonsense"}, "at 'after' failed to satisfy constraint"),
                           ({"limit": "0"}, "at 'limit' failed to satisfy constraint"),
                           ({"wait": "99"}, "at 'wait' failed to satisfy constraint"),
                           ({"region": "xx-nowhere-1"}, "is not hosted by this node")):
        url = f"{server.url}/_kms/audit?{urllib.parse.urlencode(query)}"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=10)
        body = json.loads(err.value.read())
        assert err.value.code == 400
        assert body["__type"] == "ValidationException" and message in body["message"]
    records = read_all(server.url)
    assert [(r["eventName"], r["errorCode"]) for r in records[:4]] == \
        [(READ, "ValidationException")] * 4
    assert kms.list_keys()["Keys"] == []


# -- what each record says ----------------------------------------------------------------
def by_request(records: list[dict[str, Any]], response: Any) -> dict[str, Any]:
    found = [r for r in records if r["requestID"] == rid(response)]
    assert len(found) == 1, found
    return found[0]


def test_records_of_each_operation_family_have_awss_shapes(server: ServerProcess, kms: Any,
                                                           raw_kms: Any) -> None:
    created = kms.create_key(Description="audited", Tags=[{"TagKey": "t", "TagValue": "v"}])
    arn, key_id = created["KeyMetadata"]["Arn"], created["KeyMetadata"]["KeyId"]
    enc = kms.encrypt(KeyId=key_id, Plaintext=b"x", EncryptionContext={"Dept": "Eng"})
    dec = kms.decrypt(CiphertextBlob=enc["CiphertextBlob"], EncryptionContext={"Dept": "Eng"})
    gdk = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    signing = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    sign = kms.sign(KeyId=signing["KeyId"], Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    alias = kms.create_alias(AliasName="alias/audited", TargetKeyId=key_id)
    tag = kms.tag_resource(KeyId=key_id, Tags=[{"TagKey": "k2", "TagValue": "v2"}])
    kms.disable_key(KeyId=key_id)
    with pytest.raises(ClientError) as failed:
        kms.encrypt(KeyId=key_id, Plaintext=b"x")
    with pytest.raises(ClientError) as invalid:
        raw_kms.generate_random(NumberOfBytes=2000)
    sched = kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    records = read_all(server.url)

    for r in calls(records):
        assert r["eventVersion"] == "1.11" and r["eventSource"] == "kms.amazonaws.com"
        assert EVENT_TIME.match(r["eventTime"]) and r["awsRegion"] == REGION
        assert r["userIdentity"]["type"] == "Root"
        assert r["userIdentity"]["arn"] == f"arn:aws:iam::{ACCOUNT}:root"
        assert r["eventType"] == "AwsApiCall" and r["managementEvent"] is True
        assert r["eventCategory"] == "Management" and r["recipientAccountId"] == ACCOUNT
        assert r["sourceIPAddress"] == "127.0.0.1" and r["userAgent"].startswith("Boto3/")

    r = by_request(records, created)
    assert r["requestParameters"] == {
        "description": "audited", "tags": [{"tagKey": "t", "tagValue": "v"}],
        "keySpec": "SYMMETRIC_DEFAULT", "customerMasterKeySpec": "SYMMETRIC_DEFAULT",
        "keyUsage": "ENCRYPT_DECRYPT", "origin": "AWS_KMS",
        "bypassPolicyLockoutSafetyCheck": False}
    md = r["responseElements"]["keyMetadata"]
    assert (md["keyId"], md["arn"], md["keyState"], md["description"]) == \
        (key_id, arn, "Enabled", "audited")
    assert AWS_DATE.match(md["creationDate"]) and r["readOnly"] is False

    r = by_request(records, enc)
    assert r["requestParameters"] == {"keyId": key_id, "encryptionContext": {"Dept": "Eng"},
                                      "encryptionAlgorithm": "SYMMETRIC_DEFAULT"}
    assert r["responseElements"] is None and r["readOnly"] is True
    assert re.fullmatch(r"[0-9a-f]{64}", r["additionalEventData"]["keyMaterialId"])
    assert r["resources"] == [{"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": arn}]

    r = by_request(records, dec)
    assert r["requestParameters"] == {"encryptionContext": {"Dept": "Eng"},
                                      "encryptionAlgorithm": "SYMMETRIC_DEFAULT"}
    assert r["responseElements"] is None and r["resources"][0]["ARN"] == arn

    r = by_request(records, gdk)
    assert r["requestParameters"] == {"keyId": key_id, "keySpec": "AES_256"}
    assert r["responseElements"] is None

    r = by_request(records, sign)
    assert r["requestParameters"] == {"keyId": signing["KeyId"],
                                      "signingAlgorithm": "ECDSA_SHA_256"}
    assert r["responseElements"] is None

    r = by_request(records, alias)
    assert r["requestParameters"] == {"aliasName": "alias/audited", "targetKeyId": key_id}
    assert r["responseElements"] is None and r["readOnly"] is False

    r = by_request(records, tag)
    assert r["requestParameters"] == {"keyId": key_id,
                                      "tags": [{"tagKey": "k2", "tagValue": "v2"}]}
    assert r["responseElements"] is None

    r = by_request(records, failed.value)
    assert r["errorCode"] == "DisabledException"
    assert r["errorMessage"] == failed.value.response["Error"]["Message"]
    assert r["responseElements"] is None and r["resources"][0]["ARN"] == arn

    r = by_request(records, invalid.value)
    assert r["eventName"] == "GenerateRandom" and r["errorCode"] == "ValidationException"
    assert r["errorMessage"] == invalid.value.response["Error"]["Message"]
    assert r["requestParameters"] is None

    r = by_request(records, sched)
    assert r["requestParameters"] == {"keyId": key_id, "pendingWindowInDays": 7}
    elements = r["responseElements"]
    assert (elements["keyId"], elements["keyState"], elements["pendingWindowInDays"]) == \
        (arn, "PendingDeletion", 7)
    assert AWS_DATE.match(elements["deletionDate"])


def test_service_events_are_aws_service_event_records(server: ServerProcess, kms: Any) -> None:
    key = kms.create_key()["KeyMetadata"]
    kms.enable_key_rotation(KeyId=key["KeyId"], RotationPeriodInDays=90)
    kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    kms.cancel_key_deletion(KeyId=key["KeyId"])
    kms.enable_key(KeyId=key["KeyId"])
    server.post("/_kms/clock", {"advance_seconds": 91 * 86400})
    kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    server.post("/_kms/clock", {"advance_seconds": 8 * 86400})
    service = [r for r in read_all(server.url) if r["eventType"] == "AwsServiceEvent"]
    assert [r["eventName"] for r in service] == ["RotateKey", "DeleteKey"]
    for r in service:
        assert r["userIdentity"] == {"accountId": ACCOUNT, "invokedBy": "AWS Internal"}
        assert r["sourceIPAddress"] == r["userAgent"] == "AWS Internal"
        assert r["requestParameters"] is None and r["responseElements"] is None
        assert r["serviceEventDetails"]["keyId"] == key["KeyId"]
        assert r["resources"][0]["ARN"] == key["Arn"] and r["readOnly"] is False
    assert service[0]["serviceEventDetails"]["rotationType"] == "AUTOMATIC"


# -- a secured node -----------------------------------------------------------------------
AUDITOR = ("AKIAAUDITOR000000001", "auditor-secret-key")
MALLORY = ("AKIAMALLORY000000001", "mallory-secret-key")
# The auditor (an audit reader) and alice, whom every config here names.
AUDITOR_AND_ALICE = f"""
account_id = "{ACCOUNT}"
audit_readers = ["arn:aws:iam::{ACCOUNT}:user/auditor"]
[[principals]]
arn = "arn:aws:iam::{ACCOUNT}:user/auditor"
access_key_id = "{AUDITOR[0]}"
secret_access_key = "{AUDITOR[1]}"
[[principals]]
arn = "arn:aws:iam::{ACCOUNT}:user/alice"
access_key_id = "{ALICE[0]}"
secret_access_key = "{ALICE[1]}"
policies = ['{ALLOW_ALL}']
"""
SECURED = AUDITOR_AND_ALICE + f"""[[principals]]
arn = "arn:aws:iam::{ACCOUNT}:user/mallory"
access_key_id = "{MALLORY[0]}"
secret_access_key = "{MALLORY[1]}"
"""


def secured_node(tmp_path: Path, config: str) -> ServerProcess:
    """A non-dev node on ``config``, started."""
    (tmp_path / "kms.toml").write_text(config)
    return ServerProcess(tmp_path / "d", dev=False,
                         extra=["--config", str(tmp_path / "kms.toml")]).start()


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


# -- no secrets ---------------------------------------------------------------------------
def test_no_plaintext_data_key_or_material_in_any_record_or_log_line(node: ServerProcess,
                                                                      ) -> None:
    kms = client_for(node.url)
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    plaintext = b"the-plaintext-nobody-may-see-7c1f"
    blob = kms.encrypt(KeyId=key_id, Plaintext=plaintext)["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == plaintext
    data_key = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    pair = kms.generate_data_key_pair(KeyId=key_id, KeyPairSpec="ECC_NIST_P256")
    mac_key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    message = b"a-message-to-mac-9d2e"
    mac = kms.generate_mac(KeyId=mac_key["KeyId"], Message=message,
                           MacAlgorithm="HMAC_SHA_256")["Mac"]
    random = kms.generate_random(NumberOfBytes=32)["Plaintext"]
    secrets = [plaintext, message, data_key["Plaintext"], data_key["CiphertextBlob"], blob,
               pair["PrivateKeyPlaintext"], pair["PublicKey"], mac, random]
    records = json.dumps(read_all(node.url))
    logs = (node.log_path or Path()).read_text()
    assert len(calls(json.loads(records))) == 8
    for secret in secrets:
        for form in (secret, base64.b64encode(secret), secret.hex().encode()):
            text = form.decode("latin-1")
            assert text not in records and text not in logs


# -- kms audit tail -----------------------------------------------------------------------
def tail(url: str, *args: str, env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "regions.cli", "audit", "tail",
                           "--endpoint", url, *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_kms_audit_tail_prints_filters_and_follows(server: ServerProcess, kms: Any) -> None:
    key = kms.create_key(Description="tailed")["KeyMetadata"]
    kms.encrypt(KeyId=key["KeyId"], Plaintext=b"x")
    with pytest.raises(ClientError):
        kms.describe_key(KeyId="alias/absent")
    other = client_for(server.url, region="eu-west-1")
    other.create_key()

    out = tail(server.url)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if READ not in line]
    assert [line.split()[1:3] for line in lines] == [
        [REGION, "CreateKey"], [REGION, "Encrypt"], [REGION, "DescribeKey"]]
    assert all(EVENT_TIME.match(line.split()[0]) for line in lines)
    assert lines[1].split()[3:5] == [f"arn:aws:iam::{ACCOUNT}:root", key["KeyId"]]
    assert lines[2].endswith("NotFoundException: Alias arn:aws:kms:us-east-1:"
                             f"{ACCOUNT}:alias/absent is not found.")

    errors = tail(server.url, "--errors").stdout.splitlines()
    assert len(errors) == 1 and "DescribeKey" in errors[0]
    keyed = tail(server.url, "--key", key["Arn"], "--json").stdout.splitlines()
    assert [json.loads(line)["eventName"] for line in keyed] == ["CreateKey", "Encrypt"]
    assert tail(server.url, "--since", "2999-01-01T00:00:00Z").stdout == ""

    both = tail(server.url, "--region", REGION, "--region", "eu-west-1", "--event-name",
                "CreateKey").stdout.splitlines()
    assert sorted(line.split()[1] for line in both) == ["eu-west-1", REGION]

    follow = subprocess.Popen([sys.executable, "-m", "regions.cli", "audit", "tail",
                               "--endpoint", server.url, "--follow", "--json",
                               "--event-name", "TagResource"],
                              stdout=subprocess.PIPE, text=True)
    seen: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [seen.put(line) for line in follow.stdout or ()],
                              daemon=True)
    reader.start()
    try:
        tagged = kms.tag_resource(KeyId=key["KeyId"], Tags=[{"TagKey": "a", "TagValue": "b"}])
        line = seen.get(timeout=30)
        assert json.loads(line)["requestID"] == rid(tagged)
    finally:
        follow.terminate()
        follow.wait(timeout=15)


def test_a_replica_region_records_its_replica_s_creation_and_sync(server: ServerProcess,
                                                                   kms: Any) -> None:
    primary = kms.create_key(MultiRegion=True)["KeyMetadata"]
    replicated = kms.replicate_key(KeyId=primary["KeyId"], ReplicaRegion="eu-west-1")
    replica_arn = replicated["ReplicaKeyMetadata"]["Arn"]

    def replica_records() -> list[dict[str, Any]]:
        got = [r for r in read_all(server.url, region="eu-west-1")
               if r["eventType"] == "AwsServiceEvent"]
        return got if {"CreateKey", "SynchronizeMultiRegionKey"} <= \
            {r["eventName"] for r in got} else []

    records = eventually(replica_records, "the replica's service records")
    for r in records:
        assert r["awsRegion"] == "eu-west-1"
        assert r["userIdentity"] == {"accountId": ACCOUNT, "invokedBy": "AWS Internal"}
        assert r["resources"][0]["ARN"] == replica_arn
    primary_side = by_request(read_all(server.url), replicated)
    assert primary_side["eventName"] == "ReplicateKey"
    assert primary_side["requestParameters"] == {"keyId": primary["KeyId"],
                                                 "replicaRegion": "eu-west-1"}
    assert primary_side["responseElements"]["replicaKeyMetadata"]["arn"] == replica_arn


# -- what reading costs: one fact per consumer per interval -------------------------------
def reads_of(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["eventName"] == READ]


def test_a_consumers_reads_are_audited_once_per_interval_then_summarized(
        node: ServerProcess) -> None:
    from tests.support.expect import advance

    kms = client_for(node.url)
    kms.create_key(Description="one")
    status, first = audit(node.url)  # the interval's first read: audited on its own
    kms.create_key(Description="two")
    status, second = audit(node.url, after=first["NextCursor"])  # counted
    assert [r["eventName"] for r in second["Records"]] == [READ, "CreateKey"]
    kms.create_key(Description="three")
    status, third = audit(node.url, after=second["NextCursor"])  # counted
    assert [r["eventName"] for r in third["Records"]] == ["CreateKey"]  # no fact of read 2
    status, idle = audit(node.url, after=third["NextCursor"])
    assert (status, idle["Records"]) == (200, [])  # nothing was written for reads 2 and 3
    advance(node, 61)  # the interval is over (the node's clock)
    made = kms.create_key(Description="four")
    status, fourth = audit(node.url, after=idle["NextCursor"])  # writes the summary first
    assert [r["requestID"] for r in fourth["Records"]] == [rid(made)]
    status, fifth = audit(node.url, after=fourth["NextCursor"])
    summary, fourth_read = fifth["Records"]
    assert summary["eventName"] == READ and summary["readOnly"] is True
    assert summary["additionalEventData"] == {"summarizedReads": 2, "summarizedRecords": 3,
                                              "summaryWindowSeconds": 60.0}
    assert summary["requestParameters"] is None and "errorCode" not in summary
    assert (fourth_read["eventName"], fourth_read["requestParameters"]) == \
        (READ, {"after": idle["NextCursor"], "limit": "1000"})
    status, sixth = audit(node.url, after=fifth["NextCursor"])  # read 5 returned only reads
    assert (status, sixth["Records"]) == (200, [])

    kms.create_key(Description="five")
    status, seventh = audit(node.url, after=sixth["NextCursor"])  # counted in read 4's interval
    node.stop()  # a stopping node writes the summaries still open
    node.start()
    status, after_restart = audit(node.url, after=seventh["NextCursor"])
    assert status == 200
    assert [r.get("additionalEventData") for r in after_restart["Records"]] == [
        {"summarizedReads": 1, "summarizedRecords": 1, "summaryWindowSeconds": 60.0}]
    everything = read_all(node.url)  # its first page is a new interval's first read
    assert [r.get("additionalEventData", {}).get("summarizedReads")
            for r in reads_of(everything)] == [None, 2, None, 1, None]  # 9 reads, 5 facts


# -- cross-account calls: a record for each account ---------------------------------------
OTHER = "444455556666"
OLGA = ("AKIAOLGA000000000001", "olga-secret-key")
CROSS = AUDITOR_AND_ALICE + f"""[[principals]]
arn = "arn:aws:iam::{OTHER}:user/olga"
access_key_id = "{OLGA[0]}"
secret_access_key = "{OLGA[1]}"
policies = ['{ALLOW_ALL}']
"""


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
