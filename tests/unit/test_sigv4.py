"""SigV4 verification against requests signed by botocore's own signer."""

from __future__ import annotations

import calendar
import datetime
import hashlib
from unittest import mock
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict

from kms.api import sigv4
from kms.api.sigv4 import MISMATCH, SigV4Verifier
from kms.domain.errors import (
    IncompleteSignatureException,
    InvalidSignatureException,
    MissingAuthenticationTokenException,
    UnrecognizedClientException,
)

AK, SK = "AKIDEXAMPLE0000001", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
FIXED = datetime.datetime(2026, 1, 1, 0, 0, 0)
NOW = float(calendar.timegm(FIXED.timetuple()))
BODY = b'{"KeyId": "alias/test", "Plaintext": "aGVsbG8="}'


class Signed:
    def __init__(self, method: str, path: str, query: str, headers: CIMultiDict[str], body: bytes):
        self.method, self.path, self.query, self.headers, self.body = (
            method, path, query, headers, body)

    @property
    def signature(self) -> str:
        return self.headers["Authorization"].rpartition("Signature=")[2]

    def set_auth(self, old: str, new: str) -> None:
        self.headers["Authorization"] = self.headers["Authorization"].replace(old, new)


def sign(body: bytes = BODY, *, ak: str = AK, sk: str = SK, token: str | None = None,
         region: str = "us-east-1", service: str = "kms", when: datetime.datetime = FIXED,
         url: str = "http://127.0.0.1:8080/", extra: dict[str, str] | None = None) -> Signed:
    headers = {"X-Amz-Target": "TrentService.Encrypt",
               "Content-Type": "application/x-amz-json-1.1", **(extra or {})}
    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    with mock.patch("botocore.auth.get_current_datetime", lambda *a, **k: when):
        SigV4Auth(Credentials(ak, sk, token), service, region).add_auth(request)
    parts = urlsplit(url)
    wire = CIMultiDict(request.headers.items())
    wire["Host"] = parts.netloc  # what the HTTP client puts on the wire
    return Signed("POST", parts.path or "/", parts.query, wire, body)


def verifier(now: float = NOW, **kwargs: object) -> SigV4Verifier:
    return SigV4Verifier({AK: SK}.get, "us-east-1", now=lambda: now, **kwargs)  # type: ignore[arg-type]


def check(req: Signed, v: SigV4Verifier | None = None) -> str:
    return (v or verifier()).verify(req.method, req.path, req.query, req.headers, req.body)


def fails(req: Signed, exc: type[Exception], message: str | None = None,
          v: SigV4Verifier | None = None) -> str:
    with pytest.raises(exc) as info:
        check(req, v)
    text = str(info.value)
    if message is not None:
        assert text == message
    assert SK not in text
    return text


# -- accepted ---------------------------------------------------------------------------------
def test_valid_request_is_accepted() -> None:
    assert check(sign()) == AK


def test_plain_dict_headers_are_looked_up_case_insensitively() -> None:
    req = sign()
    req.headers = {k.upper() if k.startswith("X") else k: v  # type: ignore[assignment]
                   for k, v in req.headers.items()}
    assert check(req) == AK


TOKEN = "FQoGZXIvYXdzEXAMPLETOKEN"


def session_verifier(now: float = NOW) -> SigV4Verifier:
    """A verifier whose one credential is a session credential issued with TOKEN."""
    return SigV4Verifier({AK: SK}.get, "us-east-1", now=lambda: now,
                         session_tokens={AK: TOKEN}.get)


def test_session_token_is_signed_like_any_header() -> None:
    req = sign(token=TOKEN)
    assert "x-amz-security-token" in req.headers["Authorization"]
    assert check(req, session_verifier()) == AK
    req.headers["X-Amz-Security-Token"] = "tampered"
    fails(req, UnrecognizedClientException,
          "The security token included in the request is invalid.", session_verifier())


def test_a_session_token_on_a_long_term_credential_is_refused() -> None:
    fails(sign(token=TOKEN), UnrecognizedClientException,
          "The security token included in the request is invalid.")


def test_a_session_credential_without_its_token_is_refused() -> None:
    fails(sign(), UnrecognizedClientException,
          "The security token included in the request is invalid.", session_verifier())


def test_query_string_and_encoded_path_are_canonicalized() -> None:
    req = sign(url="http://127.0.0.1:8080/a%20b/./c/?b=2&a=x%20y&a=w&empty")
    assert req.query
    assert check(req) == AK
    req.query = "b=3&a=x%20y&a=w&empty"
    fails(req, InvalidSignatureException, MISMATCH)


def test_date_header_instead_of_x_amz_date() -> None:
    req = sign(extra={"Date": "placeholder"})  # botocore rewrites it in RFC 7231 form
    assert "X-Amz-Date" not in req.headers
    assert check(req) == AK


def test_whitespace_in_header_values_is_collapsed() -> None:
    assert check(sign(extra={"X-Custom": "  a   b \t c  "})) == AK


def test_unsigned_extra_header_is_ignored() -> None:
    req = sign()
    req.headers["X-Not-Signed"] = "anything"
    req.headers["User-Agent"] = "changed/1.0"
    assert check(req) == AK


def test_content_sha256_header_matching_body_is_accepted() -> None:
    assert check(sign(extra={"X-Amz-Content-Sha256": hashlib.sha256(BODY).hexdigest()})) == AK


def test_skew_at_the_limit_is_accepted() -> None:
    assert check(sign(), verifier(NOW + 300)) == AK
    assert check(sign(), verifier(NOW - 300)) == AK


def test_request_from_a_real_boto3_client() -> None:
    """Whatever else boto3 adds (User-Agent, invocation id, token), the real pipeline verifies."""
    import boto3
    from botocore.awsrequest import AWSResponse

    sent: list[AWSRequest] = []

    def capture(request: AWSRequest, **_: object) -> AWSResponse:
        sent.append(request)
        raw = mock.Mock(stream=lambda *a, **k: iter([b'{"KeyMetadata": {"KeyId": "k"}}']))
        return AWSResponse(request.url, 200, {"Content-Type": "application/x-amz-json-1.1"}, raw)

    session = boto3.session.Session(aws_access_key_id=AK, aws_secret_access_key=SK,
                                    aws_session_token="tok", region_name="us-east-1")
    client = session.client("kms", endpoint_url="http://127.0.0.1:8080")
    client.meta.events.register("before-send", capture)
    client.describe_key(KeyId="alias/x")
    (request,) = sent
    parts = urlsplit(request.url)
    wire = CIMultiDict((k, v.decode() if isinstance(v, bytes) else v)
                       for k, v in request.headers.items())
    wire["Host"] = parts.netloc
    real_clock = SigV4Verifier({AK: SK}.get, "us-east-1", session_tokens={AK: "tok"}.get)
    assert real_clock.verify("POST", parts.path or "/", parts.query, wire, request.body) == AK


# -- missing / incomplete ---------------------------------------------------------------------
def test_no_authorization_header() -> None:
    req = sign()
    del req.headers["Authorization"]
    fails(req, MissingAuthenticationTokenException, "Missing Authentication Token")


@pytest.mark.parametrize("param", ["Credential", "SignedHeaders", "Signature"])
def test_missing_authorization_parameter(param: str) -> None:
    req = sign()
    signature = req.signature
    algorithm, _, rest = req.headers["Authorization"].partition(" ")
    kept = [p for p in rest.split(", ") if not p.startswith(f"{param}=")]
    req.headers["Authorization"] = f"{algorithm} " + ", ".join(kept)
    text = fails(req, IncompleteSignatureException)
    assert text.startswith(f"Authorization header requires '{param}' parameter. Authorization=")
    assert signature not in text


def test_wrong_algorithm() -> None:
    req = sign()
    req.set_auth("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512")
    text = fails(req, IncompleteSignatureException)
    assert "AWS4-HMAC-SHA256" in text and req.signature not in text


def test_credential_scope_with_wrong_shape() -> None:
    req = sign()
    req.set_auth("/us-east-1/kms/", "/us-east-1/")
    text = fails(req, IncompleteSignatureException)
    assert text.startswith("Credential should be of the form") and req.signature not in text


def test_credential_scope_with_wrong_terminator() -> None:
    req = sign()
    req.set_auth("/aws4_request", "/aws5_request")
    fails(req, IncompleteSignatureException,
          "Credential should be scoped with a valid terminator: 'aws4_request', "
          "not 'aws5_request'. ")


def test_host_must_be_signed() -> None:
    req = sign()
    req.set_auth("SignedHeaders=content-type;host;", "SignedHeaders=content-type;")
    fails(req, InvalidSignatureException,
          "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")


def test_missing_date_header() -> None:
    req = sign()
    del req.headers["X-Amz-Date"]
    text = fails(req, IncompleteSignatureException)
    assert text.startswith("Authorization header requires existence of either a 'X-Amz-Date' "
                           "or a 'Date' header. Authorization=AWS4-HMAC-SHA256 Credential=")
    assert "Signature=<redacted>" in text and req.signature not in text


def test_unparseable_date() -> None:
    req = sign()
    req.headers["X-Amz-Date"] = "yesterday"
    fails(req, IncompleteSignatureException)


# -- invalid ----------------------------------------------------------------------------------
def test_unknown_access_key() -> None:
    fails(sign(ak="AKIDUNKNOWN"), UnrecognizedClientException,
          "The security token included in the request is invalid.")


def test_wrong_region() -> None:
    fails(sign(region="us-west-2"), InvalidSignatureException,
          "Credential should be scoped to a valid region. "
          "This node serves us-east-1, not 'us-west-2'.")


def test_wrong_service() -> None:
    fails(sign(service="s3"), InvalidSignatureException,
          "Credential should be scoped to correct service: 'kms'. ")


def test_scope_date_differs_from_request_date() -> None:
    req = sign()
    req.headers["X-Amz-Date"] = "20260102T000000Z"
    fails(req, InvalidSignatureException,
          "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from "
          "HTTP: '20260101' != '20260102', from '20260102T000000Z'.", verifier(NOW + 86400))


def test_request_too_old() -> None:
    fails(sign(), InvalidSignatureException,
          "Signature expired: 20260101T000000Z is now earlier than 20260101T000500Z "
          "(20260101T001000Z - 5 min.)", verifier(NOW + 600))


def test_request_from_the_future() -> None:
    fails(sign(), InvalidSignatureException,
          "Signature not yet current: 20260101T000000Z is still later than 20251231T235500Z "
          "(20251231T235000Z + 5 min.)", verifier(NOW - 600))


def test_flipped_body_byte() -> None:
    req = sign()
    req.body = bytes([req.body[0] ^ 1]) + req.body[1:]
    fails(req, InvalidSignatureException, MISMATCH)


def test_changed_signed_header_value() -> None:
    req = sign()
    req.headers["X-Amz-Target"] = "TrentService.Decrypt"
    fails(req, InvalidSignatureException, MISMATCH)


def test_wrong_secret() -> None:
    fails(sign(sk="not-the-secret"), InvalidSignatureException, MISMATCH)


def test_garbage_signature_is_a_mismatch_not_a_crash() -> None:
    req = sign()
    req.set_auth(req.signature, "é" * 64)
    fails(req, InvalidSignatureException, MISMATCH)


def test_content_sha256_header_must_match_body() -> None:
    req = sign(extra={"X-Amz-Content-Sha256": hashlib.sha256(b"other").hexdigest()})
    fails(req, InvalidSignatureException, sigv4.PAYLOAD_MISMATCH)


def test_cached_authorization_prefix_still_checks_everything() -> None:
    clock = [NOW]
    v = SigV4Verifier({AK: SK}.get, "us-east-1", now=lambda: clock[0])
    assert check(sign(), v) == AK  # caches the "... Signature=" prefix
    req = sign()
    req.set_auth(req.signature, "0" * 64)
    fails(req, InvalidSignatureException, MISMATCH, v)
    req = sign()
    del req.headers["X-Amz-Date"]
    fails(req, IncompleteSignatureException, v=v)
    clock[0] += 3600
    assert fails(sign(), InvalidSignatureException, v=v).startswith("Signature expired")


def test_bare_token_in_authorization_is_not_echoed() -> None:
    req = sign()
    signature = req.signature
    req.set_auth(f"Signature={signature}", signature)
    text = fails(req, IncompleteSignatureException)
    assert signature not in text and "<redacted>" in text
    assert "not a valid key=value pair" in text and "requires 'Signature' parameter" in text


def test_unusual_spacing_takes_the_slow_path_and_is_accepted() -> None:
    req = sign()
    req.headers["Authorization"] = req.headers["Authorization"].replace(", ", " ,  ")
    v = verifier()
    assert check(req, v) == AK
    assert check(req, v) == AK


# -- canonicalization helpers and the key cache -----------------------------------------------
@pytest.mark.parametrize("path", ["/", "", "/a/b", "/a//b/", "/a/./b/../c", "/a%20b/c~d"])
def test_canonical_uri_matches_botocore(path: str) -> None:
    signer = SigV4Auth(Credentials(AK, SK), "kms", "us-east-1")
    assert sigv4.canonical_uri(path) == signer._normalize_url_path(path)


def test_canonical_query_sorts_and_encodes() -> None:
    assert sigv4.canonical_query("") == ""
    assert sigv4.canonical_query("b=2&a=x%20y&a=w&c&d=%7e!") == "a=w&a=x%20y&b=2&c=&d=~%21"


def test_signing_key_is_derived_once_per_day(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, ...]] = []
    real = sigv4.derive_signing_key

    def counting(*args: str) -> bytes:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(sigv4, "derive_signing_key", counting)
    clock = [NOW]
    v = SigV4Verifier({AK: SK}.get, "us-east-1", now=lambda: clock[0])
    for body in (b"{}", BODY, b'{"a": 1}'):
        assert check(sign(body), v) == AK
    assert calls == [(SK, "20260101", "us-east-1", "kms")]
    clock[0] += 86400
    for body in (b"{}", BODY):
        assert check(sign(body, when=FIXED + datetime.timedelta(days=1)), v) == AK
    assert calls[1:] == [(SK, "20260102", "us-east-1", "kms")]
