"""Request validation generated from botocore's KMS model: AWS wording, decoding, type errors."""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kms.api.validation import RequestModel, _show, load_botocore_model
from kms.domain.errors import SerializationException, ValidationException

KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.fixture(scope="module")
def model() -> RequestModel:
    return RequestModel()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def validation_message(model: RequestModel, operation: str, body: object) -> str:
    with pytest.raises(ValidationException) as caught:
        model.parse(operation, body)
    return caught.value.message


def test_operations_are_the_56_of_the_pinned_model(model: RequestModel) -> None:
    # botocore is pinned (pyproject) to the range whose KMS model this was generated against
    assert len(model.operations) == 56
    assert {"Encapsulate", "Decapsulate", "GetKeyLastUsage"} <= model.operations
    assert {"Encrypt", "Decrypt", "CreateKey", "GenerateDataKey"} <= model.operations


def test_valid_encrypt_decodes_blob_and_keeps_the_rest(model: RequestModel) -> None:
    body = {"KeyId": KEY_ARN, "Plaintext": b64(b"secret"), "EncryptionContext": {"a": "b"},
            "GrantTokens": ["t"], "EncryptionAlgorithm": "SYMMETRIC_DEFAULT", "DryRun": False}
    assert model.parse("Encrypt", body) == {**body, "Plaintext": b"secret"}


def test_nested_blob_is_decoded(model: RequestModel) -> None:
    recipient = {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                 "AttestationDocument": b64(b"\x00\x01doc")}
    params = model.parse("GenerateRandom", {"NumberOfBytes": 32, "Recipient": recipient})
    assert params["Recipient"] == {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                                   "AttestationDocument": b"\x00\x01doc"}


def test_timestamps_become_epoch_floats(model: RequestModel) -> None:
    base = {"KeyId": "k", "ImportToken": b64(b"t"), "EncryptedKeyMaterial": b64(b"m")}
    for given_value, expected in [(1607472987.918, 1607472987.918), (1704067200, 1704067200.0),
                                  ("2024-01-01T00:00:00Z", 1704067200.0),
                                  ("2024-01-01T01:00:00+01:00", 1704067200.0)]:
        params = model.parse("ImportKeyMaterial", {**base, "ValidTo": given_value})
        assert params["ValidTo"] == expected and type(params["ValidTo"]) is float


def test_unknown_members_are_ignored(model: RequestModel) -> None:
    assert model.parse("DescribeKey", {"KeyId": "k", "Bogus": [1, 2]}) == {"KeyId": "k"}


def test_null_optional_member_is_absent(model: RequestModel) -> None:
    assert model.parse("ListKeys", {"Limit": None}) == {}


def test_number_of_bytes_zero(model: RequestModel) -> None:
    assert validation_message(model, "GenerateDataKey", {"KeyId": "k", "NumberOfBytes": 0}) == (
        "1 validation error detected: Value '0' at 'numberOfBytes' failed to satisfy "
        "constraint: Member must have value greater than or equal to 1")


def test_oversized_plaintext_is_not_echoed(model: RequestModel) -> None:
    body = {"KeyId": "k", "Plaintext": b64(b"x" * 4097)}
    assert validation_message(model, "Encrypt", body) == (
        "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: "
        "Member must have length less than or equal to 4096")


def test_sensitive_string_is_not_echoed(model: RequestModel) -> None:
    body = {"CustomKeyStoreId": "cks-1", "KeyStorePassword": "x" * 33}
    assert validation_message(model, "UpdateCustomKeyStore", body) == (
        "1 validation error detected: Value at 'keyStorePassword' failed to satisfy "
        "constraint: Member must have length less than or equal to 32")


def test_missing_key_id(model: RequestModel) -> None:
    assert validation_message(model, "DescribeKey", {}) == (
        "1 validation error detected: Value null at 'keyId' failed to satisfy constraint: "
        "Member must not be null")


def test_enum_violation_lists_the_model_values(model: RequestModel) -> None:
    enum = load_botocore_model()["shapes"]["KeySpec"]["enum"]
    assert validation_message(model, "CreateKey", {"KeySpec": "NOPE"}) == (
        "1 validation error detected: Value 'NOPE' at 'keySpec' failed to satisfy constraint: "
        f"Member must satisfy enum value set: [{', '.join(enum)}]")
    assert enum[0] == "RSA_2048" and "SYMMETRIC_DEFAULT" in enum


def test_enum_sets_are_listed_in_aws_order_where_it_differs_from_the_model(
        model: RequestModel) -> None:
    assert load_botocore_model()["shapes"]["MacAlgorithmSpec"]["enum"] == [
        "HMAC_SHA_224", "HMAC_SHA_256", "HMAC_SHA_384", "HMAC_SHA_512"]
    body = {"KeyId": "k", "Message": b64(b"m"), "MacAlgorithm": "HMAC_SHA_1"}
    assert validation_message(model, "GenerateMac", body) == (
        "1 validation error detected: Value 'HMAC_SHA_1' at 'macAlgorithm' failed to satisfy "
        "constraint: Member must satisfy enum value set: "
        "[HMAC_SHA_384, HMAC_SHA_256, HMAC_SHA_224, HMAC_SHA_512]")


def test_an_enum_set_that_differs_from_the_recorded_one_keeps_the_model_order() -> None:
    model = load_botocore_model()
    grown = {**model, "shapes": {**model["shapes"], "MacAlgorithmSpec": {
        "type": "string", "enum": ["HMAC_SHA_224", "HMAC_SHA_256", "HMAC_SHA_384",
                                   "HMAC_SHA_512", "HMAC_SHA3_256"]}}}
    body = {"KeyId": "k", "Message": b64(b"m"), "MacAlgorithm": "X"}
    assert validation_message(RequestModel(grown), "GenerateMac", body).endswith(
        "[HMAC_SHA_224, HMAC_SHA_256, HMAC_SHA_384, HMAC_SHA_512, HMAC_SHA3_256]")


def test_long_values_are_echoed_whole_and_deep_nesting_is_bounded(
        model: RequestModel) -> None:
    key_id = "x" * 2049
    assert validation_message(model, "DescribeKey", {"KeyId": key_id}) == (
        f"1 validation error detected: Value '{key_id}' at 'keyId' failed to satisfy "
        "constraint: Member must have length less than or equal to 2048")
    tokens = [f"token-{i}" for i in range(150)]
    message = validation_message(model, "Encrypt", {"KeyId": "k", "Plaintext": b64(b"p"),
                                                    "GrantTokens": tokens})
    assert f"Value '[{', '.join(tokens)}]' at 'grantTokens'" in message
    deep: object = "x" * 300
    for _ in range(50):
        deep = [deep]
    assert _show(deep) == "[" * 9 + "[...]" + "]" * 9  # nesting is cut at a fixed depth


def test_two_errors_use_the_plural_in_member_order(model: RequestModel) -> None:
    message = validation_message(model, "CreateAlias", {"AliasName": "bad name!",
                                                        "TargetKeyId": ""})
    assert message == (
        "2 validation errors detected: Value 'bad name!' at 'aliasName' failed to satisfy "
        "constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$; "
        "Value '' at 'targetKeyId' failed to satisfy constraint: "
        "Member must have length greater than or equal to 1")
    assert validation_message(model, "Encrypt", {}).startswith(
        "2 validation errors detected: Value null at 'keyId' failed to satisfy constraint: "
        "Member must not be null; Value null at 'plaintext'")


def test_nested_tag_paths(model: RequestModel) -> None:
    body = {"Tags": [{"TagKey": "ok", "TagValue": "v"}, {"TagKey": "k" * 129, "TagValue": ""},
                     {"TagValue": "x"}]}
    assert validation_message(model, "CreateKey", body) == (
        "2 validation errors detected: "
        f"Value '{'k' * 129}' at 'tags.2.member.tagKey' failed to satisfy constraint: "
        "Member must have length less than or equal to 128; "
        "Value null at 'tags.3.member.tagKey' failed to satisfy constraint: "
        "Member must not be null")


def test_list_length_and_item_enum(model: RequestModel) -> None:
    body = {"KeyId": "k", "GranteePrincipal": "p", "Operations": ["Encrypt", "Nope"],
            "GrantTokens": ["t"] * 11}
    message = validation_message(model, "CreateGrant", body)
    assert message.startswith("2 validation errors detected: Value 'Nope' at "
                              "'operations.2.member' failed to satisfy constraint: "
                              "Member must satisfy enum value set: [Decrypt, Encrypt, ")
    assert message.endswith("; Value '[t, t, t, t, t, t, t, t, t, t, t]' at 'grantTokens' "
                            "failed to satisfy constraint: "
                            "Member must have length less than or equal to 10")


def test_pattern_is_a_full_match(model: RequestModel) -> None:
    model.parse("CreateCustomKeyStore", {"CustomKeyStoreName": "n",
                                         "CloudHsmClusterId": "cluster-234567abcdefg"})
    message = validation_message(model, "CreateCustomKeyStore", {
        "CustomKeyStoreName": "n", "CloudHsmClusterId": "xcluster-234567abcdefgx"})
    assert "pattern: cluster-[2-7a-zA-Z]{11,16}" in message


@pytest.mark.parametrize("plaintext", ["@@@@", "YQ", "YQ==YQ==", "Y Q==", "é"])
def test_bad_base64_is_a_serialization_error(model: RequestModel, plaintext: str) -> None:
    with pytest.raises(SerializationException, match="plaintext"):
        model.parse("Encrypt", {"KeyId": "k", "Plaintext": plaintext})


@pytest.mark.parametrize(("operation", "body", "member"), [
    ("ListKeys", {"Limit": "5"}, "limit"),
    ("ListKeys", {"Limit": 5.0}, "limit"),
    ("ListKeys", {"Limit": True}, "limit"),
    ("ListKeys", {"Limit": 2**40}, "limit"),
    ("DescribeKey", {"KeyId": True}, "keyId"),
    ("DescribeKey", {"KeyId": ["k"]}, "keyId"),
    ("Encrypt", {"KeyId": "k", "Plaintext": 5}, "plaintext"),
    ("Encrypt", {"KeyId": "k", "Plaintext": "AA==", "EncryptionContext": {"a": 1}},
     "encryptionContext"),
    ("Encrypt", {"KeyId": "k", "Plaintext": "AA==", "EncryptionContext": ["a"]},
     "encryptionContext"),
    ("Encrypt", {"KeyId": "k", "Plaintext": "AA==", "DryRun": "true"}, "dryRun"),
    ("Encrypt", {"KeyId": "k", "Plaintext": "AA==", "GrantTokens": "t"}, "grantTokens"),
    ("CreateKey", {"Tags": [["TagKey", "k"]]}, "tags.1.member"),
    ("CreateGrant", {"KeyId": "k", "GranteePrincipal": "p", "Operations": ["Encrypt"],
                     "Constraints": []}, "constraints"),
    ("ImportKeyMaterial", {"KeyId": "k", "ImportToken": "AA==", "EncryptedKeyMaterial": "AA==",
                           "ValidTo": "next tuesday"}, "validTo"),
])
def test_wrong_json_types_are_serialization_errors(
    model: RequestModel, operation: str, body: dict, member: str
) -> None:
    with pytest.raises(SerializationException, match=f"'{member}'"):
        model.parse(operation, body)


@pytest.mark.parametrize("body", [[], "x", None, 3, [{"KeyId": "k"}]])
def test_body_must_be_an_object(model: RequestModel, body: object) -> None:
    with pytest.raises(SerializationException):
        model.parse("DescribeKey", body)


def test_a_custom_model_is_compiled_as_given() -> None:
    custom = {"operations": {"Op": {"input": {"shape": "In"}}},
              "shapes": {"In": {"type": "structure", "required": ["N"],
                                "members": {"N": {"shape": "Small"}}},
                         "Small": {"type": "integer", "max": 3}}}
    tiny = RequestModel(custom)
    assert tiny.operations == frozenset({"Op"})
    assert tiny.parse("Op", {"N": 3}) == {"N": 3}
    assert validation_message(tiny, "Op", {"N": 4}).endswith("less than or equal to 3")


# -- property: parse() only ever answers with params or the two protocol errors -------------
MODEL = RequestModel()
SHAPES = load_botocore_model()["shapes"]
OPERATIONS = sorted(load_botocore_model()["operations"])
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)


def shaped(name: str, depth: int = 0) -> st.SearchStrategy[object]:
    """Mostly well-typed values for a shape (with out-of-range sizes), sometimes junk."""
    shape = SHAPES[name]
    kind = shape["type"]
    if depth > 4:
        return JSONISH
    if kind == "string":
        good = (st.sampled_from(shape["enum"]) if "enum" in shape
                else st.text(max_size=shape.get("max", 64) + 2))
    elif kind == "blob":
        good = st.binary(max_size=64).map(b64) | st.text(max_size=12)
    elif kind in ("integer", "long"):
        good = st.integers(min_value=-(2**64), max_value=2**64)
    elif kind == "timestamp":
        good = st.floats() | st.datetimes().map(lambda d: d.isoformat()) | st.text(max_size=30)
    elif kind == "boolean":
        good = st.booleans()
    elif kind == "list":
        good = st.lists(shaped(shape["member"]["shape"], depth + 1), max_size=12)
    elif kind == "map":
        good = st.dictionaries(st.text(max_size=8), shaped(shape["value"]["shape"], depth + 1),
                               max_size=4)
    else:
        good = structure(name, depth + 1)
    return good | JSONISH


def structure(name: str, depth: int = 0) -> st.SearchStrategy[dict]:
    members = SHAPES[name].get("members", {})
    return st.fixed_dictionaries(
        {}, optional={member: shaped(m["shape"], depth) for member, m in members.items()}
    ).flatmap(lambda d: st.dictionaries(st.text(max_size=6), JSONISH, max_size=2).map(
        lambda extra: {**extra, **d}))


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, object]:
    operation = draw(st.sampled_from(OPERATIONS))
    shape = load_botocore_model()["operations"][operation]["input"]["shape"]
    return operation, draw(structure(shape) | JSONISH)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_parse_returns_a_dict_or_raises_a_protocol_error(request_: tuple[str, object]) -> None:
    operation, body = request_
    try:
        params = MODEL.parse(operation, body)
    except (ValidationException, SerializationException) as exc:
        assert exc.message
    else:
        assert isinstance(params, dict)
        assert set(params) <= set(body)  # type: ignore[arg-type]

