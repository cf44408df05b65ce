"""The fuzz test's side of the wire: botocore's KMS model (which errors each operation may
answer), a bare keep-alive HTTP client that sends headers as given (bytes too), and the judge
that counts every answer into the tally behind the figure line.

Rules: an answer is judged, never retried; a violation is one line naming what broke and the
request that broke it. The tally is one per test session, read by the fuzz module's figure.
"""

from __future__ import annotations

import http.client
import json
import os
from collections import Counter
from typing import Any

from kms.api.validation import load_botocore_model

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
CT = "application/x-amz-json-1.1"
DEV_AUTH = ("AWS4-HMAC-SHA256 Credential=AKIDFUZZ/20240101/us-east-1/kms/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64)

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


def describe(operation: str | None, body: bytes, headers: list[tuple[str, Any]]) -> str:
    shown = body[:400] + (b"..." if len(body) > 400 else b"")
    return f"{operation} body={shown!r} ({len(body)} bytes) headers={headers!r}"
