"""STS GetCallerIdentity on the node's endpoint: boto3's sts client, the AWS CLI and a
presigned GET tell who a credential is; refusals are STS's XML errors; every call leaves one
audit record (eventSource sts.amazonaws.com), failed authentications under the flood rule;
a call signed for a peer's region is answered by that region's node."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.api.test_principals import ACCOUNT, ALICE, BOB, CONFIG, DEPLOYER, OTHER, write_config
from tests.support import sigv4_signer as s4
from tests.support.expect import eventually
from tests.support.secured import peered_pair, secured_fixture
from tests.support.server import ServerProcess

REGION = "us-east-1"


def sts_for(server: ServerProcess, cred: tuple[str, str], region: str = REGION) -> Any:
    return boto3.client("sts", endpoint_url=server.url, region_name=region,
                        aws_access_key_id=cred[0], aws_secret_access_key=cred[1],
                        config=Config(retries={"max_attempts": 1}))


def identity(server: ServerProcess, cred: tuple[str, str]) -> dict[str, str]:
    doc = sts_for(server, cred).get_caller_identity()
    return {k: doc[k] for k in ("Arn", "UserId", "Account")}


secured = secured_fixture("sts", write_config)


def root_of(server: ServerProcess) -> tuple[str, str]:
    [c] = json.loads((server.data_dir / "credentials.json").read_text())["credentials"]
    return c["access_key_id"], c["secret_access_key"]


def test_boto3_sts_names_each_principal(secured: ServerProcess) -> None:
    alice = identity(secured, ALICE)
    assert alice["Arn"] == f"arn:aws:iam::{ACCOUNT}:user/alice"
    assert alice["Account"] == ACCOUNT
    assert alice["UserId"].startswith("AIDA") and len(alice["UserId"]) == 21
    assert alice["UserId"].isalnum() and alice["UserId"].isupper()
    deployer = identity(secured, DEPLOYER)
    assert deployer["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/deployer/ci-run"
    role_id, _, session = deployer["UserId"].partition(":")
    assert role_id.startswith("AROA") and len(role_id) == 21 and session == "ci-run"
    bob = identity(secured, BOB)
    assert (bob["Arn"], bob["Account"]) == (f"arn:aws:iam::{OTHER}:user/bob", OTHER)
    assert identity(secured, root_of(secured)) == {
        "Arn": f"arn:aws:iam::{ACCOUNT}:root", "UserId": ACCOUNT, "Account": ACCOUNT}
    assert identity(secured, ALICE) == alice  # stable


def test_user_ids_are_stable_across_restarts_and_nodes(secured: ServerProcess,
                                                       tmp_path: Path) -> None:
    other = ServerProcess(tmp_path / "d", dev=False,
                          extra=["--config", str(write_config(tmp_path))])
    other.start()
    try:
        assert identity(other, ALICE) == identity(secured, ALICE)
        assert identity(other, DEPLOYER) == identity(secured, DEPLOYER)
    finally:
        other.stop()


def sts_error(call: Any) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as info:
        call()
    resp = info.value.response
    return (resp["Error"]["Code"], resp["ResponseMetadata"]["HTTPStatusCode"],
            resp["Error"]["Message"])


def test_unknown_key_and_wrong_secret_are_stss_errors(secured: ServerProcess) -> None:
    assert sts_error(sts_for(secured, ("AKIANOBODY0000000001", "x")).get_caller_identity) == (
        "InvalidClientTokenId", 403, "The security token included in the request is invalid.")
    assert sts_error(sts_for(secured, (ALICE[0], "wrong")).get_caller_identity) == (
        "SignatureDoesNotMatch", 403,
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method. "
        "Consult the service documentation for details.")


def raw(url: str, data: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(url, data=data, headers=headers or {},
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def test_unsigned_form_post_is_missing_authentication(secured: ServerProcess) -> None:
    status, ctype, text = raw(secured.url + "/", b"Action=GetCallerIdentity&Version=2011-06-15",
                              {"Content-Type": "application/x-www-form-urlencoded"})
    assert (status, ctype) == (403, "text/xml")
    assert "<Code>MissingAuthenticationToken</Code>" in text
    assert "<Message>Request is missing Authentication Token</Message>" in text


def test_a_presigned_get_caller_identity_url_works_and_cannot_be_altered(
        secured: ServerProcess) -> None:
    url = sts_for(secured, ALICE).generate_presigned_url("get_caller_identity", ExpiresIn=60,
                                                      HttpMethod="GET")
    assert "X-Amz-Signature=" in url and "Authorization" not in url
    status, ctype, text = raw(url)
    assert (status, ctype) == (200, "text/xml"), text
    assert f"<Arn>arn:aws:iam::{ACCOUNT}:user/alice</Arn>" in text
    assert f"<Account>{ACCOUNT}</Account>" in text
    tampered = url.replace("Version=2011-06-15", "Version=2011-06-16")
    status, _, text = raw(tampered)
    assert status == 403 and "<Code>SignatureDoesNotMatch</Code>" in text


def signed_at(server: ServerProcess, minutes: float = 0,
              unsigned: tuple[str, ...] = ()) -> tuple[int, str, str]:
    """A GetCallerIdentity form POST signed by alice ``minutes`` from now (past < 0),
    leaving the ``unsigned`` headers out of the signature."""
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=minutes)
    req = s4.Request("POST", "/", headers=[
        ("Host", server.url.split("//", 1)[1]),
        ("Content-Type", "application/x-www-form-urlencoded")],
        body=b"Action=GetCallerIdentity&Version=2011-06-15")
    s4.sign_header(req, s4.Key(*ALICE, service="sts"), when=when, unsigned=unsigned)
    return raw(server.url + "/", req.body, dict(req.headers))


def test_an_unsigned_host_is_a_signature_that_does_not_match(secured: ServerProcess) -> None:
    """AWS answers a SignedHeaders without Host as an invalid signature (STS:
    SignatureDoesNotMatch, 403), not an incomplete one."""
    status, _, text = signed_at(secured, unsigned=("host",))
    assert status == 403, text
    assert "<Code>SignatureDoesNotMatch</Code>" in text
    assert ("<Message>'Host' or ':authority' must be a 'SignedHeader' in the AWS "
            "Authorization.</Message>") in text


STAMP = r"\d{8}T\d{6}Z"


def test_sts_allows_its_15_minutes_of_clock_skew_in_awss_words(secured: ServerProcess) -> None:
    """STS (unlike KMS's 5 minutes) takes a timestamp up to 15 minutes off, and says so."""
    for minutes in (-10, 10):
        status, _, text = signed_at(secured, minutes)
        assert status == 200 and f"<Arn>arn:aws:iam::{ACCOUNT}:user/alice</Arn>" in text, text
    status, _, text = signed_at(secured, -16)
    message = re.search(r"<Message>(.*)</Message>", text)
    assert status == 403 and "<Code>SignatureDoesNotMatch</Code>" in text and message
    assert re.fullmatch(rf"Signature expired: {STAMP} is now earlier than {STAMP} "
                        rf"\({STAMP} - 15 min\.\)", message.group(1)), message.group(1)
    status, _, text = signed_at(secured, 16)
    message = re.search(r"<Message>(.*)</Message>", text)
    assert status == 403 and message
    assert re.fullmatch(rf"Signature not yet current: {STAMP} is still later than {STAMP} "
                        rf"\({STAMP} \+ 15 min\.\)", message.group(1)), message.group(1)


def test_the_aws_cli_get_caller_identity(secured: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "empty"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "empty"), AWS_PAGER="",
               AWS_MAX_ATTEMPTS="1", AWS_ACCESS_KEY_ID=DEPLOYER[0])
    argv = ["aws", "sts", "get-caller-identity", "--endpoint-url", secured.url,
            "--region", REGION, "--output", "json"]
    good = subprocess.Popen(argv, env={**env, "AWS_SECRET_ACCESS_KEY": DEPLOYER[1]},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    bad = subprocess.Popen(argv, env={**env, "AWS_SECRET_ACCESS_KEY": "wrong"},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = good.communicate(timeout=60)
    assert good.returncode == 0, err
    doc = json.loads(out)
    assert doc["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/deployer/ci-run"
    assert doc["Account"] == ACCOUNT and doc["UserId"].endswith(":ci-run")
    _, err = bad.communicate(timeout=60)
    assert bad.returncode != 0
    assert ("An error occurred (SignatureDoesNotMatch) when calling the GetCallerIdentity "
            "operation") in err


def test_dev_names_the_configured_principal_else_the_root(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "d", dev=True,
                           extra=["--config", str(write_config(tmp_path))])
    server.start()
    try:
        alice = identity(server, (ALICE[0], "unchecked in --dev"))
        anyone = identity(server, ("AKIDANYONE", "x"))
        west = sts_for(server, ("AKIDANYONE", "x"), "eu-west-1").get_caller_identity()
    finally:
        server.stop()
    assert alice["Arn"] == f"arn:aws:iam::{ACCOUNT}:user/alice"
    assert anyone == {"Arn": f"arn:aws:iam::{ACCOUNT}:root", "UserId": ACCOUNT,
                      "Account": ACCOUNT}
    assert west["Arn"] == f"arn:aws:iam::{ACCOUNT}:root"


# -- audited ------------------------------------------------------------------------------
def audited_config(tmp_path: Path, node: str = "") -> Path:
    """The principals' config, alice an audit reader, and ``node`` settings."""
    settings = (f'audit_readers = ["arn:aws:iam::{ACCOUNT}:user/alice"]\n'
                + (f"[node]\n{node}\n" if node else ""))
    return write_config(tmp_path, CONFIG.replace("[[principals]]", settings + "[[principals]]", 1))


def audit_records(server: ServerProcess, region: str = REGION) -> list[dict[str, Any]]:
    """Every record of the node's audit stream, read as alice (an audit reader)."""
    out: list[dict[str, Any]] = []
    cursor = ""
    while True:
        query = {"limit": "1000", **({"after": cursor} if cursor else {})}
        url = f"{server.url}/_kms/audit?{urllib.parse.urlencode(query)}"
        req = AWSRequest(method="GET", url=url)
        SigV4Auth(Credentials(*ALICE), "kms", region).add_auth(req)
        status, _, text = raw(url, headers=dict(req.headers.items()))
        assert status == 200, text
        body = json.loads(text)
        out += body["Records"]
        cursor = body["NextCursor"]
        if not body["Records"]:
            return out


def request_id(response_or_error: Any) -> str:
    got = (response_or_error.response if isinstance(response_or_error, ClientError)
           else response_or_error)
    return str(got["ResponseMetadata"]["RequestId"])


def test_every_sts_call_leaves_one_sts_audit_record(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "d", dev=False,
                           extra=["--config", str(audited_config(tmp_path))]).start()
    try:
        ok = sts_for(server, DEPLOYER).get_caller_identity()
        with pytest.raises(ClientError) as forged:
            sts_for(server, (ALICE[0], "wrong")).get_caller_identity()
        with pytest.raises(ClientError) as unknown:
            sts_for(server, ("AKIANOBODY0000000001", "x")).get_caller_identity()
        with pytest.raises(ClientError) as other_action:
            sts_for(server, ALICE).get_session_token()
        unsigned = urllib.request.Request(
            server.url + "/", data=b"Action=GetCallerIdentity&Version=2011-06-15",
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        with pytest.raises(urllib.error.HTTPError) as bare:
            urllib.request.urlopen(unsigned, timeout=10)
        unsigned_id = bare.value.headers["x-amzn-RequestId"]
        posing = urllib.request.Request(  # a KMS call whose target names STS's operation
            server.url + "/", data=b"{}",
            headers={"Content-Type": "application/x-amz-json-1.1",
                     "X-Amz-Target": "TrentService.sts:GetCallerIdentity"})
        with pytest.raises(urllib.error.HTTPError) as kms_call:
            urllib.request.urlopen(posing, timeout=10)
        posing_id = kms_call.value.headers["x-amzn-RequestId"]
        records = audit_records(server)
    finally:
        server.stop()
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_id.setdefault(r["requestID"], []).append(r)
    expected = {
        request_id(ok): ("GetCallerIdentity", None, "AssumedRole"),
        request_id(forged.value): ("GetCallerIdentity", "SignatureDoesNotMatch", "Unknown"),
        request_id(unknown.value): ("GetCallerIdentity", "InvalidClientTokenId", "Unknown"),
        request_id(other_action.value): ("GetSessionToken", "InvalidAction", "IAMUser"),
        unsigned_id: ("GetCallerIdentity", "MissingAuthenticationToken", "Unknown"),
    }
    for rid, (name, code, kind) in expected.items():
        [r] = by_id[rid]  # one record per call
        assert (r["eventSource"], r["eventName"], r.get("errorCode")) == (
            "sts.amazonaws.com", name, code), r
        assert r["userIdentity"]["type"] == kind
        assert r["readOnly"] is True and r["eventType"] == "AwsApiCall"
        assert r["requestParameters"] is None and r["responseElements"] is None
        assert r["awsRegion"] == REGION and r["resources"] == []
    assert by_id[request_id(ok)][0]["userIdentity"]["arn"] == \
        f"arn:aws:sts::{ACCOUNT}:assumed-role/deployer/ci-run"
    assert by_id[request_id(forged.value)][0]["userIdentity"]["accessKeyId"] == ALICE[0]
    assert by_id[request_id(forged.value)][0]["errorMessage"] == \
        forged.value.response["Error"]["Message"]
    [posed] = by_id[posing_id]  # KMS's record, whatever its target claimed
    assert (posed["eventSource"], posed["eventName"], posed["errorCode"]) == (
        "kms.amazonaws.com", "sts:GetCallerIdentity", "MissingAuthenticationTokenException")
    # Besides, only the stream's own reads: an STS call changes nothing.
    assert {r["eventName"] for r in records if r["eventSource"] == "kms.amazonaws.com"
            and r["requestID"] != posing_id} == {"ReadAuditStream"}


def test_a_flood_of_failed_sts_authentications_is_summarized(tmp_path: Path) -> None:
    """The flood rule counts STS's failures as KMS's: past the per-window limit from one
    source they are counted, and the window's count becomes one summary record."""
    config = audited_config(tmp_path, "auth_failure_audit_limit = 2\n"
                                      "auth_failure_window_seconds = 3")
    server = ServerProcess(tmp_path / "d", dev=False, extra=["--config", str(config)]).start()
    try:
        forged = sts_for(server, (ALICE[0], "wrong"))
        for _ in range(5):
            with pytest.raises(ClientError) as info:
                forged.get_caller_identity()
            assert info.value.response["Error"]["Code"] == "SignatureDoesNotMatch"

        def summarized() -> list[dict[str, Any]]:
            return [r for r in audit_records(server)
                    if "summarizedAuthenticationFailures" in r.get("additionalEventData", {})]

        [summary] = eventually(summarized, "the window's summary record")
        records = audit_records(server)
    finally:
        server.stop()
    one_by_one = [r for r in records if r.get("errorCode") == "SignatureDoesNotMatch"
                  and "additionalEventData" not in r]
    assert len(one_by_one) == 2
    assert (summary["eventSource"], summary["eventName"], summary["errorCode"]) == (
        "sts.amazonaws.com", "GetCallerIdentity", "SignatureDoesNotMatch")
    assert summary["additionalEventData"]["summarizedAuthenticationFailures"] == 3


def test_failures_only_counted_when_the_node_stops_are_summarized_before_it_stops(
        tmp_path: Path) -> None:
    """A clean stop writes the open window's summary: failures only counted are never lost
    because the node stopped before the window ended."""
    config = audited_config(tmp_path, "auth_failure_audit_limit = 1\n"
                                      "auth_failure_window_seconds = 3600")
    server = ServerProcess(tmp_path / "d", dev=False, extra=["--config", str(config)]).start()
    try:
        forged = sts_for(server, (ALICE[0], "wrong"))
        for _ in range(3):
            with pytest.raises(ClientError):
                forged.get_caller_identity()
        server.stop()
        server.start()
        records = audit_records(server)
    finally:
        server.stop()
    summaries = [r["additionalEventData"]["summarizedAuthenticationFailures"] for r in records
                 if "summarizedAuthenticationFailures" in r.get("additionalEventData", {})]
    assert summaries == [2]


def test_sts_signed_for_a_peers_region_is_answered_by_that_region(tmp_path: Path) -> None:
    """Two secured region nodes peered with the same principals: GetCallerIdentity signed for
    eu-west-1 (header or presigned) and sent to us-east-1's node is forwarded, verified,
    audited and answered by eu-west-1's node."""
    with peered_pair(tmp_path, str(audited_config(tmp_path))) as (us, eu):
        via_us = sts_for(us, DEPLOYER, "eu-west-1")
        header_signed = via_us.get_caller_identity()
        assert header_signed["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/deployer/ci-run"
        url = via_us.generate_presigned_url("get_caller_identity", ExpiresIn=60,
                                            HttpMethod="GET")
        assert "eu-west-1" in url
        status, _, text = raw(url)
        assert status == 200, text
        assert f"<Account>{ACCOUNT}</Account>" in text
        with pytest.raises(ClientError) as forged:
            sts_for(us, (DEPLOYER[0], "wrong"), "eu-west-1").get_caller_identity()
        assert forged.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
        eu_records = audit_records(eu, "eu-west-1")
        us_records = audit_records(us)
    sts = [(r["awsRegion"], r["eventName"], r.get("errorCode")) for r in eu_records
           if r["eventSource"] == "sts.amazonaws.com"]
    assert sts == [("eu-west-1", "GetCallerIdentity", None)] * 2 + [
        ("eu-west-1", "GetCallerIdentity", "SignatureDoesNotMatch")]
    assert request_id(header_signed) in {r["requestID"] for r in eu_records}
    assert not [r for r in us_records if r["eventSource"] == "sts.amazonaws.com"]
    served = [(line["op"], line["principal"]) for line in eu.log_lines()
              if line.get("event") == "request" and line["op"].startswith("sts:")]
    deployer = f"arn:aws:sts::{ACCOUNT}:assumed-role/deployer/ci-run"
    assert served == [("sts:GetCallerIdentity", deployer)] * 2 + [
        ("sts:GetCallerIdentity", "anonymous")]
