"""A second SigV4 signer, written from AWS's SigV4 specification (not from botocore, not from
kms.api.sigv4), and a raw HTTP sender, for requests no SDK makes: odd spacing, repeated
headers, non-ASCII, presigned query strings, unsigned headers.

Spec steps: canonical request = method, URI (each path segment percent-encoded twice for
non-S3 services), query (names and values percent-encoded, sorted by name then value),
headers (lower-cased names, values trimmed and inner whitespace runs folded to one space,
repeated headers joined by commas, sorted), signed header names, hex SHA-256 of the payload;
string to sign = algorithm, timestamp, scope, hex SHA-256 of the canonical request; key =
HMAC chain over date, region, service, "aws4_request".
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import http.client
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


def pct(text: str, *, keep_slash: bool = False) -> str:
    """RFC 3986 percent-encoding of the UTF-8 bytes, upper-case hex."""
    out = []
    for byte in text.encode("utf-8"):
        if byte in UNRESERVED or (keep_slash and byte == ord("/")):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def fold(value: str) -> str:
    return " ".join(value.split())


@dataclass
class Request:
    """One request as it goes on the wire: ``query`` is a list of decoded (name, value)."""

    method: str
    path: str
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def wire_query(self) -> str:
        return "&".join(f"{pct(n)}={pct(v)}" for n, v in self.query)

    def target(self) -> str:
        q = self.wire_query()
        return self.path + (f"?{q}" if q else "")


@dataclass(frozen=True)
class Key:
    access_key: str
    secret: str
    region: str = "us-east-1"
    service: str = "kms"


def _canonical(req: Request, signed: list[str], payload: str,
               skip_query: str = "") -> str:
    segments = req.path.split("/")
    uri = "/".join(pct(pct(s)) for s in segments) or "/"  # non-S3: encoded twice
    query = "&".join(sorted(f"{pct(n)}={pct(v)}" for n, v in req.query if n != skip_query))
    values: dict[str, list[str]] = {}
    for name, value in req.headers:
        values.setdefault(name.lower(), []).append(fold(value))
    lines = [f"{name}:{','.join(values[name])}" for name in signed]
    return "\n".join([req.method, uri, query, *lines, "", ";".join(signed), payload])


def _signature(key: Key, when: datetime.datetime, canonical: str) -> tuple[str, str, str]:
    stamp, day = when.strftime("%Y%m%dT%H%M%SZ"), when.strftime("%Y%m%d")
    scope = f"{day}/{key.region}/{key.service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                         hashlib.sha256(canonical.encode("utf-8")).hexdigest()])
    k = ("AWS4" + key.secret).encode()
    for part in (day, key.region, key.service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return stamp, scope, hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()


def sign_header(req: Request, key: Key, *, when: datetime.datetime | None = None,
                unsigned: tuple[str, ...] = (), authorization_format: str | None = None) -> None:
    """Add X-Amz-Date and an Authorization header signing every header but ``unsigned``."""
    when = when or datetime.datetime.now(datetime.UTC)
    req.headers.append(("X-Amz-Date", when.strftime("%Y%m%dT%H%M%SZ")))
    signed = sorted({n.lower() for n, _ in req.headers} - {u.lower() for u in unsigned})
    canonical = _canonical(req, signed, hashlib.sha256(req.body).hexdigest())
    _stamp, scope, signature = _signature(key, when, canonical)
    fmt = authorization_format or ("AWS4-HMAC-SHA256 Credential={cred}, "
                                   "SignedHeaders={signed}, Signature={sig}")
    req.headers.append(("Authorization", fmt.format(
        cred=f"{key.access_key}/{scope}", signed=";".join(signed), sig=signature)))


def presign(req: Request, key: Key, *, expires: int = 300,
            when: datetime.datetime | None = None, drop: str = "") -> None:
    """Add the X-Amz-* query parameters (all but ``drop``) signing every header."""
    when = when or datetime.datetime.now(datetime.UTC)
    signed = sorted({n.lower() for n, _ in req.headers})
    stamp, day = when.strftime("%Y%m%dT%H%M%SZ"), when.strftime("%Y%m%d")
    req.query += [("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
                  ("X-Amz-Credential",
                   f"{key.access_key}/{day}/{key.region}/{key.service}/aws4_request"),
                  ("X-Amz-Date", stamp), ("X-Amz-Expires", str(expires)),
                  ("X-Amz-SignedHeaders", ";".join(signed))]
    canonical = _canonical(req, signed, hashlib.sha256(req.body).hexdigest())
    _, _, signature = _signature(key, when, canonical)
    req.query.append(("X-Amz-Signature", signature))
    req.query = [(n, v) for n, v in req.query if n != drop]


def kms_request(url: str, operation: str, params: dict[str, Any] | None = None,
                extra: list[tuple[str, str]] | None = None) -> Request:
    """A KMS JSON 1.1 call with its Host, Content-Type and X-Amz-Target headers."""
    host = urlsplit(url).netloc
    body = json.dumps(params or {}, ensure_ascii=False).encode("utf-8")
    return Request("POST", "/", headers=[
        ("Host", host), ("Content-Type", "application/x-amz-json-1.1"),
        ("X-Amz-Target", f"TrentService.{operation}"), *(extra or [])], body=body)


def send(url: str, req: Request) -> tuple[int, dict[str, Any]]:
    """Send ``req`` exactly as built (header bytes as UTF-8); (status, JSON body)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.putrequest(req.method, req.target(), skip_host=True, skip_accept_encoding=True)
        for name, value in req.headers:
            conn.putheader(name, value.encode("utf-8"))
        conn.putheader("Content-Length", str(len(req.body)))
        conn.endheaders(req.body)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw.strip() else {}
    finally:
        conn.close()
