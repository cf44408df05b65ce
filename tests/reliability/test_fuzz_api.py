"""Bad input gets a clear error and changes nothing.

Hypothesis builds requests for every operation of botocore's KMS model (mostly well-typed
values at and just past the model's limits, wrong enums, missing required members, wrong JSON
types, real and random key ids / ARNs / alias names, real and damaged ciphertexts, signatures
and MACs), plus wholly random JSON and raw bodies, and sends them as raw AWS JSON 1.1 to a real
``--dev`` node. A second node without ``--dev`` gets correctly signed requests with one thing
broken each: the Authorization header, the dates, missing headers, content types, targets.

Every answer must be: not 5xx; for an error, a JSON object whose ``__type`` is a modeled error
of that operation or one of the protocol-level ones. On the dev node every refused (4xx)
request must move ``/_kms/health`` ``log_seq`` by exactly one (its audit fact, nothing else);
on the signed node no key may appear except by an accepted CreateKey.

Rules: derandomized and bounded (fixed example counts, one node reset at module start), so the
figure line is the same run to run; helper calls (fixture keys, restoring them between
operations) are not counted as fuzz requests. ``KMS_FUZZ_VERBOSE=1`` also prints the
answers per operation (how many reached a handler); ``=2`` prints every refusal. The wire,
the judge and its tally are in tests/support/fuzz_wire.py, the model's strategies and the dev
node's keys in fuzz_model.py, the hand signer and its mutations in fuzz_signed.py; the tests
stay in this one module because the figure line is one tally over both nodes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.support.fuzz_model import JSON_VALUES, DevTarget, operation_requests
from tests.support.fuzz_signed import MUTATIONS, SignedTarget, mutated_request
from tests.support.fuzz_wire import (
    CT,
    DEV_AUTH,
    MODELED_ERRORS,
    OPERATIONS,
    STATS,
    VIOLATIONS,
    describe,
    figure_line,
    judge,
    violation,
)
from tests.support.server import ServerProcess

EXAMPLES_PER_OPERATION = 12  # x every operation of the model
RANDOM_BODY_EXAMPLES = 60
MUTATION_EXAMPLES = 150
FUZZ_SETTINGS = settings(deadline=None, derandomize=True, database=None,
                         phases=(Phase.explicit, Phase.generate),
                         suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def dev(dev_server: ServerProcess) -> Iterator[DevTarget]:
    dev_server.reset()  # once, for the whole module
    target = DevTarget(dev_server)
    target.create_fixtures()
    yield target
    target.wire.close()


@pytest.fixture(scope="module", autouse=True)
def figure(request: pytest.FixtureRequest) -> Iterator[None]:
    started = time.monotonic()
    yield
    print(f"\n{figure_line()}")
    print(f"  ({STATS['accepted']} accepted, {STATS['rejected']} rejected, "
          f"{time.monotonic() - started:.1f} s; error types: "
          + ", ".join(f"{k[5:]} {v}" for k, v in sorted(STATS.items())
                      if k.startswith("code:")) + ")")
    if os.environ.get("KMS_FUZZ_VERBOSE"):
        for k, v in sorted(STATS.items()):
            if k.startswith("op:"):
                print(f"  {k} {v}")
    for line in VIOLATIONS[:40]:
        print("  " + line)


# -- 1. every operation of the model, on the dev node -------------------------------------------
def send_dev(dev: DevTarget, operation: str | None, body: bytes,
             headers: list[tuple[str, str | bytes]], request: str) -> None:
    before = dev.wire.health_seq()
    status, data = dev.wire.send("POST", "/", body, headers)
    after = dev.wire.health_seq()
    code = judge(operation, status, data, request)
    named = any(n.lower() == "x-amz-target" and v for n, v in headers)
    if code is not None and 400 <= status < 500:
        expected = 1 if named else 0  # a call that names no operation has nothing to audit
        if after - before != expected:
            violation("appended", f"{code}: log_seq moved {after - before} (expected "
                                  f"{expected}) for {request}")


@pytest.mark.parametrize("operation", OPERATIONS)
def test_every_operation_answers_bad_input_cleanly(dev: DevTarget, operation: str) -> None:
    seen = len(VIOLATIONS)

    @settings(FUZZ_SETTINGS, max_examples=EXAMPLES_PER_OPERATION)
    @given(doc=operation_requests(dev, operation))
    def run(doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        headers: list[tuple[str, str | bytes]] = [
            ("Content-Type", CT), ("X-Amz-Target", f"TrentService.{operation}"),
            ("Authorization", DEV_AUTH)]
        send_dev(dev, operation, body, headers, describe(operation, body, headers))

    try:
        run()
    finally:
        dev.restore()
    assert VIOLATIONS[seen:] == []


# -- 2. wholly random JSON, raw bodies and headers, on the dev node ------------------------------
NASTY_BODIES = [
    b"", b" ", b"null", b"[]", b"\"{}\"", b"{", b"{}}", b"\xff\xfe{}", b"{\"KeyId\": NaN}",
    b"[" * 100_000, b"{\"a\":" * 50_000,
    b'{"KeyId":"\\ud800"}', b'{"Description":"\\udfff\\ud800"}', b'{"\\ud800":1}',
    b'{"KeyId": "' + b"k" * 3000 + b'"}', b'{"Limit": 1e400}',
    b'{"Limit": 10000000000000000000000}',
    b'{"GrantTokens": [' + b",".join([b"[" * 480 + b"]" * 480] * 11) + b"]}",
    b'{"EncryptionContext": {"a": ' + b"[" * 900 + b"]" * 900 + b"}}",
    b"{\"Plaintext\": \"" + b"A" * (1024 * 1024) + b"\"}",  # over client_max_size: 413
]


@settings(FUZZ_SETTINGS, max_examples=RANDOM_BODY_EXAMPLES)
@given(
    target=st.one_of(st.sampled_from(OPERATIONS).map(lambda o: f"TrentService.{o}"),
                     st.sampled_from(OPERATIONS),
                     st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                             max_size=40),
                     st.sampled_from(["TrentService.", "TrentService.Nope", "trentservice.ListKeys",
                                      "TrentService.ListKeys ", "AWSKMS.ListKeys", ""])),
    body=st.one_of(JSON_VALUES.map(lambda v: json.dumps(v).encode()),
                   st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=6).map(
                       lambda v: json.dumps(v).encode()),
                   st.binary(max_size=64)),
    ctype=st.sampled_from([CT, CT, CT, "application/x-amz-json-1.0", "application/json",
                           "text/plain", "", "application/x-amz-json-1.1; charset=utf-8",
                           "APPLICATION/X-AMZ-JSON-1.1", "application/xml"]),
)
def test_random_bodies_targets_and_content_types(dev: DevTarget, target: str, body: bytes,
                                                 ctype: str) -> None:
    operation = target.removeprefix("TrentService.")
    headers: list[tuple[str, str | bytes]] = [("Content-Type", ctype), ("X-Amz-Target", target)]
    send_dev(dev, operation if operation in MODELED_ERRORS else None, body, headers,
             describe(target, body, headers))


@pytest.mark.parametrize("index", range(len(NASTY_BODIES)))
def test_nasty_bodies(dev: DevTarget, index: int) -> None:
    seen = len(VIOLATIONS)
    body = NASTY_BODIES[index]
    for operation in ("Encrypt", "CreateKey", "ListKeys"):
        headers: list[tuple[str, str | bytes]] = [("Content-Type", CT),
                                                  ("X-Amz-Target", f"TrentService.{operation}")]
        send_dev(dev, operation, body, headers, describe(operation, body, headers))
    assert VIOLATIONS[seen:] == []


# -- 3. header and signature mutations, on a node that checks SigV4 ------------------------------
@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SignedTarget]:
    server = ServerProcess(Path(tmp_path_factory.mktemp("fuzz-signed")) / "d", dev=False).start()
    try:
        target = SignedTarget(server)
        status, out = target.call("ListKeys", {})
        assert status == 200 and out["Keys"] == [], out  # the hand signer is right
        yield target
        target.wire.close()
    finally:
        server.stop()


def test_header_and_signature_mutations(signed: SignedTarget) -> None:
    seen = len(VIOLATIONS)
    accepted_harmful: list[str] = []

    @settings(FUZZ_SETTINGS, max_examples=MUTATION_EXAMPLES)
    @given(req=mutated_request(signed))
    def run(req: tuple[str, str, bytes, list[tuple[str, Any]]]) -> None:
        kind, operation, body, headers = req
        status, data = signed.wire.send("POST", "/", body, headers)
        request = f"[{kind}] " + describe(operation, body, headers)
        named = [v for k, v in headers if k.lower() == "x-amz-target"]
        code = judge(operation if named and named[0] == f"TrentService.{operation}" else None,
                     status, data, request)
        STATS[f"mutation:{kind}"] += 1
        if code is None:
            if kind in MUTATIONS:
                accepted_harmful.append(request)
            if operation == "CreateKey":
                signed.creates_accepted += 1

    run()
    assert accepted_harmful == [], accepted_harmful
    status, out = signed.call("ListKeys", {"Limit": 1000})
    assert status == 200
    assert len(out["Keys"]) == signed.creates_accepted, (out, signed.creates_accepted)
    assert VIOLATIONS[seen:] == []


# Raw bytes that are not UTF-8 (obs-text) in the headers the verifier parses and may echo.
RAW_HEADER_CASES = {
    "user_agent": [(b"User-Agent", b"fuzz/\xff\xfe")],
    "target": [(b"X-Amz-Target", b"TrentService.\xe9\xff")],
    "date": [(b"X-Amz-Date", b"2024\xff")],
    "credential": [(b"Authorization", b"AWS4-HMAC-SHA256 Credential=\xff, SignedHeaders=host")],
    "terminator": [(b"Authorization", b"AWS4-HMAC-SHA256 Credential=AKIA/20240101/us-east-1/"
                                      b"kms/\xff, SignedHeaders=host, Signature=" + b"0" * 64)],
    "signed_headers": [(b"Authorization", b"AWS4-HMAC-SHA256 Credential=AKIA/20240101/us-east-1/"
                                          b"kms/aws4_request, SignedHeaders=\xff;host")],
}


@pytest.mark.parametrize("case", sorted(RAW_HEADER_CASES))
def test_undecodable_header_bytes(signed: SignedTarget, case: str) -> None:
    """Each header alone, on a request that is otherwise well signed (or, for the
    Authorization cases, well formed): refused or served, never a fault."""
    seen = len(VIOLATIONS)
    body = b"{}"
    good = signed.sign(body, "TrentService.ListKeys")
    raw: dict[bytes, bytes] = {k.encode(): v.encode() for k, v in good.items()}
    if case in ("credential", "terminator", "signed_headers"):
        raw[b"X-Amz-Date"] = b"20240101T000000Z"
    raw.update(RAW_HEADER_CASES[case])
    headers: list[tuple[str, Any]] = [(k.decode(), v) for k, v in raw.items()]
    status, data = signed.wire.send("POST", "/", body, headers)
    judge("ListKeys", status, data, f"[raw {case}] " + describe("ListKeys", body, headers))
    assert VIOLATIONS[seen:] == []


# -- the figure ----------------------------------------------------------------------------------
def test_zz_figure_line() -> None:
    """Runs last in this module: the zero figures are zero, over a non-trivial run."""
    assert STATS["requests"] >= 400
    assert STATS["5xx"] == 0, VIOLATIONS
    assert STATS["malformed"] == 0, VIOLATIONS
    assert STATS["undeclared"] == 0, VIOLATIONS
    assert STATS["appended"] == 0, VIOLATIONS
