"""AWS Signature Version 4 verification for incoming requests: Authorization header or presigned
query string.

Rules: canonicalize straight from the wire parts (no botocore objects on the hot path), cache
derived signing keys, compare with hmac.compare_digest, answer with AWS's error classes and
messages, and never echo a signature or a secret. The payload is always hashed and checked.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote

from multidict import CIMultiDict, CIMultiDictProxy

from kms.domain.errors import (
    IncompleteSignatureException,
    InvalidSignatureException,
    MissingAuthenticationTokenException,
    UnrecognizedClientException,
)

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
MISMATCH = ("The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. "
            "Consult the service documentation for details.")
PAYLOAD_MISMATCH = "The provided 'x-amz-content-sha256' header does not match what was computed."
_CI_TYPES = (CIMultiDict, CIMultiDictProxy)
_PREFIX = ALGORITHM + " "
_AUTH_RE = re.compile(  # the exact shape SDKs send; anything else takes the slow, chatty path
    r"AWS4-HMAC-SHA256 Credential=([^, ]+), ?SignedHeaders=([^, ]+), ?Signature=([0-9a-f]{64})")
_ISO_RE = re.compile(r"(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z", re.ASCII)
_CACHE_SIZE = 128
MAX_PRESIGN_SECONDS = 7 * 86400  # X-Amz-Expires at most a week, as AWS allows
# Services other than S3 ignore X-Amz-Expires: a presigned request is good for a fixed
# 15 minutes from X-Amz-Date (aws/aws-sdk-go#2224; why an EKS token presigned with
# X-Amz-Expires=60 works for 15 minutes).
PRESIGNED_VALIDITY_SECONDS = 15 * 60
_PRESIGN_PARAMS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature", "X-Amz-Date",
                   "X-Amz-SignedHeaders", "X-Amz-Expires")
_TWO_MECHANISMS = ("Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter "
                   "or the Authorization header should be specified")
MUST_SIGN = ("x-amz-target", "content-type")  # present, they must be signed
_DISPLAY = {"x-amz-target": "X-Amz-Target", "content-type": "Content-Type"}


def derive_signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")."""
    key = hmac.digest(("AWS4" + secret).encode(), date.encode(), "sha256")
    for part in (region, service, TERMINATOR):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


def canonical_uri(raw_path: str) -> str:
    """Path as on the wire, dot segments and empty segments removed, encoded once more."""
    path = raw_path.partition("?")[0]
    if path == "/" or not path:
        return "/"
    segments: list[str] = []
    for seg in path.split("/"):
        if seg == "..":
            if segments:
                segments.pop()
        elif seg and seg != ".":
            segments.append(seg)
    tail = "/" if path.endswith("/") and segments else ""
    return quote("/" + "/".join(segments) + tail, safe="/~")


def canonical_query(query_string: str, without: str = "") -> str:
    """Decode each name/value, re-encode per AWS (RFC 3986 unreserved kept), sort; a
    presigned request's canonical query leaves out ``without`` (its X-Amz-Signature)."""
    if not query_string:
        return ""
    pairs = []
    for item in query_string.split("&"):
        if item:
            name, _, value = item.partition("=")
            name = unquote(name)
            if name != without:
                pairs.append((quote(name, safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def query_params(query_string: str) -> dict[str, str]:
    """Name -> value (the first, decoded) of a query string; '+' stays a plus, as AWS reads."""
    params: dict[str, str] = {}
    for item in query_string.split("&"):
        name, _, value = item.partition("=")
        params.setdefault(unquote(name), unquote(value))
    return params


def _iso(epoch: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch))


def _span(seconds: int) -> str:
    """A window as AWS's messages write it: ``15 min.`` or ``90 sec.``."""
    return f"{seconds // 60} min." if seconds % 60 == 0 else f"{seconds} sec."


def _parse_time(value: str) -> tuple[str, float] | None:
    """(ISO basic timestamp, epoch) from an X-Amz-Date or Date value, None if unparseable."""
    try:
        match = _ISO_RE.fullmatch(value)
        if match is not None:
            return value, float(calendar.timegm(tuple(map(int, match.groups()))))
        when = parsedate_to_datetime(value)  # RFC 7231 form, allowed in the Date header
        epoch = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
        return _iso(epoch), epoch
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _pairs(header: str) -> list[tuple[str, str | None]]:
    """(name, value) pairs after the algorithm; value None for a token without '='."""
    pairs: list[tuple[str, str | None]] = []
    for part in header.partition(" ")[2].split(","):
        name, sep, value = part.strip().partition("=")
        if name or sep:
            pairs.append((name, value if sep else None))
    return pairs


def _redacted(header: str) -> str:
    """The header for error messages: only Credential and SignedHeaders values are shown."""
    shown = [f"{n[:40]}={v}" if n in ("Credential", "SignedHeaders") and v is not None
             else f"{n[:40]}=<redacted>" if v is not None else "<redacted>"
             for n, v in _pairs(header)]
    return f"{ALGORITHM} " + ", ".join(shown)


def _parse_slow(header: str) -> tuple[str, str, str, list[str]]:
    """Credential, SignedHeaders, Signature and AWS-style complaints about a header."""
    pairs = _pairs(header)
    params = {n: v for n, v in pairs if v is not None}
    problems = [f"Authorization header requires '{p}' parameter."
                for p in ("Credential", "Signature", "SignedHeaders") if not params.get(p)]
    if any(v is None for _, v in pairs):
        problems.insert(0, "Authorization header contains a parameter that is not a valid "
                           "key=value pair (missing equal-sign).")
    get = params.get
    return get("Credential", ""), get("SignedHeaders", ""), get("Signature", ""), problems


_Scope = tuple[str, str, str, list[str], str]  # access key, date, scope line, names, signed


class SigV4Verifier:
    """Checks SigV4 Authorization headers against ``secrets`` for one region and service."""

    def __init__(self, secrets: Callable[[str], str | None], region: str, service: str = "kms",
                 now: Callable[[], float] = time.time, max_skew_seconds: int = 300,
                 session_tokens: Callable[[str], str | None] = lambda _: None,
                 must_sign: tuple[str, ...] = MUST_SIGN) -> None:
        """``session_tokens`` gives the token a temporary credential was issued with, None
        for a long-term one (the default: this node issues no session credentials);
        ``must_sign`` names the headers a request that carries them must have signed."""
        self._must_sign = must_sign
        self._secrets, self._region, self._service = secrets, region, service
        self._session_tokens = session_tokens
        self._now, self._skew = now, max_skew_seconds
        self._keys: dict[tuple[str, str, str, str], bytes] = {}
        self._scopes: dict[str, _Scope] = {}  # validated "... Signature=" prefix -> its parts
        self._last_time: tuple[str, tuple[str, float] | None] = ("", None)

    def signing_key(self, secret: str, date: str) -> bytes:
        """The derived key for (secret, date, region, service), from a small bounded cache."""
        cache_key = (secret, date, self._region, self._service)
        key = self._keys.get(cache_key)
        if key is None:
            key = derive_signing_key(secret, date, self._region, self._service)
            if len(self._keys) >= _CACHE_SIZE:
                del self._keys[next(iter(self._keys))]
            self._keys[cache_key] = key
        return key

    def _parse_authorization(self, header: str, prefix: str, has_date: bool) -> tuple[_Scope, str]:
        """Validate an Authorization header in AWS's order; cache it if it has the SDK shape."""
        if not header.startswith(_PREFIX):
            raise IncompleteSignatureException(
                f"Unsupported AWS 'algorithm': only '{ALGORITHM}' is accepted.")
        match = _AUTH_RE.fullmatch(header)
        if match is None:
            credential, signed, signature, problems = _parse_slow(header)
        else:
            (credential, signed, signature), problems = match.groups(), []
        if not has_date:
            problems.append("Authorization header requires existence of either a 'X-Amz-Date' "
                            "or a 'Date' header.")
        if problems:
            raise IncompleteSignatureException(
                " ".join(problems) + f" Authorization={_redacted(header)}")
        scope = self._scope(credential, signed, f"Authorization={_redacted(header)}")
        if match is not None:  # SDK shape: the prefix alone determines everything above
            if len(self._scopes) >= _CACHE_SIZE:
                self._scopes.clear()
            self._scopes[prefix] = scope
        return scope, signature

    def _scope(self, credential: str, signed: str, shown: str) -> _Scope:
        """The credential scope and signed header names, checked as AWS checks them."""
        parts = credential.split("/")
        if len(parts) != 5 or not all(parts):
            raise IncompleteSignatureException(
                f"Credential should be of the form '<access key>/YYYYMMDD/<region>/<service>/"
                f"{TERMINATOR}'. {shown}")
        access_key, date, region, service, terminator = parts
        if terminator != TERMINATOR:
            raise IncompleteSignatureException(
                f"Credential should be scoped with a valid terminator: '{TERMINATOR}', "
                f"not '{terminator[:40]}'. ")
        names = sorted(set(signed.lower().split(";")))
        if "host" not in names:  # AWS answers this one as an invalid, not incomplete, one
            raise InvalidSignatureException(
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
        if region != self._region:  # AWS's words, then which region this node serves
            raise InvalidSignatureException(
                f"Credential should be scoped to a valid region. This node serves "
                f"{self._region}, not '{region[:40]}'.")
        if service != self._service:
            raise InvalidSignatureException(
                f"Credential should be scoped to correct service: '{self._service}'. ")
        return (access_key, date, f"{date}/{region}/{service}/{TERMINATOR}", names,
                ";".join(names))

    def _check_time(self, value: str, scope_date: str, expires: int | None = None) -> str:
        """The request's ISO timestamp, once it matches the scope date and our clock: within
        the allowed skew of now, or for a presigned request (``expires`` seconds) from the
        skew before it until it expires."""
        last_value, parsed = self._last_time
        if value != last_value or parsed is None:
            parsed = _parse_time(value)
            if parsed is None:
                raise IncompleteSignatureException(
                    f"Date must be in ISO-8601 'basic format'. Got '{value[:40]}'. "
                    "See http://en.wikipedia.org/wiki/ISO_8601")
            self._last_time = (value, parsed)
        amz_date, epoch = parsed
        if scope_date != amz_date[:8]:
            raise InvalidSignatureException(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
                f"from HTTP: '{scope_date}' != '{amz_date[:8]}', from '{amz_date}'.")
        now, skew = self._now(), self._skew
        window = _span(skew)
        if expires is not None and now - epoch > expires:
            raise InvalidSignatureException(
                f"Signature expired: {amz_date} is now earlier than "
                f"{_iso(now - expires)} ({_iso(now)} - {_span(expires)})")
        if expires is None and epoch < now - skew:
            raise InvalidSignatureException(
                f"Signature expired: {amz_date} is now earlier than "
                f"{_iso(now - skew)} ({_iso(now)} - {window})")
        if epoch > now + skew:
            raise InvalidSignatureException(
                f"Signature not yet current: {amz_date} is still later than "
                f"{_iso(now + skew)} ({_iso(now)} + {window})")
        return amz_date

    def _token_matches(self, access_key: str, token: str | None) -> bool:
        """A long-term key takes no X-Amz-Security-Token (AWS refuses one); a session key
        needs its own."""
        expected = self._session_tokens(access_key)
        if expected is None or token is None:
            return expected is None and token is None
        return hmac.compare_digest(expected.encode(), token.strip().encode("utf-8", "replace"))

    def verify(self, method: str, raw_path: str, query_string: str,
               headers: Mapping[str, str], body: bytes) -> str:
        """Return the access key id of a correctly signed request (Authorization header or
        presigned query string), or raise one of the errors."""
        if not isinstance(headers, _CI_TYPES):
            headers = CIMultiDict(headers.items())
        header = headers.get("authorization")
        if header is None:
            if "X-Amz-" in query_string:
                return self._verify_presigned(method, raw_path, query_string, headers, body)
            raise MissingAuthenticationTokenException("Missing Authentication Token")
        if "X-Amz-Algorithm=" in query_string or "X-Amz-Signature=" in query_string:
            raise IncompleteSignatureException(_TWO_MECHANISMS)
        header = header.strip()
        date_value = headers.get("x-amz-date") or headers.get("date")
        prefix, _, signature = header.rpartition("Signature=")
        scope = self._scopes.get(prefix)
        if scope is None or date_value is None:
            scope, signature = self._parse_authorization(header, prefix, date_value is not None)
        amz_date = self._check_time(date_value.strip(), scope[1])  # type: ignore[union-attr]
        return self._check_signature(method, raw_path, canonical_query(query_string), headers,
                                     body, scope, signature, amz_date,
                                     headers.get("x-amz-security-token"))

    def _verify_presigned(self, method: str, raw_path: str, query_string: str,
                          headers: CIMultiDict[str] | CIMultiDictProxy[str],
                          body: bytes) -> str:
        """The query-string form: X-Amz-Algorithm, -Credential, -Date, -Expires,
        -SignedHeaders and -Signature; valid from X-Amz-Date (less the clock skew allowed)
        for 15 minutes, whatever X-Amz-Expires says (checked for form only), as every AWS
        service but S3 does."""
        params = query_params(query_string)
        for name in _PRESIGN_PARAMS:
            if not params.get(name):
                raise IncompleteSignatureException(
                    f"AWS query-string parameters must include '{name}'. "
                    "Re-examine the query-string parameters.")
        if params["X-Amz-Algorithm"] != ALGORITHM:
            raise IncompleteSignatureException(
                f"Unsupported AWS 'algorithm': only '{ALGORITHM}' is accepted.")
        expires = params["X-Amz-Expires"]
        if not expires.isdigit() or not 0 < int(expires) <= MAX_PRESIGN_SECONDS:
            raise IncompleteSignatureException(
                "X-Amz-Expires must be a whole number of seconds, at least 1 and at most "
                f"{MAX_PRESIGN_SECONDS} (a week).")
        scope = self._scope(params["X-Amz-Credential"], params["X-Amz-SignedHeaders"],
                            "Re-examine the query-string parameters.")
        amz_date = self._check_time(params["X-Amz-Date"], scope[1], PRESIGNED_VALIDITY_SECONDS)
        return self._check_signature(method, raw_path,
                                     canonical_query(query_string, "X-Amz-Signature"),
                                     headers, body, scope, params["X-Amz-Signature"], amz_date,
                                     params.get("X-Amz-Security-Token"))

    def _check_signature(self, method: str, raw_path: str, query: str,
                         headers: CIMultiDict[str] | CIMultiDictProxy[str], body: bytes,
                         scope: _Scope, signature: str, amz_date: str,
                         token: str | None) -> str:
        access_key, scope_date, scope_line, names, signed_line = scope
        secret = self._secrets(access_key)
        if secret is None or not self._token_matches(access_key, token):
            raise UnrecognizedClientException(
                "The security token included in the request is invalid.")
        getall = headers.getall
        for name in self._must_sign:  # else a captured request could become another call
            if name not in names and name in headers:
                raise InvalidSignatureException(  # as AWS answers an unsigned Host
                    f"'{_DISPLAY.get(name, name)}' must be a 'SignedHeader' in the AWS "
                    "Authorization.")
        payload_hash = hashlib.sha256(body).hexdigest()
        declared = headers.get("x-amz-content-sha256")
        if declared is not None:  # signed or not, it must describe this very body
            if declared.strip().lower() != payload_hash:
                raise InvalidSignatureException(PAYLOAD_MISMATCH)
            payload_hash = declared.strip()
        lines = [method.upper(), canonical_uri(raw_path), query]
        for name in names:
            values = getall(name, None)
            if values is None:  # a signed header that is not there cannot match
                raise InvalidSignatureException(MISMATCH)
            if len(values) == 1:
                lines.append(name + ":" + " ".join(values[0].split()))
            else:
                lines.append(name + ":" + ",".join(" ".join(v.split()) for v in values))
        lines += ("", signed_line, payload_hash)
        canonical = "\n".join(lines).encode("utf-8", "surrogateescape")
        string_to_sign = f"{ALGORITHM}\n{amz_date}\n{scope_line}\n" + hashlib.sha256(
            canonical).hexdigest()
        key = self.signing_key(secret, scope_date)
        expected = hmac.digest(key, string_to_sign.encode(), "sha256").hex()
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            raise InvalidSignatureException(MISMATCH)
        return access_key
