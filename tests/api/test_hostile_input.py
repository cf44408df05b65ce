"""Hostile input a reviewer found: none of it may stop the node, leave state behind,
or get an answer without an audit fact."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.support.expect import refused
from tests.support.server import ServerProcess


def post(server: ServerProcess, target: str, body: bytes,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(server.url + "/", data=body, method="POST", headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"TrentService.{target}",
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/kms/"
                         "aws4_request, SignedHeaders=host, Signature=00", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def log_seq(server: ServerProcess) -> int:
    return int(server.health()["log_seq"])  # type: ignore[arg-type]


@pytest.mark.parametrize("body", [
    b'{"KeyId": "\\ud800"}',
    b'{"KeyId": "alias/x", "EncryptionContext": {"\\udfff": "v"}}',
])
def test_a_lone_surrogate_is_refused_and_the_node_keeps_writing(server: ServerProcess, kms: Any,
                                                                 body: bytes) -> None:
    before = log_seq(server)
    status, doc = post(server, "DescribeKey", body)
    assert status == 400 and doc["__type"] == "SerializationException"
    assert log_seq(server) == before + 1  # its audit fact
    kms.create_key(Description="still writing")
    assert server.health()["status"] == "ok"


def test_an_undecodable_user_agent_is_recorded_and_harmless(server: ServerProcess,
                                                            kms: Any) -> None:
    req = urllib.request.Request(server.url + "/", data=b"{}", method="POST", headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.ListKeys"})
    req.add_header("User-Agent", "caf\xe9 \xff")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    kms.create_key()
    assert server.health()["status"] == "ok"


def test_a_refused_call_naming_an_aws_alias_creates_nothing(kms: Any, raw_kms: Any) -> None:
    refused(kms.schedule_key_deletion, "NotFoundException", KeyId="alias/aws/s3")
    refused(kms.list_aliases, "NotFoundException", KeyId="alias/aws/s3")
    refused(kms.describe_key, "NotFoundException", KeyId="alias/aws/not-a-service")
    assert kms.list_keys()["Keys"] == []
    assert all("TargetKeyId" not in a for a in kms.list_aliases()["Aliases"])  # none used


def test_recipient_is_refused_rather_than_answered_in_clear(kms: Any) -> None:
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    recipient = {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": b"doc"}
    for call, params in [(kms.generate_data_key, {"KeyId": key, "KeySpec": "AES_256"}),
                         (kms.generate_random, {"NumberOfBytes": 8})]:
        response = refused(call, "UnsupportedOperationException", Recipient=recipient, **params)
        assert "Plaintext" not in response


@pytest.mark.parametrize("advance", [1e17, float("inf"), -1])
def test_the_dev_clock_refuses_absurd_moves(server: ServerProcess, kms: Any,
                                            advance: float) -> None:
    body = json.dumps({"advance_seconds": advance}).encode()
    req = urllib.request.Request(server.url + "/_kms/clock", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 400
    kms.create_key()
    assert server.health()["status"] == "ok"


def test_an_out_of_range_timestamp_is_a_client_error(server: ServerProcess, kms: Any) -> None:
    key = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    body = json.dumps({"KeyId": key, "ImportToken": "AAAA", "EncryptedKeyMaterial": "AAAA",
                       "ValidTo": 1e308}).encode()
    status, doc = post(server, "ImportKeyMaterial", body)
    assert status == 400 and doc["__type"] == "SerializationException"
