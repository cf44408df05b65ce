"""Principals from the config's ``[[principals]]``: who a credential acts as, on a secured node
and in --dev, and the mistakes ``kms serve`` refuses at start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import client_for
from tests.support import sigv4_signer as s4
from tests.support.secured import ACCOUNT, ALICE, ALLOW_ALL, peered_pair, secured_fixture
from tests.support.server import ServerProcess

OTHER = "444455556666"
CONFIG = f"""
account_id = "{ACCOUNT}"
[[principals]]
arn = "arn:aws:iam::{ACCOUNT}:user/alice"
access_key_id = "AKIAALICE00000000001"
secret_access_key = "alice-secret-key"
tags = {{ team = "payments" }}
policies = ['{ALLOW_ALL}']

[[principals]]
arn = "arn:aws:iam::{ACCOUNT}:role/deployer"
session_name = "ci-run"
access_key_id = "AKIADEPLOYER00000001"
secret_access_key = "deployer-secret-key"
policies = ['{ALLOW_ALL}']

[[principals]]
arn = "arn:aws:iam::{OTHER}:user/bob"
access_key_id = "AKIABOB0000000000001"
secret_access_key = "bob-secret-key"
policies = ['{ALLOW_ALL}']
"""
DEPLOYER = ("AKIADEPLOYER00000001", "deployer-secret-key")
BOB = ("AKIABOB0000000000001", "bob-secret-key")


def write_config(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "kms.toml"
    path.write_text(text)
    return path


def principals_logged(server: ServerProcess) -> list[str]:
    """The ``principal`` of each request log line so far."""
    return [line["principal"] for line in server.log_lines() if line.get("event") == "request"]


secured = secured_fixture("principals", write_config, logged=True)


def client(server: ServerProcess, cred: tuple[str, str]) -> Any:
    return client_for(server.url, access_key=cred[0], secret=cred[1])


def test_each_configured_principal_signs_as_itself(secured: ServerProcess) -> None:
    before = len(principals_logged(secured))
    client(secured, ALICE).list_keys()
    client(secured, DEPLOYER).list_keys()
    with pytest.raises(ClientError):  # another account's user: a key ARN, not this account
        client(secured, BOB).list_keys()
    assert principals_logged(secured)[before:] == [
        f"arn:aws:iam::{ACCOUNT}:user/alice",
        f"arn:aws:sts::{ACCOUNT}:assumed-role/deployer/ci-run",
        f"arn:aws:iam::{OTHER}:user/bob",
    ]


def test_the_auto_created_root_still_works_beside_configured_principals(
        secured: ServerProcess) -> None:
    [root] = json.loads((secured.data_dir / "credentials.json").read_text())["credentials"]
    before = len(principals_logged(secured))
    client(secured, (root["access_key_id"], root["secret_access_key"])).list_keys()
    assert principals_logged(secured)[before:] == [f"arn:aws:iam::{ACCOUNT}:root"]


def test_a_configured_key_with_a_wrong_secret_is_refused(secured: ServerProcess) -> None:
    with pytest.raises(ClientError) as info:
        client(secured, (ALICE[0], "not-alice-secret")).list_keys()
    err = info.value.response
    assert err["Error"]["Code"] == "InvalidSignatureException"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_a_config_naming_the_root_replaces_the_auto_created_credential(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"""
[[principals]]
arn = "arn:aws:iam::{ACCOUNT}:root"
access_key_id = "AKIAROOT000000000001"
secret_access_key = "root-secret"
""")
    server = ServerProcess(tmp_path / "d", dev=False, log_path=tmp_path / "node.log",
                           extra=["--config", str(config)])
    server.start()
    try:
        client(server, ("AKIAROOT000000000001", "root-secret")).list_keys()
        assert principals_logged(server) == [f"arn:aws:iam::{ACCOUNT}:root"]
    finally:
        server.stop()
    assert not (tmp_path / "d" / "credentials.json").exists()
    assert "aws_secret_access_key" not in server.read_stdout()


def test_dev_acts_as_the_configured_principal_else_the_root(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "d", dev=True, log_path=tmp_path / "node.log",
                           extra=["--config", str(write_config(tmp_path))])
    server.start()
    try:
        client(server, (ALICE[0], "any secret: --dev does not check it")).list_keys()
        client(server, ("AKIDANYBODY", "x")).list_keys()
    finally:
        server.stop()
    assert principals_logged(server) == [f"arn:aws:iam::{ACCOUNT}:user/alice",
                                         f"arn:aws:iam::{ACCOUNT}:root"]


ENTRY = f'arn = "arn:aws:iam::{ACCOUNT}:user/carol"\naccess_key_id = "AKIACAROL00000000001"\n' \
        'secret_access_key = "s"\n'


@pytest.mark.parametrize(("text", "fragment"), [
    ('[[principals]]\narn = "arn:aws:iam::1234:user/x"\naccess_key_id = "AKIAX00000000000001"\n'
     'secret_access_key = "s"\n', "principals[0]: arn 'arn:aws:iam::1234:user/x' is not an IAM"),
    ('[[principals]]\narn = "arn:aws:iam::111122223333:group/x"\n'
     'access_key_id = "AKIAX00000000000001"\nsecret_access_key = "s"\n', "is not an IAM"),
    (f"[[principals]]\n{ENTRY}[[principals]]\n{ENTRY}",
     "principals[1]: access_key_id AKIACAROL00000000001 is given twice"),
    (f"[[principals]]\n{ENTRY}[[principals]]\n"
     + ENTRY.replace("AKIACAROL00000000001", "AKIACAROL00000000002"),
     f"principals[1]: arn:aws:iam::{ACCOUNT}:user/carol is given twice"),
    (f"[[principals]]\n{ENTRY}policies = ['{{\"Statement\": [']\n",
     "principals[0]: policies[0] is not valid JSON"),
    (f"[[principals]]\n{ENTRY}session_name = \"s1\"\n", "session_name is for a role only"),
    (f'[[principals]]\narn = "arn:aws:iam::{ACCOUNT}:user/carol"\nsecret_access_key = "s"\n',
     "principals[0]: access_key_id is required"),
    (f"[[principals]]\n{ENTRY}tags = {{ team = 3 }}\n", "tags must be a table of strings"),
    (f"[[principals]]\n{ENTRY}colour = \"blue\"\n", "principals[0]: unknown settings: colour"),
    # Valid JSON the evaluator cannot read: refused at start, not denied at every call.
    (f"[[principals]]\n{ENTRY}policies = ['{ALLOW_ALL}', "
     "'{\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"kms:Encrpyt\",\"Resource\":\"*\"}]}']\n",
     "principals[0]: policies[1] is not a valid identity policy: "
     "Policy contains an unknown action: kms:Encrpyt"),
    (f"[[principals]]\n{ENTRY}policies = ['{{\"Statement\":[{{\"Effect\":\"Allow\","
     "\"Principal\":\"*\",\"Action\":\"kms:*\",\"Resource\":\"*\"}]}']\n",
     "principals[0]: policies[0] is not a valid identity policy: "
     "Identity policies do not name a Principal."),
    (f"[[principals]]\n{ENTRY}policies = ['{{\"Statement\":[{{\"Effect\":\"Permit\","
     "\"Action\":\"kms:*\",\"Resource\":\"*\"}]}']\n",
     "principals[0]: policies[0] is not a valid identity policy: "
     "The policy is not syntactically correct."),
])
def test_a_malformed_principal_is_refused_at_start(tmp_path: Path, text: str,
                                                   fragment: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "regions.cli", "serve", "--port", "0", "--data-dir",
         str(tmp_path / "d"), "--config", str(write_config(tmp_path, text))],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("kms: error: configuration: ")
    assert fragment in lines[0]
    assert not (tmp_path / "d").exists()


def test_one_identity_in_every_region_and_through_forwarding(tmp_path: Path) -> None:
    """Two secured region nodes, each with ``--peer`` to the other and the same config: a
    configured principal's requests are accepted by both, and a request signed for eu-west-1
    sent to us-east-1's node is forwarded and served there as the same principal."""
    with peered_pair(tmp_path, str(write_config(tmp_path))) as (us, eu):
        us_kms = client_for(us.url, access_key=ALICE[0], secret=ALICE[1])
        eu_kms = client_for(eu.url, region="eu-west-1", access_key=ALICE[0],
                            secret=ALICE[1])
        us_key = us_kms.create_key(Description="us")["KeyMetadata"]["Arn"]
        eu_key = eu_kms.create_key(Description="eu")["KeyMetadata"]["Arn"]
        assert us_key.startswith(f"arn:aws:kms:us-east-1:{ACCOUNT}:key/")
        assert eu_key.startswith(f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/")
        # Signed for eu-west-1, sent to us-east-1's node: forwarded, served by eu-west-1.
        via_us = client_for(us.url, region="eu-west-1", access_key=ALICE[0],
                            secret=ALICE[1])
        assert via_us.describe_key(KeyId=eu_key)["KeyMetadata"]["Description"] == "eu"
        blob = via_us.encrypt(KeyId=eu_key, Plaintext=b"hop")["CiphertextBlob"]
        assert eu_kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"hop"
        presigned = s4.kms_request(us.url, "DescribeKey", {"KeyId": eu_key})
        s4.presign(presigned, s4.Key(*ALICE, region="eu-west-1"))
        status, doc = s4.send(us.url, presigned)  # the presigned form is forwarded too
        assert status == 200 and doc["KeyMetadata"]["Arn"] == eu_key
        with pytest.raises(ClientError) as info:  # a wrong secret is refused across, too
            client_for(us.url, region="eu-west-1", access_key=ALICE[0],
                       secret="wrong").describe_key(KeyId=eu_key)
        assert info.value.response["Error"]["Code"] == "InvalidSignatureException"
    alice = f"arn:aws:iam::{ACCOUNT}:user/alice"
    served = [(line["op"], line["principal"], line.get("error")) for line in eu.log_lines()
              if line.get("event") == "request"]
    assert served == [("CreateKey", alice, None), ("DescribeKey", alice, None),
                      ("Encrypt", alice, None), ("Decrypt", alice, None),
                      ("DescribeKey", alice, None),
                      ("DescribeKey", "anonymous", "InvalidSignatureException")]
    assert [(line["op"], line["principal"]) for line in us.log_lines()
            if line.get("event") == "request"] == [("CreateKey", alice)]


def through_ec2(request: Any, **_: Any) -> None:
    request.headers["X-Kms-Via-Service"] = "ec2.us-east-1.amazonaws.com"


def test_a_secured_node_ignores_x_kms_via_service(secured: ServerProcess) -> None:
    via = client(secured, ALICE)
    via.meta.events.register("before-sign.kms.*", through_ec2)
    with pytest.raises(ClientError) as info:
        via.encrypt(KeyId="alias/aws/ebs", Plaintext=b"volume")
    assert info.value.response["Error"]["Code"] == "AccessDeniedException"


def test_dev_x_kms_via_service_lets_a_caller_use_an_aws_managed_key(tmp_path: Path) -> None:
    """In --dev only, ``X-Kms-Via-Service`` sets kms:ViaService: the AWS managed key's own
    policy allows use through its service and refuses direct use."""
    server = ServerProcess(tmp_path / "d", dev=True,
                           extra=["--config", str(write_config(tmp_path))])
    server.start()
    try:
        direct = client(server, ALICE)
        via = client(server, ALICE)
        via.meta.events.register("before-sign.kms.*", through_ec2)
        blob = via.encrypt(KeyId="alias/aws/ebs", Plaintext=b"volume")["CiphertextBlob"]
        assert via.decrypt(CiphertextBlob=blob)["Plaintext"] == b"volume"
        with pytest.raises(ClientError) as info:
            direct.decrypt(CiphertextBlob=blob)
        assert info.value.response["Error"]["Code"] == "AccessDeniedException"
    finally:
        server.stop()


def test_a_forwarded_request_has_no_source_ip_of_its_own(tmp_path: Path) -> None:
    """A forwarded request's connection is the forwarding node's: the peer leaves
    aws:SourceIp (and aws:SecureTransport) out of the request context, so an address
    condition cannot be met, or dodged, by going through another region's node. Direct
    from loopback the Deny does not apply; through us-east-1's node it does."""
    with peered_pair(tmp_path, str(write_config(tmp_path)), logged=False) as (us, eu):
        eu_kms = client_for(eu.url, region="eu-west-1", access_key=ALICE[0],
                            secret=ALICE[1])
        loopback_only = json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
             "Action": "kms:*", "Resource": "*"},
            {"Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*",
             "Condition": {"NotIpAddress": {"aws:SourceIp": "127.0.0.0/8"}}}]})
        key = eu_kms.create_key(Policy=loopback_only)["KeyMetadata"]["Arn"]
        assert eu_kms.encrypt(KeyId=key, Plaintext=b"direct")["KeyId"] == key
        via_us = client_for(us.url, region="eu-west-1", access_key=ALICE[0],
                            secret=ALICE[1])
        with pytest.raises(ClientError) as info:
            via_us.encrypt(KeyId=key, Plaintext=b"forwarded")
        assert info.value.response["Error"]["Message"] == (
            f"User: arn:aws:iam::{ACCOUNT}:user/alice is not authorized to perform: "
            f"kms:Encrypt on resource: {key} with an explicit deny in a resource-based "
            "policy")
        assert via_us.describe_key(KeyId=key)["KeyMetadata"]["Arn"] == key
