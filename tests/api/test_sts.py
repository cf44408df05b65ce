"""STS GetCallerIdentity on the node's endpoint: boto3's sts client, the AWS CLI and a
presigned GET tell who a credential is; refusals are STS's XML errors."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.api.test_principals import ACCOUNT, ALICE, BOB, DEPLOYER, OTHER, write_config
from tests.support.server import ServerProcess

REGION = "us-east-1"


def sts_for(server: ServerProcess, cred: tuple[str, str], region: str = REGION) -> Any:
    return boto3.client("sts", endpoint_url=server.url, region_name=region,
                        aws_access_key_id=cred[0], aws_secret_access_key=cred[1],
                        config=Config(retries={"max_attempts": 1}))


def identity(server: ServerProcess, cred: tuple[str, str]) -> dict[str, str]:
    doc = sts_for(server, cred).get_caller_identity()
    return {k: doc[k] for k in ("Arn", "UserId", "Account")}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("sts")
    server = ServerProcess(tmp / "d", dev=False, extra=["--config", str(write_config(tmp))])
    server.start()
    yield server
    server.stop()


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
