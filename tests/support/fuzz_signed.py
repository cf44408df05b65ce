"""The fuzz test's node that checks SigV4: a hand signer (independent of the server's and
botocore's code) and requests signed correctly with one thing broken each: the Authorization
header, the dates, missing headers, content types, targets.

Rules: every kind in MUTATIONS must be refused; a kind in HARMLESS leaves the signature
intact, so it may be accepted or refused, never a fault.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import uuid
from typing import Any

from hypothesis import strategies as st

from tests.support.fuzz_wire import CT, OPERATIONS, REGION, Wire
from tests.support.server import ServerProcess


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
