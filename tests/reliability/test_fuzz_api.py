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
answers per operation (how many reached a handler); ``=2`` prints every refusal.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import http.client
import json
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from kms.api.validation import load_botocore_model
from tests.support.server import ServerProcess

REGION = "us-east-1"
ACCOUNT = "111122223333"
MODEL = load_botocore_model()
OPERATIONS = sorted(MODEL["operations"])
SHAPES: dict[str, dict[str, Any]] = MODEL["shapes"]
COMMON_ERRORS = frozenset({
    "ValidationException", "SerializationException", "UnknownOperationException",
    "AccessDeniedException", "UnsupportedOperationException", "DryRunOperationException",
    "InvalidSignatureException", "IncompleteSignatureException",
    "MissingAuthenticationTokenException", "UnrecognizedClientException", "ThrottlingException",
})
MODELED_ERRORS = {name: frozenset(e["shape"] for e in op.get("errors", ()))
                  for name, op in MODEL["operations"].items()}
EXAMPLES_PER_OPERATION = 12  # x every operation of the model
RANDOM_BODY_EXAMPLES = 60
MUTATION_EXAMPLES = 150
CT = "application/x-amz-json-1.1"
DEV_AUTH = ("AWS4-HMAC-SHA256 Credential=AKIDFUZZ/20240101/us-east-1/kms/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64)
AWS_MANAGED_SERVICES = ("s3", "ebs", "sns", "sqs", "lambda", "rds", "secretsmanager")
KEY_ID_MEMBERS = frozenset({"KeyId", "TargetKeyId", "DestinationKeyId", "SourceKeyId"})
FUZZ_SETTINGS = settings(deadline=None, derandomize=True, database=None,
                         phases=(Phase.explicit, Phase.generate),
                         suppress_health_check=list(HealthCheck))

# -- the tally behind the figure line --------------------------------------------------------
STATS: Counter[str] = Counter()
VIOLATIONS: list[str] = []  # one line each: what broke, and the request that broke it


def violation(kind: str, detail: str) -> None:
    STATS[kind] += 1
    VIOLATIONS.append(f"{kind}: {detail}"[:1500])


def figure_line() -> str:
    return (f"requests {STATS['requests']}; 5xx {STATS['5xx']}; "
            f"malformed error bodies {STATS['malformed']}; "
            f"undeclared error types {STATS['undeclared']}; "
            f"events appended by rejected requests {STATS['appended']}")


# -- a bare HTTP client ----------------------------------------------------------------------
class Wire:
    """Keep-alive HTTP/1.1 to one node; headers go out as given (bytes allowed)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def send(self, method: str, path: str, body: bytes,
             headers: list[tuple[str, str | bytes]]) -> tuple[int, bytes]:
        for attempt in (0, 1):
            try:
                self.conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                if not any(name.lower() == "host" for name, _ in headers):
                    self.conn.putheader("Host", f"127.0.0.1:{self.port}")
                for name, value in headers:
                    self.conn.putheader(name, value)
                self.conn.putheader("Content-Length", str(len(body)))
                self.conn.endheaders(body)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.reconnect()
                return resp.status, data
            except (http.client.HTTPException, ConnectionError):
                self.reconnect()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def reconnect(self) -> None:
        self.conn.close()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def health_seq(self) -> int:
        status, data = self.send("GET", "/_kms/health", b"", [])
        assert status == 200, data
        return int(json.loads(data)["log_seq"])

    def call(self, operation: str, doc: dict[str, Any],
             extra: list[tuple[str, str | bytes]] | None = None) -> tuple[int, dict[str, Any]]:
        status, data = self.send("POST", "/", json.dumps(doc).encode(), [
            ("Content-Type", CT), ("X-Amz-Target", f"TrentService.{operation}"),
            ("Authorization", DEV_AUTH), *(extra or [])])
        return status, (json.loads(data) if data.strip() else {})

    def close(self) -> None:
        self.conn.close()


def judge(operation: str | None, status: int, data: bytes, request: str) -> str | None:
    """Count one answer against the promise; return its ``__type`` (None for a success)."""
    STATS["requests"] += 1
    if status >= 500:
        violation("5xx", f"HTTP {status} {data[:300]!r} for {request}")
    if status == 200:
        STATS["accepted"] += 1
        STATS[f"op:{operation}:200"] += 1
        try:  # a success is an empty body or a JSON object
            if data.strip() and not isinstance(json.loads(data), dict):
                violation("malformed", f"200 with non-object body {data[:200]!r} for {request}")
        except ValueError:
            violation("malformed", f"200 with non-JSON body {data[:200]!r} for {request}")
        return None
    STATS["rejected"] += 1
    if not 400 <= status < 600:
        violation("malformed", f"HTTP {status} is neither success nor error, for {request}")
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("__type"), str) or not isinstance(
            doc.get("message", ""), str):
        violation("malformed", f"HTTP {status} body {data[:300]!r} for {request}")
        return "?"
    code: str = doc["__type"]
    allowed = COMMON_ERRORS | MODELED_ERRORS.get(operation or "", frozenset())
    if code not in allowed:
        violation("undeclared", f"{code} ({doc.get('message', '')[:200]!r}) for {request}")
    STATS[f"code:{code}"] += 1
    STATS[f"op:{operation}:{code}"] += 1
    if os.environ.get("KMS_FUZZ_VERBOSE") == "2":
        print(f"  {code}: {doc.get('message', '')[:150]!r} <- {request[:300]}")
    return code


# -- the nodes and their real keys -------------------------------------------------------------
class DevTarget:
    """The dev node, its real keys, and the pools the strategies draw key ids from."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.wire = Wire(server.port)
        self.keys: dict[str, str] = {}
        self.aliases = ["alias/fuzz-symmetric", "alias/fuzz-sign"]
        self.blobs: dict[str, list[bytes]] = {}

    def must(self, operation: str, doc: dict[str, Any]) -> dict[str, Any]:
        status, out = self.wire.call(operation, doc)
        assert status == 200, (operation, doc, out)
        return out

    def create_fixtures(self) -> None:
        specs = {
            "symmetric": {},
            "rsa_sign": {"KeySpec": "RSA_2048", "KeyUsage": "SIGN_VERIFY"},
            "hmac": {"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"},
            "ecc_agree": {"KeySpec": "ECC_NIST_P256", "KeyUsage": "KEY_AGREEMENT"},
            "external": {"Origin": "EXTERNAL"},
        }
        for name, doc in specs.items():
            status, out = self.wire.call("CreateKey", {"Description": f"fuzz {name}", **doc})
            if status == 200:  # a spec the node does not support is simply not in the pool
                self.keys[name] = out["KeyMetadata"]["KeyId"]
        assert {"symmetric", "rsa_sign", "hmac"} <= set(self.keys)
        self.must("CreateAlias", {"AliasName": self.aliases[0],
                                  "TargetKeyId": self.keys["symmetric"]})
        self.must("CreateAlias", {"AliasName": self.aliases[1],
                                  "TargetKeyId": self.keys["rsa_sign"]})
        sym = self.keys["symmetric"]
        ct = self.must("Encrypt", {"KeyId": sym, "Plaintext": base64.b64encode(b"fuzz").decode(),
                                   "EncryptionContext": {"purpose": "fuzz"}})["CiphertextBlob"]
        ct2 = self.must("Encrypt", {"KeyId": sym, "Plaintext": "AA=="})["CiphertextBlob"]
        msg = base64.b64encode(b"message").decode()
        sig = self.must("Sign", {"KeyId": self.keys["rsa_sign"], "Message": msg,
                                 "SigningAlgorithm": "RSASSA_PSS_SHA_256"})["Signature"]
        mac = self.must("GenerateMac", {"KeyId": self.keys["hmac"], "Message": msg,
                                        "MacAlgorithm": "HMAC_SHA_256"})["Mac"]
        pub = self.must("GetPublicKey", {"KeyId": self.keys["rsa_sign"]})["PublicKey"]
        self.blobs = {
            "CiphertextBlob": [base64.b64decode(ct), base64.b64decode(ct2)],
            "Signature": [base64.b64decode(sig)],
            "Mac": [base64.b64decode(mac)],
            "PublicKey": [base64.b64decode(pub)],
            "Message": [b"message"],
        }

    def key_refs(self) -> list[str]:
        refs: list[str] = []
        for key_id in self.keys.values():
            refs += [key_id, f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key_id}"]
        for alias in self.aliases:
            refs += [alias, f"arn:aws:kms:{REGION}:{ACCOUNT}:{alias}"]
        # AWS managed keys come to exist on first use; a refused first use must not make one
        refs += [f"alias/aws/{service}" for service in AWS_MANAGED_SERVICES]
        refs.append(f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/aws/dynamodb")
        return refs

    def restore(self) -> None:
        """Undo what accepted fuzz calls did to the fixture keys, so later operations still
        reach their handlers with usable keys (not counted; results do not matter)."""
        for key_id in self.keys.values():
            self.wire.call("CancelKeyDeletion", {"KeyId": key_id})
            self.wire.call("EnableKey", {"KeyId": key_id})
        for alias, key in zip(self.aliases, ("symmetric", "rsa_sign"), strict=True):
            status, _ = self.wire.call("UpdateAlias", {"AliasName": alias,
                                                      "TargetKeyId": self.keys[key]})
            if status != 200:
                self.wire.call("CreateAlias", {"AliasName": alias,
                                               "TargetKeyId": self.keys[key]})


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


# -- strategies from the model -----------------------------------------------------------------
JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
UUIDS = st.uuids().map(str)
RANDOM_KEY_REFS = st.one_of(
    UUIDS,
    UUIDS.map(lambda u: f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{u}"),
    UUIDS.map(lambda u: f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/{u}"),
    UUIDS.map(lambda u: f"arn:aws:kms:{REGION}:444455556666:key/{u}"),
    st.from_regex(r"alias/[a-zA-Z0-9/_-]{1,40}", fullmatch=True),
    st.from_regex(r"arn:aws:kms:[a-z0-9-]{0,12}:[0-9]{0,12}:(key|alias)/[a-zA-Z0-9/_-]{0,30}",
                  fullmatch=True),
    st.sampled_from(["", "alias/", "alias/aws/", "arn:aws:kms:::", "key/", "mrk-" + "0" * 32,
                     "arn:aws:kms:us-east-1:111122223333:key/", "*", "alias/../x"]),
    st.text(max_size=40),
)


def weighted(*options: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Choose among strategies by weight (``one_of`` flattens nested ones and weighs every
    leaf alike, which would drown the real key ids among the random ones)."""
    table = [strategy for weight, strategy in options for _ in range(weight)]
    return st.sampled_from(table).flatmap(lambda strategy: strategy)


UNKNOWN_MEMBER = st.sampled_from([True] + [False] * 19)


def sized_text(low: int, high: int, clean: bool) -> st.SearchStrategy[str]:
    """Strings at the limits: exactly min, exactly max, one past each (not when clean), and
    in between."""
    sizes = [max(low, 1), high] if clean else [low, high, high + 1] + ([low - 1] if low else [])
    big = st.sampled_from(sizes).flatmap(
        lambda n: st.text(alphabet="abcXYZ019_-/:", min_size=1, max_size=8).map(
            lambda s: (s * (n // len(s) + 1))[:n]))
    small = (st.text(alphabet=st.characters(codec="utf-8"), min_size=max(low, 1),
                     max_size=max(low, min(high, 40))) if clean
             else st.text(max_size=min(high + 1, 40)))
    return weighted((2, small), (1, big)) if high < 10**6 else small


def repeated(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=1, max_size=8).map(lambda b: (b * (n // len(b) + 1))[:n])


def damage(blob_and_where: tuple[bytes, int, int]) -> bytes:
    blob, where, xor = blob_and_where
    i = where % len(blob)
    return blob[:i] + bytes([blob[i] ^ xor]) + blob[i + 1:]


class Builder:
    """Strategies for an operation's input shape. ``clean`` ones keep every value well-typed
    and inside the model's limits (so most reach a handler); the others also go past the
    limits, use wrong enums and wrong JSON types, drop required members, add unknown ones."""

    def __init__(self, target: DevTarget, clean: bool) -> None:
        self.target = target
        self.clean = clean
        self.key_refs = target.key_refs()
        self.memo: dict[tuple[str, str], st.SearchStrategy[Any]] = {}

    def member(self, shape_name: str, member_name: str, depth: int = 0) -> st.SearchStrategy[Any]:
        key = (shape_name, member_name)
        if key not in self.memo:
            good = self.typed(shape_name, member_name, depth)
            self.memo[key] = good if self.clean else weighted((11, good), (1, JSON_VALUES))
        return self.memo[key]

    def typed(self, shape_name: str, member_name: str, depth: int) -> st.SearchStrategy[Any]:
        shape = SHAPES[shape_name]
        kind = shape["type"]
        clean = self.clean
        low, high = shape.get("min", 0), shape.get("max", 10**7)
        if kind == "string":
            if member_name in KEY_ID_MEMBERS:
                return weighted((3, st.sampled_from(self.key_refs)), (1, RANDOM_KEY_REFS))
            if member_name == "AliasName":
                return weighted(
                    (2, st.sampled_from(self.target.aliases)),
                    (2, st.from_regex(r"alias/[a-zA-Z0-9/_-]{1,30}", fullmatch=True)),
                    (1, sized_text(low, high, clean)))
            if "enum" in shape:
                enum = st.sampled_from(shape["enum"])
                if clean:
                    return enum
                return weighted((3, enum), (1, enum.map(str.lower)), (1, st.text(max_size=20)))
            if "pattern" in shape and (clean or high <= 2048):
                try:
                    by_pattern = st.from_regex(re.compile(shape["pattern"], re.ASCII),
                                               fullmatch=True).filter(
                        lambda s: low <= len(s) <= high + (0 if clean else 1))
                except Exception:  # a pattern hypothesis cannot generate from
                    by_pattern = st.nothing()
                return by_pattern if clean else weighted((1, by_pattern),
                                                         (1, sized_text(low, high, clean)))
            return sized_text(low, high, clean)
        if kind == "blob":
            sizes = ([max(low, 1), high] if clean
                     else [max(low, 1), high, high + 1, 0] + ([low - 1] if low > 1 else []))
            raw = weighted((1, st.binary(min_size=max(low, 1), max_size=min(high, 64))),
                           (1, st.sampled_from(sizes).flatmap(repeated)))
            real = self.target.blobs.get(member_name)
            if real:
                known = st.sampled_from(real)
                damaged = st.tuples(known, st.integers(0, 10**6), st.integers(1, 255)).map(damage)
                raw = weighted((3, known), (1, damaged), (1, known.map(lambda b: b[:-1])),
                               (1, raw))
            encoded = raw.map(lambda b: base64.b64encode(b).decode())
            if clean:
                return encoded
            broken = st.sampled_from(["not base64!", "AAA", "====", "A===", "\u00e9\u00e9==",
                                      "QUJD\nREVG", "QUJD REVG"])
            return weighted((6, encoded), (1, broken))
        if kind in ("integer", "long"):
            inside = st.integers(low, min(high, 10**9))
            if clean:
                return weighted((1, inside), (1, st.sampled_from([low, high])))
            edge = [low, high, low - 1, high + 1, 0, -1, 2**31, -(2**31) - 1, 2**63, 10**30]
            return weighted((2, st.sampled_from(edge)), (1, inside))
        if kind == "boolean":
            return st.booleans()
        if kind == "timestamp":
            if clean:
                return st.floats(0, 4e9)
            return st.one_of(st.floats(-1e12, 1e12), st.sampled_from(
                ["2024-01-01T00:00:00Z", "2024-13-01", "not a time", "", "1e400"]))
        if kind == "list":
            item = self.member(shape["member"]["shape"], member_name, depth + 1)
            most = shape.get("max", 3)
            lists = st.lists(item, min_size=shape.get("min", 0), max_size=min(most, 3))
            if not clean and most <= 50:
                lists = weighted((4, lists), (1, item.map(lambda v: [v] * (most + 1))))
            return lists
        if kind == "map":
            keys = self.typed(shape["key"]["shape"], "", depth + 1)
            values = self.typed(shape["value"]["shape"], "", depth + 1)
            return weighted((2, st.dictionaries(keys, values, max_size=4)),
                            (1, st.just({"purpose": "fuzz"})))
        if kind == "structure":
            return self.structure(shape_name, depth)
        return JSON_VALUES

    def structure(self, shape_name: str, depth: int) -> st.SearchStrategy[dict[str, Any]]:
        shape = SHAPES[shape_name]
        required = set(shape.get("required", ()))
        members = [(name, self.member(m["shape"], name, depth + 1))
                   for name, m in shape.get("members", {}).items()] if depth < 6 else []
        # (sampled_from, not integers: hypothesis favours integer bounds, which would drop
        # required members far more often than the 10% meant here)
        keep_required = st.just(True) if self.clean else st.sampled_from([True] * 9 + [False])
        keep_optional = st.sampled_from([True] * 3 + [False] * 7)

        @st.composite
        def build(draw: st.DrawFn) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for name, strategy in members:
                if draw(keep_required if name in required else keep_optional):
                    out[name] = draw(strategy)
            if not self.clean and draw(UNKNOWN_MEMBER):
                out[draw(st.text(max_size=12))] = draw(JSON_VALUES)  # an unknown member
            return out

        return build()


def operation_requests(target: DevTarget, name: str) -> st.SearchStrategy[dict[str, Any]]:
    shape = MODEL["operations"][name].get("input", {}).get("shape")
    if not shape:
        return st.builds(dict)
    return weighted((1, Builder(target, clean=True).structure(shape, 0)),
                    (1, Builder(target, clean=False).structure(shape, 0)))


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


def describe(operation: str | None, body: bytes, headers: list[tuple[str, Any]]) -> str:
    shown = body[:400] + (b"..." if len(body) > 400 else b"")
    return f"{operation} body={shown!r} ({len(body)} bytes) headers={headers!r}"


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
class SignedTarget:
    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.wire = Wire(server.port)
        doc = json.loads((server.data_dir / "credentials.json").read_text())
        [cred] = doc["credentials"]
        self.access_key: str = cred["access_key_id"]
        self.secret: str = cred["secret_access_key"]
        self.host = f"127.0.0.1:{server.port}"
        self.creates_accepted = 0

    def sign(self, body: bytes, target: str, *, when: datetime.datetime | None = None,
             access_key: str | None = None, secret: str | None = None, region: str = REGION,
             service: str = "kms", host: str | None = None) -> dict[str, str]:
        """SigV4 by hand (independent of the server's and botocore's code)."""
        when = when or datetime.datetime.now(datetime.UTC)
        amz_date, day = when.strftime("%Y%m%dT%H%M%SZ"), when.strftime("%Y%m%d")
        canonical = "\n".join([
            "POST", "/", "", f"content-type:{CT}", f"host:{host or self.host}",
            f"x-amz-date:{amz_date}", f"x-amz-target:{target}", "",
            "content-type;host;x-amz-date;x-amz-target",
            hashlib.sha256(body).hexdigest()])
        scope = f"{day}/{region}/{service}/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + (secret or self.secret)).encode()
        for part in (day, region, service, "aws4_request"):
            key = hmac.digest(key, part.encode(), "sha256")
        signature = hmac.new(key, to_sign.encode(), "sha256").hexdigest()
        return {
            "Host": host or self.host,
            "Content-Type": CT,
            "X-Amz-Target": target,
            "X-Amz-Date": amz_date,
            "Authorization": f"AWS4-HMAC-SHA256 Credential={access_key or self.access_key}/"
                             f"{scope}, SignedHeaders=content-type;host;x-amz-date;"
                             "x-amz-target, "
                             f"Signature={signature}",
        }

    def call(self, operation: str, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        body = json.dumps(doc).encode()
        headers = self.sign(body, f"TrentService.{operation}")
        status, data = self.wire.send("POST", "/", body, list(headers.items()))
        return status, json.loads(data) if data.strip() else {}


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


def flip(text: str, at: int) -> str:
    i = at % len(text)
    return text[:i] + ("1" if text[i] != "1" else "2") + text[i + 1:]


# Each mutation breaks one thing in a correctly signed request; all must be refused.
MUTATIONS = [
    "no_authorization", "garbage_authorization", "flip_signature", "short_signature",
    "empty_signature", "unknown_access_key", "wrong_secret", "wrong_region", "wrong_service",
    "wrong_terminator", "scope_date_mismatch", "no_date", "garbage_date", "stale_date",
    "future_date", "date_header_only_stale", "body_changed", "target_changed", "host_changed",
    "unsigned_host", "signed_header_missing", "algorithm", "bad_then_good_authorization",
    "content_sha_mismatch", "wrong_content_type", "no_content_type", "garbage_target",
    "no_target", "authorization_noise", "credential_parts",
]
# These leave the signature intact: accepted or refused, never a fault.
HARMLESS = ["user_agent", "extra_header", "header_case", "charset", "good_then_bad_authorization"]


# Header values go out as latin-1: printable ASCII and obs-text (0x80-0xFF, legal in HTTP/1.1).
HEADER_CHARS = st.characters(min_codepoint=32, max_codepoint=126) | st.characters(
    min_codepoint=0xA0, max_codepoint=0xFF)


@st.composite
def mutated_request(draw: st.DrawFn, node: SignedTarget) -> tuple[str, str, bytes,
                                                                  list[tuple[str, Any]]]:
    operation = draw(st.sampled_from(["ListKeys", "CreateKey", "DescribeKey", "CreateAlias",
                                      "ScheduleKeyDeletion", "Encrypt"]))
    doc = {"ListKeys": {}, "CreateKey": {"Description": "must not exist"},
           "DescribeKey": {"KeyId": "alias/none"}, "Encrypt": {"KeyId": "alias/x",
                                                              "Plaintext": "AA=="},
           "CreateAlias": {"AliasName": "alias/fuzz", "TargetKeyId": str(uuid.uuid4())},
           "ScheduleKeyDeletion": {"KeyId": str(uuid.uuid4())}}[operation]
    body = json.dumps(doc).encode()
    kind = draw(st.sampled_from(MUTATIONS + HARMLESS))
    target = f"TrentService.{operation}"
    now = datetime.datetime.now(datetime.UTC)
    h: dict[str, Any] = node.sign(body, target)
    n = draw(st.integers(0, 10**6))
    noise = draw(st.text(alphabet=HEADER_CHARS, max_size=60))
    auth = h["Authorization"]
    if kind == "no_authorization":
        del h["Authorization"]
    elif kind == "garbage_authorization":
        h["Authorization"] = draw(st.sampled_from(["", "AWS4-HMAC-SHA256", "AWS4-HMAC-SHA256 ",
                                                   "Bearer x", "AWS4-HMAC-SHA256 Credential="]))
        h["Authorization"] += noise
    elif kind == "flip_signature":
        h["Authorization"] = auth[:-64] + flip(auth[-64:], n)
    elif kind == "short_signature":
        h["Authorization"] = auth[:-(1 + n % 63)]
    elif kind == "empty_signature":
        h["Authorization"] = auth[:-64]
    elif kind == "unknown_access_key":
        h = node.sign(body, target, access_key=draw(st.from_regex(r"AKIA[A-Z2-7]{16}",
                                                                   fullmatch=True)))
    elif kind == "wrong_secret":
        h = node.sign(body, target, secret=node.secret + noise + "x")
    elif kind == "wrong_region":
        h = node.sign(body, target, region=draw(st.sampled_from(["us-west-2", "", "US-EAST-1"])))
    elif kind == "wrong_service":
        h = node.sign(body, target, service=draw(st.sampled_from(["s3", "kms2", "KMS"])))
    elif kind == "wrong_terminator":
        h["Authorization"] = auth.replace("/aws4_request", "/aws4_" + noise.replace(",", ""))
    elif kind == "scope_date_mismatch":
        h = node.sign(body, target, when=now - datetime.timedelta(days=1))
        h["X-Amz-Date"] = now.strftime("%Y%m%dT%H%M%SZ")
    elif kind == "no_date":
        del h["X-Amz-Date"]
    elif kind == "garbage_date":
        h["X-Amz-Date"] = draw(st.sampled_from(["", "yesterday", "20241399T999999Z",
                                                "99999999T999999Z", "20240101T000000",
                                                "Mon, 99 Foo 2024 00:00:00 GMT", "0" * 40]))
        h["X-Amz-Date"] += noise[: n % 3]
    elif kind == "stale_date":
        h = node.sign(body, target, when=now - datetime.timedelta(minutes=6 + n % 10_000))
    elif kind == "future_date":
        h = node.sign(body, target, when=now + datetime.timedelta(minutes=6 + n % 10_000))
    elif kind == "date_header_only_stale":
        h = node.sign(body, target, when=now - datetime.timedelta(hours=1))
        del h["X-Amz-Date"]
        h["Date"] = (now - datetime.timedelta(hours=1)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    elif kind == "body_changed":
        body = body[:-1] + b", \"Extra\": " + str(n).encode() + b"}"
    elif kind == "target_changed":
        h["X-Amz-Target"] = draw(st.sampled_from([f"TrentService.{o}" for o in OPERATIONS
                                                  if o != operation]))
    elif kind == "host_changed":
        h["Host"] = f"127.0.0.1:{(node.server.port + 1 + n % 100) % 65536}"
    elif kind == "unsigned_host":
        h["Authorization"] = auth.replace(";host;", ";")
    elif kind == "signed_header_missing":
        h["Authorization"] = auth.replace("x-amz-target,", "x-amz-target;x-fuzz,")
    elif kind == "algorithm":
        h["Authorization"] = draw(st.sampled_from(["AWS4-HMAC-SHA512", "AWS4-HMAC-SHA256X",
                                                   "aws4-hmac-sha256", "AWS3"])) + auth[16:]
    elif kind == "bad_then_good_authorization":  # the server reads the first of two lines
        h = {"authorization": auth[:-64] + flip(auth[-64:], n), **h}
    elif kind == "good_then_bad_authorization":  # ambiguous: either answer is acceptable
        h = {**h, "authorization": auth[:-64] + flip(auth[-64:], n)}
    elif kind == "content_sha_mismatch":
        h["X-Amz-Content-Sha256"] = hashlib.sha256(body + b" ").hexdigest()
    elif kind == "wrong_content_type":
        h["Content-Type"] = draw(st.sampled_from(["text/plain", "application/xml",
                                                  "application/x-www-form-urlencoded",
                                                  "multipart/form-data; boundary=x"]))
    elif kind == "no_content_type":
        del h["Content-Type"]
    elif kind == "garbage_target":
        target = draw(st.sampled_from(["", "TrentService.", "TrentService.Nope", "x" * 200,
                                       "TrentService.listkeys"]) | st.just(noise))
        h = node.sign(body, target)
        if not target:
            del h["X-Amz-Target"]
    elif kind == "no_target":
        del h["X-Amz-Target"]
        h["Authorization"] = auth  # still claims a signed x-amz-target
    elif kind == "authorization_noise":
        h["Authorization"] = auth.replace(", ", draw(st.sampled_from([",,", " ,", ",\t"])), 1)
        if n % 2:
            h["Authorization"] = auth[:-64] + flip(auth[-64:], n)
    elif kind == "credential_parts":
        h["Authorization"] = auth.replace(f"Credential={node.access_key}/",
                                          draw(st.sampled_from(["Credential=", "Credential=/",
                                                                "Credential=AKIA//"])), 1)
    elif kind == "user_agent":
        h["User-Agent"] = noise or "fuzz/1.0"
    elif kind == "extra_header":
        h["X-Fuzz"] = noise
    elif kind == "header_case":
        h = {k.upper(): v for k, v in h.items()}
    elif kind == "charset":
        h["Content-Type"] = CT + "; charset=utf-8"
    return kind, operation, body, list(h.items())


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
