"""The gateway as a user and an operator meet it: bodies are strict UTF-8 (refused ones are
audited and change nothing), dev mode takes any session token, and each request leaves one
log line with its principal, keys and error; console lines carry readable timestamps."""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import boto3
import msgpack
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.api.test_hostile_input import log_seq, post
from tests.support.server import ServerProcess


class LoggedServer(ServerProcess):
    """A node whose log lines (stderr) go to a file, read once it has stopped."""

    def __init__(self, data_dir: Path, log_path: Path, **kwargs: Any) -> None:
        super().__init__(data_dir, log_path=log_path, **kwargs)

    def lines(self) -> list[str]:
        assert self.log_path is not None
        return self.log_path.read_text().splitlines()


# -- strict UTF-8 -------------------------------------------------------------------------------
def test_raw_surrogate_bytes_are_refused_audited_and_change_nothing(server: ServerProcess,
                                                                    kms: Any) -> None:
    keys = kms.list_keys()["Keys"]
    before = log_seq(server)
    status, doc = post(server, "CreateKey", b'{"Description": "a\xed\xa0\x80b"}')
    assert (status, doc["__type"]) == (400, "SerializationException")
    assert doc["message"] == "The request body is not valid UTF-8."
    assert log_seq(server) == before + 1  # its audit fact, and nothing else
    assert kms.list_keys()["Keys"] == keys
    assert server.health()["status"] == "ok"


@pytest.mark.parametrize("raw", [
    b"\xed\xbf\xbf",      # a low surrogate
    b"\xc0\xaf",          # overlong '/'
    b"\xe0\x80\xaf",      # overlong, three bytes
    b"\xe2\x82",          # truncated sequence
    b"\xf8\x88\x80\x80\x80",  # five-byte form
])
def test_every_kind_of_invalid_utf8_is_a_serialization_error(server: ServerProcess, kms: Any,
                                                             raw: bytes) -> None:
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    before = log_seq(server)
    body = b'{"KeyId": "' + key.encode() + b'", "Description": "x' + raw + b'"}'
    status, doc = post(server, "UpdateKeyDescription", body)
    assert (status, doc["__type"]) == (400, "SerializationException")
    assert log_seq(server) == before + 1
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["Description"] == ""


def test_valid_multibyte_utf8_is_accepted(server: ServerProcess, kms: Any) -> None:
    status, doc = post(server, "CreateKey", '{"Description": "café 鍵 🔑"}'.encode())
    assert status == 200
    assert doc["KeyMetadata"]["Description"] == "café 鍵 🔑"


# -- session tokens in dev mode -----------------------------------------------------------------
def test_dev_mode_accepts_a_session_token(server: ServerProcess) -> None:
    client = boto3.client("kms", endpoint_url=server.url, region_name="us-east-1",
                          aws_access_key_id="ASIAEXAMPLE", aws_secret_access_key="s",
                          aws_session_token="anything")
    assert client.list_keys()["Keys"] == []


# -- request log lines --------------------------------------------------------------------------
@pytest.fixture
def logged(tmp_path: Path) -> Any:
    node = LoggedServer(tmp_path / "d", tmp_path / "node.log").start()
    yield node
    node.stop()


def client(node: ServerProcess) -> Any:
    return boto3.client("kms", endpoint_url=node.url, region_name="us-east-1",
                        aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret")


def request_line(node: LoggedServer, request_id: str) -> dict[str, Any]:
    [line] = [d for d in node.log_lines()
              if d.get("event") == "request" and d.get("request_id") == request_id]
    return line


def test_request_lines_carry_principal_key_and_error(logged: LoggedServer) -> None:
    kms = client(logged)
    created = kms.create_key(Description="logged")
    arn = created["KeyMetadata"]["Arn"]
    blob = kms.encrypt(KeyId=arn, Plaintext=b"secret words",
                       EncryptionContext={"a": "b"})["CiphertextBlob"]
    with pytest.raises(ClientError) as info:
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "other"})
    assert info.value.response["Error"]["Code"] == "InvalidCiphertextException"
    with pytest.raises(ClientError) as missing:
        kms.describe_key(KeyId="alias/none")
    logged.stop()

    line = request_line(logged, created["ResponseMetadata"]["RequestId"])
    assert line["op"] == "CreateKey" and line["status"] == 200 and line["level"] == "info"
    assert line["principal"] == "arn:aws:iam::111122223333:root"
    assert line["key_id"] == arn
    assert "error" not in line

    line = request_line(logged, info.value.response["ResponseMetadata"]["RequestId"])
    assert line["op"] == "Decrypt" and line["status"] == 400 and line["level"] == "info"
    assert line["error"] == "InvalidCiphertextException"
    assert line["message"] == ""  # AWS sends this one without a message
    assert line["key_id"] == arn and line["principal"].endswith(":root")

    line = request_line(logged, missing.value.response["ResponseMetadata"]["RequestId"])
    assert line["error"] == "NotFoundException"
    assert line["message"] == missing.value.response["Error"]["Message"]
    assert "alias/none" in line["message"]

    text = logged.log_path.read_text()
    assert "secret words" not in text and "c2VjcmV0IHdvcmRz" not in text  # no plaintext
    assert str(blob) not in text


def test_a_huge_echoed_value_reaches_the_client_whole_but_not_the_log_or_audit(
        logged: LoggedServer) -> None:
    kms = boto3.client("kms", endpoint_url=logged.url, region_name="us-east-1",
                       aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
                       config=Config(parameter_validation=False, retries={"max_attempts": 1}))
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    huge = "k" * 200_000
    with pytest.raises(ClientError) as info:
        kms.tag_resource(KeyId=key, Tags=[{"TagKey": huge, "TagValue": "v"}])
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert huge in info.value.response["Error"]["Message"]  # AWS echoes the value whole
    logged.stop()
    line = request_line(logged, info.value.response["ResponseMetadata"]["RequestId"])
    assert line["error"] == "ValidationException" and len(line["message"]) <= 1024
    with closing(sqlite3.connect(logged.data_dir / "events.sqlite3")) as db:
        body = db.execute("SELECT body FROM events WHERE stream = 'audit' "
                          "ORDER BY seq DESC LIMIT 1").fetchone()[0]
    fact = msgpack.unpackb(body, raw=False, strict_map_key=False)
    text = json.dumps(fact, default=repr)
    assert "ValidationException" in text and huge not in text and len(text) < 20_000


def test_a_refused_request_logs_its_principal_and_error(logged: LoggedServer) -> None:
    status, doc = post(logged, "CreateKey", b'{"Description": "\xed\xa0\x80"}')
    assert status == 400
    logged.stop()
    [line] = [d for d in logged.log_lines() if d.get("event") == "request"]
    assert line["op"] == "CreateKey" and line["error"] == "SerializationException"
    assert line["message"] == doc["message"]
    assert line["principal"] == "arn:aws:iam::111122223333:root"


def test_an_unrecordable_call_fails_closed_with_a_warning_line(logged: LoggedServer) -> None:
    kms = boto3.client("kms", endpoint_url=logged.url, region_name="us-east-1",
                       aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
                       config=Config(retries={"total_max_attempts": 1}))
    # Another process holds the write lock past the node's busy timeout: nothing, not even
    # the call's audit fact, can be written, so the call is answered 500 (fail closed).
    with closing(sqlite3.connect(logged.data_dir / "events.sqlite3",
                                 isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(ClientError) as info:
            kms.create_key(Description="never written")
        other.execute("ROLLBACK")
    response = info.value.response
    assert response["Error"]["Code"] == "KMSInternalException"
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert kms.list_keys()["Keys"] == []
    logged.stop()

    request_id = response["ResponseMetadata"]["RequestId"]
    line = request_line(logged, request_id)
    assert line["level"] == "warning" and line["status"] == 500
    assert line["error"] == "KMSInternalException"
    assert line["message"] == response["Error"]["Message"]
    failed = [d for d in logged.log_lines()
              if d.get("event") == "audit_failed" and d.get("request_id") == request_id]
    assert failed and all(d["level"] == "error" and d["op"] == "CreateKey" for d in failed)
    assert "never written" not in logged.log_path.read_text()


def test_dev_reset_writes_a_log_line(logged: LoggedServer) -> None:
    kms = client(logged)
    kms.create_key()
    seq = logged.health()["log_seq"]
    logged.reset()
    assert logged.health()["log_seq"] == 0
    logged.stop()
    [line] = [d for d in logged.log_lines() if d.get("event") == "dev_reset"]
    assert line["log_seq"] == seq and line["level"] == "info"


def test_console_log_lines_have_readable_timestamps(tmp_path: Path) -> None:
    node = LoggedServer(tmp_path / "d", tmp_path / "node.log",
                        extra=["--log-format", "console"]).start()
    client(node).list_keys()
    node.stop()
    lines = node.lines()
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", lines[0]), lines[0]
    [request] = [line for line in lines if " request " in line]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", request)
    assert "op=ListKeys" in request and "principal=arn:aws:iam::111122223333:root" in request
