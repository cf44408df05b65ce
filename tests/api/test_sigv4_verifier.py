"""The SigV4 verifier on a secured node, with a configured principal, against every signer:
botocore, the AWS CLI, the AWS Encryption SDK and an independent signer written from the
spec (tests/support/sigv4_signer.py): header and presigned forms, odd spacing, repeated
headers, query strings, non-ASCII; and the requests it must refuse, in AWS's words, each
leaving only its audit fact."""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from aws_encryption_sdk import CommitmentPolicy, EncryptionSDKClient, StrictAwsKmsMasterKeyProvider

from tests.api.test_principals import ACCOUNT, ALICE, write_config
from tests.conftest import client_for
from tests.support import sigv4_signer as s4
from tests.support.expect import eventually
from tests.support.secured import secured_fixture
from tests.support.server import ServerProcess

MISMATCH = ("The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. "
            "Consult the service documentation for details.")
KEY = s4.Key(*ALICE)


node = secured_fixture("verifier", write_config)


@pytest.fixture(scope="module")
def key_id(node: ServerProcess) -> str:
    kms = client_for(node.url, access_key=ALICE[0], secret=ALICE[1])
    return str(kms.create_key(Description="verifier")["KeyMetadata"]["KeyId"])


def call(node: ServerProcess, req: s4.Request) -> tuple[int, dict[str, Any]]:
    return s4.send(node.url, req)


def refused(node: ServerProcess, req: s4.Request) -> tuple[int, str, str]:
    """(status, AWS error code, message) of a refused request, which appends only its
    audit fact."""
    before = node.health()["log_seq"]
    status, doc = call(node, req)
    assert node.health()["log_seq"] == before + 1, doc  # the audit fact, nothing else
    return status, doc.get("__type", ""), doc.get("message", "")


# -- accepted ---------------------------------------------------------------------------------


def test_botocore_signs_as_the_configured_principal(node: ServerProcess, key_id: str) -> None:
    kms = client_for(node.url, access_key=ALICE[0], secret=ALICE[1])
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"x", EncryptionContext={"città": "Zürich"})
    out = kms.decrypt(CiphertextBlob=blob["CiphertextBlob"],
                      EncryptionContext={"città": "Zürich"})
    assert out["Plaintext"] == b"x"


def test_the_aws_cli_signs_as_the_configured_principal(node: ServerProcess, key_id: str,
                                                       tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "empty"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "empty"), AWS_PAGER="",
               AWS_MAX_ATTEMPTS="1", AWS_ACCESS_KEY_ID=ALICE[0],
               AWS_SECRET_ACCESS_KEY=ALICE[1])
    done = subprocess.run(["aws", "kms", "describe-key", "--key-id", key_id, "--endpoint-url",
                           node.url, "--region", "us-east-1", "--output", "text", "--query",
                           "KeyMetadata.Description"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "verifier"


def test_the_encryption_sdk_signs_as_the_configured_principal(
        node: ServerProcess, key_id: str, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", node.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ALICE[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ALICE[1])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    arn = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{key_id}"
    provider = StrictAwsKmsMasterKeyProvider(key_ids=[arn],
                                             botocore_session=botocore.session.Session())
    sdk = EncryptionSDKClient(commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
    message, _ = sdk.encrypt(source=b"envelope", key_provider=provider,
                             encryption_context={"tenant": "acme"})
    plain, header = sdk.decrypt(source=message, key_provider=provider)
    assert plain == b"envelope" and header.encryption_context["tenant"] == "acme"


def test_independent_signer_header_form(node: ServerProcess, key_id: str) -> None:
    req = s4.kms_request(node.url, "DescribeKey", {"KeyId": key_id})
    s4.sign_header(req, KEY)
    status, doc = call(node, req)
    assert status == 200 and doc["KeyMetadata"]["KeyId"] == key_id


def test_odd_spacing_repeated_headers_and_non_ascii(node: ServerProcess, key_id: str) -> None:
    req = s4.kms_request(node.url, "Encrypt", {
        "KeyId": key_id, "Plaintext": "aGk=", "EncryptionContext": {"naïve": "日本語"}},
        extra=[("X-Custom-Trace", "  first   value  "), ("x-custom-trace", "second\tvalue"),
               ("X-Note", "café ✓")])
    # Odd spacing in the Authorization header too: the verifier's slow path.
    s4.sign_header(req, KEY, authorization_format=(
        "AWS4-HMAC-SHA256   Credential={cred} ,SignedHeaders={signed},  Signature={sig}"))
    status, doc = call(node, req)
    assert status == 200, doc
    assert doc["KeyId"].endswith(key_id)


def test_a_signed_query_string_with_repeats_and_non_ascii(node: ServerProcess) -> None:
    req = s4.kms_request(node.url, "ListKeys", {"Limit": 1})
    req.query = [("zeta", "1"), ("alpha", "b"), ("alpha", "a"), ("ключ", "значение ü+"),
                 ("empty", "")]
    s4.sign_header(req, KEY)
    status, doc = call(node, req)
    assert status == 200 and "Keys" in doc


def test_the_presigned_form(node: ServerProcess, key_id: str) -> None:
    req = s4.kms_request(node.url, "DescribeKey", {"KeyId": key_id})
    s4.presign(req, KEY, expires=60)
    status, doc = call(node, req)
    assert status == 200 and doc["KeyMetadata"]["KeyId"] == key_id


# -- refused ----------------------------------------------------------------------------------


def test_a_tampered_body_is_a_signature_mismatch(node: ServerProcess, key_id: str) -> None:
    req = s4.kms_request(node.url, "CreateAlias", {"AliasName": "alias/a", "TargetKeyId": key_id})
    s4.sign_header(req, KEY)
    req.body = req.body.replace(b"alias/a", b"alias/b")
    assert refused(node, req) == (400, "InvalidSignatureException", MISMATCH)


def test_a_captured_request_cannot_be_replayed_as_another_operation(
        node: ServerProcess, key_id: str) -> None:
    req = s4.kms_request(node.url, "DescribeKey", {"KeyId": key_id})
    s4.sign_header(req, KEY)
    req.headers = [(n, "TrentService.ScheduleKeyDeletion" if n == "X-Amz-Target" else v)
                   for n, v in req.headers]
    assert refused(node, req) == (400, "InvalidSignatureException", MISMATCH)


@pytest.mark.parametrize(("unsigned", "shown"), [("X-Amz-Target", "X-Amz-Target"),
                                                 ("Content-Type", "Content-Type")])
def test_an_unsigned_target_or_content_type_is_refused(node: ServerProcess, key_id: str,
                                                       unsigned: str, shown: str) -> None:
    req = s4.kms_request(node.url, "DescribeKey", {"KeyId": key_id})
    s4.sign_header(req, KEY, unsigned=(unsigned,))
    assert refused(node, req) == (
        400, "InvalidSignatureException",
        f"'{shown}' must be a 'SignedHeader' in the AWS Authorization.")


def test_an_unknown_access_key(node: ServerProcess) -> None:
    req = s4.kms_request(node.url, "ListKeys")
    s4.sign_header(req, s4.Key("AKIANOBODY0000000001", "whatever"))
    assert refused(node, req) == (400, "UnrecognizedClientException",
                                  "The security token included in the request is invalid.")


def test_a_missing_signature_part(node: ServerProcess) -> None:
    req = s4.kms_request(node.url, "ListKeys")
    s4.sign_header(req, KEY, authorization_format="AWS4-HMAC-SHA256 Credential={cred}, "
                                                  "SignedHeaders={signed}")
    status, code, message = refused(node, req)
    assert (status, code) == (400, "IncompleteSignatureException")
    assert message.startswith("Authorization header requires 'Signature' parameter.")


def test_a_skewed_timestamp(node: ServerProcess) -> None:
    req = s4.kms_request(node.url, "ListKeys")
    when = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=20)
    s4.sign_header(req, KEY, when=when)
    status, code, message = refused(node, req)
    assert (status, code) == (400, "InvalidSignatureException")
    assert message.startswith(f"Signature expired: {when:%Y%m%dT%H%M%SZ} is now earlier than ")
    assert message.endswith(" - 5 min.)")


def test_an_expired_presigned_request(node: ServerProcess) -> None:
    """Past 15 minutes from X-Amz-Date a presigned request is expired, whatever its
    X-Amz-Expires said (every service but S3 ignores it, aws/aws-sdk-go#2224)."""
    for expires in (60, 3600):
        req = s4.kms_request(node.url, "ListKeys")
        when = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=20)
        s4.presign(req, KEY, expires=expires, when=when)
        status, code, message = refused(node, req)
        assert (status, code) == (400, "InvalidSignatureException")
        assert message.startswith(
            f"Signature expired: {when:%Y%m%dT%H%M%SZ} is now earlier than ")
        assert message.endswith(" - 15 min.)")


def test_a_presigned_request_is_good_for_15_minutes_whatever_its_expiry(
        node: ServerProcess) -> None:
    """An EKS-style token: presigned with X-Amz-Expires=60 and used two minutes later, it
    is still accepted, as AWS accepts it."""
    req = s4.kms_request(node.url, "ListKeys")
    when = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=2)
    s4.presign(req, KEY, expires=60, when=when)
    status, doc = call(node, req)
    assert status == 200 and "Keys" in doc, doc


def test_a_presigned_request_missing_a_parameter(node: ServerProcess) -> None:
    req = s4.kms_request(node.url, "ListKeys")
    s4.presign(req, KEY, drop="X-Amz-Signature")
    assert refused(node, req) == (
        400, "IncompleteSignatureException",
        "AWS query-string parameters must include 'X-Amz-Signature'. "
        "Re-examine the query-string parameters.")


def test_a_presigned_request_valid_for_more_than_a_week(node: ServerProcess) -> None:
    req = s4.kms_request(node.url, "ListKeys")
    s4.presign(req, KEY, expires=604801)
    status, code, message = refused(node, req)
    assert (status, code) == (400, "IncompleteSignatureException")
    assert "X-Amz-Expires" in message and "604800" in message


def test_a_presigned_request_with_a_wrong_secret(node: ServerProcess) -> None:
    req = s4.kms_request(node.url, "ListKeys")
    s4.presign(req, s4.Key(ALICE[0], "not-alice"))
    assert refused(node, req) == (400, "InvalidSignatureException", MISMATCH)


# -- a flood of failed authentications ------------------------------------------------------


def test_a_flood_of_failures_from_one_source_is_summarized_not_logged_one_by_one(
        tmp_path: Path) -> None:
    config = write_config(tmp_path, "[node]\nauth_failure_audit_limit = 3\n"
                                    "auth_failure_window_seconds = 3\n")
    server = ServerProcess(tmp_path / "d", dev=False, log_path=tmp_path / "node.log",
                           extra=["--config", str(config)])
    server.start()
    sent = 40
    try:
        before = server.health()["log_seq"]
        for _ in range(sent):
            req = s4.kms_request(server.url, "ListKeys")
            s4.sign_header(req, s4.Key("AKIANOBODY0000000001", "x"))
            status, doc = s4.send(server.url, req)  # every caller still gets AWS's answer
            assert (status, doc["__type"]) == (400, "UnrecognizedClientException")

        def summarized() -> tuple[list[dict[str, Any]], int] | None:
            lines = [line for line in server.log_lines()
                     if line.get("event") == "authentication_failures_summarized"]
            counted = sum(line["count"] for line in lines)
            facts = server.health()["log_seq"] - before
            # every failure is either a fact of its own or counted in a summary fact
            return (lines, facts) if counted + facts - len(lines) == sent else None

        lines, facts = eventually(summarized, "the flood's summary facts")
    finally:
        server.stop()
    # Per 3-second window: at most 3 facts of their own, then one summary.
    assert len(lines) >= 1 and facts - len(lines) <= 3 * (len(lines) + 1) and facts < sent // 2
    assert all(line["source"] == "127.0.0.1" and line["window_seconds"] == 3 for line in lines)
