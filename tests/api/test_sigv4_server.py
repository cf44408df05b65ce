"""A node without --dev: the root credential, and SigV4 as real clients meet it."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.conftest import client_for
from tests.support.server import ServerProcess

REGION = "us-east-1"
ACCOUNT = "111122223333"
MISMATCH = "The request signature we calculated does not match the signature you provided."


def stored_credential(data_dir: Path) -> dict[str, str]:
    doc = json.loads((data_dir / "credentials.json").read_text())
    [cred] = doc["credentials"]
    return cred  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def node(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    server = ServerProcess(tmp_path_factory.mktemp("prod-node") / "d", dev=False)
    request.addfinalizer(server.stop)
    return server.start()


@pytest.fixture(scope="module")
def cred(node: ServerProcess) -> dict[str, str]:
    return stored_credential(node.data_dir)


@pytest.fixture
def kms(node: ServerProcess, cred: dict[str, str]) -> Any:
    return client_for(node.url, access_key=cred["access_key_id"],
                      secret=cred["secret_access_key"])


def error_of(call: Any, **kwargs: Any) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    resp = info.value.response
    return (resp["Error"]["Code"], resp["ResponseMetadata"]["HTTPStatusCode"],
            resp["Error"].get("Message", ""))


def raw_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, dict[str, Any]]:
    """POST without any client library: (status, content type, JSON body)."""
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), json.loads(e.read())


def signed_headers(url: str, body: bytes, target: str, access_key: str, secret: str, *,
                   region: str = REGION, when: datetime.datetime | None = None) -> dict[str, str]:
    """SigV4 written out by hand (independent of botocore) for requests botocore won't make."""
    when = when or datetime.datetime.now(datetime.UTC)
    amz_date, day = when.strftime("%Y%m%dT%H%M%SZ"), when.strftime("%Y%m%d")
    host = url.split("://", 1)[1].rstrip("/")
    canonical = "\n".join([
        "POST", "/", "", "content-type:application/x-amz-json-1.1", f"host:{host}",
        f"x-amz-date:{amz_date}", f"x-amz-target:TrentService.{target}", "",
        "content-type;host;x-amz-date;x-amz-target",
        hashlib.sha256(body).hexdigest(),
    ])
    scope = f"{day}/{region}/kms/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (day, region, "kms", "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    signature = hmac.new(key, to_sign.encode(), "sha256").hexdigest()
    return {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": f"TrentService.{target}",
        "X-Amz-Date": amz_date,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                         f"SignedHeaders=content-type;host;x-amz-date;x-amz-target, "
                         f"Signature={signature}",
    }


def test_root_credential_is_stored_0600_and_printed_only_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    first = ServerProcess(data_dir, dev=False).start()
    first.stop()
    cred = stored_credential(data_dir)
    assert stat.S_IMODE((data_dir / "credentials.json").stat().st_mode) == 0o600
    assert cred["access_key_id"].startswith("AKIA") and len(cred["access_key_id"]) == 20
    assert len(cred["secret_access_key"]) >= 32
    assert cred["principal_arn"] == f"arn:aws:iam::{ACCOUNT}:root"
    assert cred["account"] == ACCOUNT
    printed = first.read_stdout()
    assert cred["access_key_id"] in printed
    assert cred["secret_access_key"] in printed
    assert str(data_dir / "credentials.json") in printed

    second = ServerProcess(data_dir, dev=False).start()
    second.stop()
    again = second.read_stdout()
    assert "serving region us-east-1" in again
    assert cred["secret_access_key"] not in again
    assert "aws_secret_access_key" not in again
    assert stored_credential(data_dir) == cred  # not replaced


def test_boto3_with_the_root_credential(kms: Any, cred: dict[str, str]) -> None:
    meta = kms.create_key(Description="signed")["KeyMetadata"]
    assert meta["Arn"] == f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{meta['KeyId']}"
    blob = kms.encrypt(KeyId=meta["KeyId"], Plaintext=b"sigv4 works",
                       EncryptionContext={"a": "b"})["CiphertextBlob"]
    out = kms.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "b"})
    assert out["Plaintext"] == b"sigv4 works" and out["KeyId"] == meta["Arn"]
    assert meta["KeyId"] in {k["KeyId"] for k in kms.list_keys()["Keys"]}


def test_wrong_secret_unknown_key_and_wrong_region_are_refused(
        node: ServerProcess, cred: dict[str, str]) -> None:
    ak, sk = cred["access_key_id"], cred["secret_access_key"]
    wrong_secret = client_for(node.url, access_key=ak, secret=sk[:-1] + ("A" if sk[-1] != "A"
                                                                         else "B"))
    code, status, message = error_of(wrong_secret.list_keys)
    assert (code, status) == ("InvalidSignatureException", 400)
    assert MISMATCH in message and sk not in message

    unknown = client_for(node.url, access_key="AKIAUNKNOWNUNKNOWN00", secret=sk)
    code, status, message = error_of(unknown.list_keys)
    assert (code, status) == ("UnrecognizedClientException", 400)
    assert "security token included in the request is invalid" in message

    west = client_for(node.url, region="us-west-2", access_key=ak, secret=sk)
    code, status, message = error_of(west.list_keys)
    assert (code, status) == ("InvalidSignatureException", 400)
    assert message == ("Credential should be scoped to a valid region. "
                       "This node serves us-east-1, not 'us-west-2'.")


def test_a_session_token_on_a_credential_without_a_session_is_refused(
        node: ServerProcess, kms: Any, cred: dict[str, str]) -> None:
    keys = kms.list_keys()["Keys"]
    seq = node.health()["log_seq"]
    with_token = boto3.client(
        "kms", endpoint_url=node.url, region_name=REGION,
        aws_access_key_id=cred["access_key_id"], aws_secret_access_key=cred["secret_access_key"],
        aws_session_token="x", config=Config(retries={"max_attempts": 1}))
    code, status, message = error_of(with_token.create_key, Description="with a token")
    assert (code, status, message) == (
        "UnrecognizedClientException", 400,
        "The security token included in the request is invalid.")
    assert node.health()["log_seq"] == seq + 1  # its audit fact, and nothing else
    assert kms.list_keys()["Keys"] == keys


def test_hand_signed_requests(node: ServerProcess, cred: dict[str, str]) -> None:
    ak, sk = cred["access_key_id"], cred["secret_access_key"]
    body = b'{"Limit": 5}'
    headers = signed_headers(node.url, body, "ListKeys", ak, sk)
    status, _, doc = raw_post(node.url, body, headers)
    assert status == 200 and "Keys" in doc  # the hand-written signer is right

    headers = signed_headers(node.url, body, "ListKeys", ak, sk)
    status, _, doc = raw_post(node.url, b'{"Limit": 6}', headers)  # body changed after signing
    assert (status, doc["__type"]) == (400, "InvalidSignatureException")

    stale = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=20)
    headers = signed_headers(node.url, body, "ListKeys", ak, sk, when=stale)
    status, _, doc = raw_post(node.url, body, headers)
    assert (status, doc["__type"]) == (400, "InvalidSignatureException")
    assert "Signature expired" in doc["message"]


def test_missing_or_malformed_authorization(node: ServerProcess) -> None:
    base = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.ListKeys"}
    status, ctype, doc = raw_post(node.url, b"{}", base)
    assert (status, doc["__type"]) == (400, "MissingAuthenticationTokenException")
    assert "json" in ctype

    status, _, doc = raw_post(node.url, b"{}", {**base, "Authorization": "Bearer abc",
                                                 "X-Amz-Date": "20260101T000000Z"})
    assert (status, doc["__type"]) == (400, "IncompleteSignatureException")


def test_dev_endpoints_do_not_exist(node: ServerProcess, kms: Any) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    for path, payload in (("/_kms/reset", {}), ("/_kms/clock", {"advance_seconds": 3600})):
        status, ctype, doc = raw_post(node.url + path, json.dumps(payload).encode(),
                                      {"Content-Type": "application/json"})
        assert status == 404, path
        assert "json" in ctype and "html" not in ctype
        assert doc["__type"] == "UnknownOperationException"
    assert node.health()["status"] == "ok"
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    kms.list_keys()  # a clock moved by an hour would have broken every signature


def test_refused_requests_change_nothing(node: ServerProcess, kms: Any,
                                         cred: dict[str, str]) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    keys_before = kms.list_keys()["Keys"]
    aliases_before = kms.list_aliases()["Aliases"]

    bad = client_for(node.url, access_key=cred["access_key_id"], secret="not-the-secret")
    for call, kwargs in ((bad.create_key, {}), (bad.disable_key, {"KeyId": key_id}),
                         (bad.create_alias, {"AliasName": "alias/sneaky", "TargetKeyId": key_id}),
                         (bad.schedule_key_deletion, {"KeyId": key_id})):
        assert error_of(call, **kwargs)[0] == "InvalidSignatureException"
    status, _, doc = raw_post(node.url, b"{}", {"Content-Type": "application/x-amz-json-1.1",
                                                "X-Amz-Target": "TrentService.CreateKey"})
    assert doc["__type"] == "MissingAuthenticationTokenException"

    assert kms.list_keys()["Keys"] == keys_before
    assert kms.list_aliases()["Aliases"] == aliases_before
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"


def test_aws_cli_with_the_root_credential(node: ServerProcess, kms: Any,
                                          cred: dict[str, str], tmp_path: Path) -> None:
    key_id = kms.create_key(Description="for the cli")["KeyMetadata"]["KeyId"]
    (tmp_path / "empty").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "empty"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "empty"),
               AWS_PAGER="", AWS_MAX_ATTEMPTS="1",
               AWS_ACCESS_KEY_ID=cred["access_key_id"])
    argv = ["aws", "--endpoint-url", node.url, "--region", REGION, "kms", "describe-key",
            "--key-id", key_id, "--output", "json"]
    good = subprocess.Popen(argv, env={**env, "AWS_SECRET_ACCESS_KEY": cred["secret_access_key"]},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    bad = subprocess.Popen(argv, env={**env, "AWS_SECRET_ACCESS_KEY": "wrong"},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = good.communicate(timeout=60)
    assert good.returncode == 0, err
    assert json.loads(out)["KeyMetadata"]["Description"] == "for the cli"
    out, err = bad.communicate(timeout=60)
    assert bad.returncode != 0
    assert ("An error occurred (InvalidSignatureException) when calling the DescribeKey "
            "operation") in err
