"""The wire protocol seen with plain HTTP: AWS JSON 1.1 answers for every request (never
HTML), status codes, request ids, the health endpoint, and the audit fact every call
leaves, with refused calls changing nothing else."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

JSON_11 = "application/x-amz-json-1.1"


class Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.body)
        return doc

    @property
    def request_id(self) -> str:
        return str(self.headers.get("x-amzn-RequestId", ""))


def http(server: Any, body: bytes | None = b"{}", *, target: str | None = "TrentService.ListKeys",
         content_type: str | None = JSON_11, method: str = "POST", path: str = "/") -> Answer:
    headers = {}
    if target is not None:
        headers["X-Amz-Target"] = target
    if content_type is not None:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(server.url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return Answer(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        with e:
            return Answer(e.code, e.headers, e.read())


def call(server: Any, operation: str, params: dict[str, Any]) -> Answer:
    return http(server, json.dumps(params).encode(), target=f"TrentService.{operation}")


def assert_aws_error(answer: Answer, status: int, code: str) -> dict[str, Any]:
    assert answer.status == status
    assert answer.headers.get_content_type() == JSON_11
    assert not answer.body.lstrip().startswith(b"<")  # never an HTML page
    doc = answer.json
    assert doc["__type"] == code
    assert "Traceback" not in doc.get("message", "")
    uuid.UUID(answer.request_id)  # x-amzn-RequestId is a UUID
    return doc


def log_seq(server: Any) -> int:
    seq = server.health()["log_seq"]
    assert isinstance(seq, int)
    return seq


# -- Errors on the wire ---------------------------------------------------------------------
def test_unknown_operation(server: Any) -> None:
    doc = assert_aws_error(http(server, target="TrentService.MakeCoffee"), 400,
                           "UnknownOperationException")
    assert "MakeCoffee" in doc["message"]


def test_target_with_another_service_prefix(server: Any) -> None:
    assert_aws_error(http(server, target="DynamoDB_20120810.ListTables"), 400,
                     "UnknownOperationException")


def test_missing_target(server: Any) -> None:
    assert_aws_error(http(server, target=None), 400, "UnknownOperationException")


@pytest.mark.parametrize("body", [b"{", b"{'KeyId': 1}", b"\xff\xfe", b"{} trailing",
                                  b"[" * 100_000 + b"]" * 100_000])
def test_malformed_json(server: Any, body: bytes) -> None:
    assert_aws_error(http(server, body, target="TrentService.DescribeKey"), 400,
                     "SerializationException")


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"42", b"null"])
def test_body_that_is_not_an_object(server: Any, body: bytes) -> None:
    assert_aws_error(http(server, body), 400, "SerializationException")


def test_member_of_the_wrong_json_type(server: Any) -> None:
    assert_aws_error(call(server, "ListKeys", {"Limit": "3"}), 400, "SerializationException")
    assert_aws_error(call(server, "Encrypt", {"KeyId": "k", "Plaintext": "%%not base64%%"}),
                     400, "SerializationException")


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", None])
def test_wrong_content_type(server: Any, content_type: str | None) -> None:
    assert_aws_error(http(server, content_type=content_type), 400, "SerializationException")


def test_json_content_types_that_sdks_send_are_accepted(server: Any) -> None:
    for content_type in (JSON_11, "application/x-amz-json-1.0", "application/json",
                         JSON_11 + "; charset=utf-8"):
        answer = http(server, content_type=content_type)
        assert answer.status == 200, content_type
        assert answer.json == {"Keys": [], "Truncated": False}


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/", 405),
    ("PUT", "/", 405),
    ("GET", "/no/such/path", 404),
    ("POST", "/no/such/path", 404),
    ("GET", "/_kms/nothing", 404),
])
def test_other_methods_and_paths_answer_json(server: Any, method: str, path: str,
                                             status: int) -> None:
    body = None if method == "GET" else b"{}"
    assert_aws_error(http(server, body, method=method, path=path), status,
                     "UnknownOperationException")


def test_oversized_body_answers_json_and_is_audited(server: Any) -> None:
    seq = log_seq(server)
    answer = http(server, b"{" + b" " * (1024 * 1024) + b"}", target="TrentService.Encrypt")
    assert_aws_error(answer, 413, "SerializationException")
    assert log_seq(server) == seq + 1


def test_validation_error_on_the_wire(server: Any) -> None:
    doc = assert_aws_error(call(server, "GenerateRandom", {"NumberOfBytes": 0}), 400,
                           "ValidationException")
    assert doc["message"] == ("1 validation error detected: Value '0' at 'numberOfBytes' "
                              "failed to satisfy constraint: Member must have value greater "
                              "than or equal to 1")


def test_modeled_error_with_empty_message_has_no_message_member(server: Any) -> None:
    blob = base64.b64encode(b"\x01\x24" + b"x" * 120).decode()
    answer = call(server, "Decrypt", {"CiphertextBlob": blob})
    assert_aws_error(answer, 400, "InvalidCiphertextException")
    assert answer.json == {"__type": "InvalidCiphertextException"}


# -- Successful answers ---------------------------------------------------------------------
def test_success_answers_json_with_a_request_id(server: Any) -> None:
    answer = call(server, "CreateKey", {"Description": "wire"})
    assert answer.status == 200
    assert answer.headers.get_content_type() == JSON_11
    uuid.UUID(answer.request_id)
    md = answer.json["KeyMetadata"]
    assert md["Description"] == "wire"
    assert isinstance(md["CreationDate"], int | float)  # epoch seconds, as AWS JSON 1.1 sends

    blob = call(server, "Encrypt", {"KeyId": md["KeyId"],
                                    "Plaintext": base64.b64encode(b"hi").decode()})
    assert blob.status == 200
    plain = call(server, "Decrypt", {"CiphertextBlob": blob.json["CiphertextBlob"]})
    assert base64.b64decode(plain.json["Plaintext"]) == b"hi"


def test_operation_without_output_answers_an_empty_200(server: Any) -> None:
    kid = call(server, "CreateKey", {}).json["KeyMetadata"]["KeyId"]
    answer = call(server, "CreateAlias", {"AliasName": "alias/wire", "TargetKeyId": kid})
    assert answer.status == 200
    assert answer.body in (b"", b"{}")
    uuid.UUID(answer.request_id)


def test_every_answer_has_its_own_request_id(kms: Any) -> None:
    ids = {kms.list_keys()["ResponseMetadata"]["RequestId"] for _ in range(3)}
    with pytest.raises(ClientError) as info:
        kms.describe_key(KeyId="nope")
    meta = info.value.response["ResponseMetadata"]
    assert meta["RequestId"] == meta["HTTPHeaders"]["x-amzn-requestid"]
    ids.add(meta["RequestId"])
    assert len(ids) == 4


# -- Health and the audit log ---------------------------------------------------------------
def test_health_shape(server: Any) -> None:
    health = server.health()
    assert {"status", "region", "log_seq"} <= set(health)  # the writer's state may follow
    assert health["status"] == "ok"
    assert health["region"] == "us-east-1"
    assert health["log_seq"] == 0  # a freshly reset node


def test_every_call_appends_to_the_log(server: Any, kms: Any) -> None:
    seq = log_seq(server)
    kid = kms.create_key()["KeyMetadata"]["KeyId"]
    after_create = log_seq(server)
    assert after_create >= seq + 2  # the key's event and the audit fact

    steps = [
        lambda: kms.describe_key(KeyId=kid),
        lambda: kms.list_keys(),
        lambda: kms.encrypt(KeyId=kid, Plaintext=b"p"),
        lambda: kms.generate_random(NumberOfBytes=8),
        lambda: call(server, "NoSuchOperation", {}),
        lambda: http(server, b"{", target="TrentService.ListKeys"),
    ]
    seq = after_create
    for step in steps:
        step()
        now = log_seq(server)
        assert now == seq + 1  # read-only and refused calls: exactly the audit fact
        seq = now

    kms.disable_key(KeyId=kid)
    assert log_seq(server) == seq + 2  # a state change and its audit fact


def test_refused_requests_change_nothing(server: Any, kms: Any, raw_kms: Any) -> None:
    key = kms.create_key(Description="kept", Tags=[{"TagKey": "env", "TagValue": "prod"}])
    kid = key["KeyMetadata"]["KeyId"]
    off = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.disable_key(KeyId=off)
    spare = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/main", TargetKeyId=kid)
    blob = kms.encrypt(KeyId=kid, Plaintext=b"p", EncryptionContext={"a": "b"})["CiphertextBlob"]

    def snapshot() -> Any:
        return (
            kms.list_keys()["Keys"],
            [kms.describe_key(KeyId=k)["KeyMetadata"] for k in (kid, off, spare)],
            kms.list_aliases()["Aliases"],
            [kms.list_resource_tags(KeyId=k)["Tags"] for k in (kid, off)],
        )

    before = snapshot()
    unknown = str(uuid.uuid4())
    bad_requests: list[tuple[str, Any]] = [
        ("ValidationException",
         lambda: raw_kms.encrypt(KeyId=kid, Plaintext=b"x" * 4097)),
        ("ValidationException",
         lambda: raw_kms.update_key_description(KeyId=kid, Description="d" * 8193)),
        ("ValidationException", lambda: kms.create_key(KeyUsage="SIGN_VERIFY")),
        ("ValidationException", lambda: kms.create_alias(AliasName="main", TargetKeyId=kid)),
        ("UnsupportedOperationException", lambda: kms.create_key(Origin="AWS_CLOUDHSM")),
        ("UnsupportedOperationException",
         lambda: kms.create_key(KeySpec="SM2", KeyUsage="SIGN_VERIFY")),
        ("NotFoundException", lambda: kms.describe_key(KeyId=unknown)),
        ("NotFoundException", lambda: kms.disable_key(KeyId="alias/main")),
        ("NotFoundException",
         lambda: kms.update_key_description(KeyId="alias/main", Description="changed")),
        ("NotFoundException", lambda: kms.update_alias(AliasName="alias/main",
                                                       TargetKeyId=unknown)),
        ("NotFoundException", lambda: kms.delete_alias(AliasName="alias/absent")),
        ("NotFoundException",
         lambda: kms.tag_resource(KeyId=unknown, Tags=[{"TagKey": "k", "TagValue": "v"}])),
        ("DisabledException", lambda: kms.encrypt(KeyId=off, Plaintext=b"p")),
        ("DisabledException",
         lambda: kms.generate_data_key(KeyId=off, KeySpec="AES_256")),
        ("AlreadyExistsException",
         lambda: kms.create_alias(AliasName="alias/main", TargetKeyId=off)),
        ("AccessDeniedException",
         lambda: kms.create_alias(AliasName="alias/aws/s3", TargetKeyId=kid)),
        ("TagException", lambda: kms.tag_resource(
            KeyId=kid, Tags=[{"TagKey": "env", "TagValue": "dev"},
                             {"TagKey": "aws:x", "TagValue": "y"}])),
        ("TagException", lambda: kms.untag_resource(KeyId=kid, TagKeys=["aws:x"])),
        ("InvalidCiphertextException", lambda: kms.decrypt(CiphertextBlob=blob)),
        ("IncorrectKeyException",
         lambda: kms.decrypt(CiphertextBlob=blob, KeyId=spare, EncryptionContext={"a": "b"})),
        ("DryRunOperationException",
         lambda: kms.generate_data_key(KeyId=kid, KeySpec="AES_256", DryRun=True)),
        ("InvalidMarkerException", lambda: kms.list_keys(Marker="bogus")),
    ]
    for code, request in bad_requests:
        seq = log_seq(server)
        with pytest.raises(ClientError) as info:
            request()
        assert info.value.response["Error"]["Code"] == code
        assert log_seq(server) == seq + 1, code  # the audit fact, and nothing else

    for code, answer in [
        ("UnknownOperationException", lambda: call(server, "DeleteEverything", {"KeyId": kid})),
        ("SerializationException", lambda: http(server, b"{", target="TrentService.DisableKey")),
    ]:
        seq = log_seq(server)
        assert answer().json["__type"] == code
        assert log_seq(server) == seq + 1, code

    assert snapshot() == before
    # and the keys still work as before
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "b"})["Plaintext"] == b"p"
