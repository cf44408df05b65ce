"""Bad input gets a clear error and changes nothing (RELIABILITY.md).

Requests generated from botocore's KMS model (every operation; values at and past
their limits, wrong enums, missing members, real and random key ids, random JSON)
go to a real dev node; header and signature mutations go to a non-dev node.
Prints: requests R; 5xx 0; malformed error bodies 0; undeclared error types 0;
events appended by rejected requests 0.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kms.api.validation import load_botocore_model
from tests.conftest import client_for
from tests.support.server import ServerProcess

MODEL = load_botocore_model()
SHAPES = MODEL["shapes"]
OPERATIONS = sorted(MODEL["operations"])
COMMON = {"ValidationException", "SerializationException", "UnknownOperationException",
          "AccessDeniedException", "UnsupportedOperationException", "DryRunOperationException",
          "InvalidSignatureException", "IncompleteSignatureException",
          "MissingAuthenticationTokenException", "UnrecognizedClientException",
          "ThrottlingException"}
KEY_MEMBERS = {"KeyId", "TargetKeyId", "DestinationKeyId", "SourceKeyId"}
FIGURES: Counter[str] = Counter()


def declared(operation: str) -> set[str]:
    errors = MODEL["operations"].get(operation, {}).get("errors", [])
    return COMMON | {e["shape"] for e in errors}


def send(url: str, target: str, body: bytes, headers: dict[str, str] | None = None
         ) -> tuple[int, bytes]:
    h = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target,
         "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDFUZZ/20260101/us-east-1/kms/"
                          "aws4_request, SignedHeaders=host, Signature=00"}
    if headers is not None:
        h = headers
    req = urllib.request.Request(url + "/", data=body, method="POST", headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def judge(operation: str, status: int, raw: bytes) -> None:
    """Count and check one answer: never 5xx; errors are JSON with a declared __type."""
    FIGURES["requests"] += 1
    FIGURES[f"status:{status}"] += 1
    if status >= 500:
        FIGURES["5xx"] += 1
    if status == 200:
        return
    try:
        doc = json.loads(raw)
        code = doc["__type"]
    except (ValueError, KeyError, TypeError):
        FIGURES["malformed"] += 1
        return
    if code not in declared(operation):
        FIGURES["undeclared"] += 1
        FIGURES[f"undeclared:{operation}:{code}"] += 1


# -- strategies from the model ----------------------------------------------------------------
def value_for(shape_name: str, member: str, ids: list[str], depth: int = 0
              ) -> st.SearchStrategy[Any]:
    shape = SHAPES[shape_name]
    kind = shape["type"]
    lo, hi = int(shape.get("min", 0)), int(shape.get("max", 64))
    if kind == "string":
        if "enum" in shape:
            return st.sampled_from([*shape["enum"], "NOPE", ""])
        if member in KEY_MEMBERS:
            return st.sampled_from(ids) | st.text(max_size=70)
        size = st.sampled_from(sorted({max(lo - 1, 0), lo, min(hi, 300), 40}))
        return size.flatmap(lambda n: st.text(min_size=n, max_size=n))
    if kind in ("integer", "long"):
        return st.sampled_from([lo - 1, lo, min(hi, 2**31 - 1), hi + 1, 0, -5])
    if kind == "boolean":
        return st.booleans()
    if kind == "blob":
        sizes = st.sampled_from(sorted({max(lo - 1, 0), lo, 32, min(hi, 5000), hi + 1}))
        return sizes.map(lambda n: base64.b64encode(b"\x01" * n).decode())
    if kind == "timestamp":
        return st.sampled_from([0, 1.9e9, -1, 1e12, "2027-01-01T00:00:00Z"])
    if depth > 2:
        return st.none()
    if kind == "list":
        item = value_for(shape["member"]["shape"], member, ids, depth + 1)
        return st.lists(item, max_size=min(int(shape.get("max", 3)) + 1, 12))
    if kind == "map":
        return st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4)
    if kind == "structure":
        return structure(shape_name, ids, depth + 1)
    return st.none()


def structure(shape_name: str, ids: list[str], depth: int = 0) -> st.SearchStrategy[Any]:
    shape = SHAPES[shape_name]
    members = shape.get("members", {})
    required = set(shape.get("required", []))
    parts = {name: value_for(m["shape"], name, ids, depth) for name, m in members.items()}

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        out = {}
        for name, strat in parts.items():
            keep = draw(st.integers(0, 9))
            if (name in required and keep > 0) or keep > 5:
                out[name] = draw(strat)
        return out

    return build()


def request_bodies(operation: str, ids: list[str]) -> st.SearchStrategy[bytes]:
    input_shape = MODEL["operations"][operation].get("input", {}).get("shape")
    typed = (structure(input_shape, ids) if input_shape else st.just({})).map(
        lambda d: json.dumps(d).encode())
    junk = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                        lambda c: st.lists(c, max_size=3) | st.dictionaries(
                            st.text(max_size=5), c, max_size=3), max_leaves=6
                        ).map(lambda d: json.dumps(d).encode())
    return st.one_of(typed, typed, typed, junk, st.binary(max_size=40))


# -- the dev node ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dev(dev_server: ServerProcess) -> Iterator[tuple[ServerProcess, list[str]]]:
    dev_server.reset()
    kms: Any = client_for(dev_server.url)
    sym = kms.create_key()["KeyMetadata"]
    rsa = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    hmac_key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    kms.create_alias(AliasName="alias/fuzz", TargetKeyId=sym["KeyId"])
    ids = [sym["KeyId"], sym["Arn"], rsa["KeyId"], hmac_key["Arn"], "alias/fuzz",
           "alias/missing", "arn:aws:kms:us-east-1:111122223333:alias/fuzz",
           "1234abcd-12ab-34cd-56ef-1234567890ab", "mrk-" + "0" * 32]
    yield dev_server, ids
    dev_server.reset()


def log_seq(server: ServerProcess) -> int:
    return int(server.health()["log_seq"])  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_generated_requests_get_declared_errors_and_change_nothing(
        dev: tuple[ServerProcess, list[str]], data: st.DataObject) -> None:
    server, ids = dev
    operation = data.draw(st.sampled_from(OPERATIONS))
    body = data.draw(request_bodies(operation, ids))
    before = log_seq(server)
    status, raw = send(server.url, f"TrentService.{operation}", body)
    after = log_seq(server)
    judge(operation, status, raw)
    if status != 200:
        FIGURES["rejected"] += 1
        if after != before + 1:  # exactly its audit fact, nothing else
            FIGURES["events by rejected"] += after - before - 1
    else:
        assert after > before  # an answered call left its audit fact


# -- the non-dev node: headers and signatures --------------------------------------------------
HEADER_CASES: list[dict[str, str] | None] = [
    {},
    {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.ListKeys"},
    {"Content-Type": "text/plain", "X-Amz-Target": "TrentService.ListKeys",
     "Authorization": "AWS4-HMAC-SHA256"},
    {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.CreateKey",
     "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDX/20260101/us-east-1/kms/aws4_request, "
                      "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
     "X-Amz-Date": "20260101T000000Z"},
    {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.CreateKey",
     "Authorization": "Basic dXNlcjpwYXNz"},
    {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "Nope.CreateKey",
     "Authorization": "AWS4-HMAC-SHA256 Credential=, SignedHeaders=, Signature="},
    {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.CreateKey",
     "Authorization": "AWS4-HMAC-SHA256 Credential=A/B/C/D/E, SignedHeaders=host, Signature=zz",
     "X-Amz-Date": "not a date"},
]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(Path(tmp_path_factory.mktemp("fuzz-secured")), dev=False).start()
    yield server
    server.stop()


@pytest.mark.parametrize("headers", HEADER_CASES)
def test_mutated_signatures_are_refused_cleanly(secured: ServerProcess,
                                                headers: dict[str, str]) -> None:
    before = log_seq(secured)
    status, raw = send(secured.url, headers.get("X-Amz-Target", ""), b"{}", headers=headers)
    judge(headers.get("X-Amz-Target", "").removeprefix("TrentService."), status, raw)
    assert status in (400, 403, 404)
    assert log_seq(secured) - before <= 1  # at most the refusal's audit fact


def test_signed_requests_with_a_tampered_part_are_refused(secured: ServerProcess) -> None:
    creds = json.loads((secured.data_dir / "credentials.json").read_text())["credentials"][0]
    kms: Any = client_for(secured.url, access_key=creds["access_key_id"],
                          secret=creds["secret_access_key"])
    keys_before = kms.list_keys()["Keys"]
    for tamper in ("secret", "region"):
        other: Any = client_for(secured.url, access_key=creds["access_key_id"],
                                secret=creds["secret_access_key"] + ("x" if tamper == "secret"
                                                                     else ""),
                                region="us-west-2" if tamper == "region" else "us-east-1")
        with pytest.raises(Exception) as info:
            other.create_key()
        code = info.value.response["Error"]["Code"]  # type: ignore[attr-defined]
        FIGURES["requests"] += 1
        assert code == "InvalidSignatureException"
    assert kms.list_keys()["Keys"] == keys_before


def test_zz_figure_line() -> None:
    """Runs last in this module: the figure line, and the zeros that must be zero."""
    line = (f"requests {FIGURES['requests']}; 5xx {FIGURES['5xx']}; malformed error bodies "
            f"{FIGURES['malformed']}; undeclared error types {FIGURES['undeclared']}; "
            f"events appended by rejected requests {FIGURES['events by rejected']}")
    statuses = {k[7:]: v for k, v in sorted(FIGURES.items()) if k.startswith("status:")}
    print(f"\n  answers by status: {statuses}")
    print(line)
    details = {k: v for k, v in FIGURES.items() if k.startswith("undeclared:")}
    assert FIGURES["requests"] > 300
    assert FIGURES["5xx"] == 0
    assert FIGURES["malformed"] == 0
    assert FIGURES["undeclared"] == 0, details
    assert FIGURES["events by rejected"] == 0
