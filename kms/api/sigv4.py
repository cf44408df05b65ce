"""AWS Signature Version 4 verification for incoming requests (Authorization-header form only).

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
MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)
PAYLOAD_MISMATCH = "The provided 'x-amz-content-sha256' header does not match what was computed."
_CI_TYPES = (CIMultiDict, CIMultiDictProxy)
_PREFIX = ALGORITHM + " "
_AUTH_RE = re.compile(  # the exact shape SDKs send; anything else takes the slow, chatty path
    r"AWS4-HMAC-SHA256 Credential=([^, ]+), ?SignedHeaders=([^, ]+), ?Signature=([0-9a-f]{64})")
_SIGNATURE_RE = re.compile(r"Signature=[^,\s]*")
_ISO_RE = re.compile(r"(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z", re.ASCII)
_CACHE_SIZE = 128


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


def canonical_query(query_string: str) -> str:
    """Decode each name/value, re-encode per AWS (RFC 3986 unreserved kept), sort."""
    if not query_string:
        return ""
    pairs = []
    for item in query_string.split("&"):
        if item:
            name, _, value = item.partition("=")
            pairs.append((quote(unquote(name), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _iso(epoch: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch))


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


def _redacted(header: str) -> str:
    return _SIGNATURE_RE.sub("Signature=<redacted>", header)


def _parse_slow(header: str) -> tuple[str, str, str, list[str]]:
    """Credential, SignedHeaders, Signature and AWS-style complaints about a header."""
    params: dict[str, str] = {}
    problems: list[str] = []
    for part in header.partition(" ")[2].split(","):
        pname, sep, pvalue = part.strip().partition("=")
        if sep:
            params[pname] = pvalue
        elif pname:
            problems.append(f"'{pname[:40]}' not a valid key=value pair (missing equal-sign) "
                            "in Authorization header.")
    for pname in ("Credential", "Signature", "SignedHeaders"):
        if not params.get(pname):
            problems.append(f"Authorization header requires '{pname}' parameter.")
    get = params.get
    return get("Credential", ""), get("SignedHeaders", ""), get("Signature", ""), problems


class SigV4Verifier:
    """Checks SigV4 Authorization headers against ``secrets`` for one region and service."""

    def __init__(self, secrets: Callable[[str], str | None], region: str, service: str = "kms",
                 now: Callable[[], float] = time.time, max_skew_seconds: int = 300) -> None:
        self._secrets = secrets
        self._region = region
        self._service = service
        self._now = now
        self._skew = max_skew_seconds
        self._keys: dict[tuple[str, str, str, str], bytes] = {}
        self._signed: dict[str, tuple[list[str], str]] = {}
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

    def _signed_headers(self, signed: str, header: str) -> tuple[list[str], str]:
        """Sorted lowercase names and their ';' line, validated once per distinct value."""
        names = sorted(set(signed.lower().split(";")))
        if "host" not in names:
            raise IncompleteSignatureException(
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
        if "" in names:
            raise IncompleteSignatureException(
                f"SignedHeaders contains an empty header name. Authorization={_redacted(header)}")
        if len(self._signed) >= _CACHE_SIZE:
            self._signed.clear()
        self._signed[signed] = result = (names, ";".join(names))
        return result

    def _check_time(self, value: str, scope_date: str) -> str:
        """The request's ISO timestamp, once it matches the scope date and our clock."""
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
        if abs(epoch - now) > skew:
            window = f"{skew // 60} min." if skew % 60 == 0 else f"{skew} sec."
            if epoch < now:
                raise InvalidSignatureException(
                    f"Signature expired: {amz_date} is now earlier than "
                    f"{_iso(now - skew)} ({_iso(now)} - {window})")
            raise InvalidSignatureException(
                f"Signature not yet current: {amz_date} is still later than "
                f"{_iso(now + skew)} ({_iso(now)} + {window})")
        return amz_date

    def verify(self, method: str, raw_path: str, query_string: str,
               headers: Mapping[str, str], body: bytes) -> str:
        """Return the access key id of a correctly signed request, or raise one of the errors."""
        if isinstance(headers, _CI_TYPES):
            getall = headers.getall
        else:
            lowered: dict[str, list[str]] = {}
            for hname, hvalue in headers.items():
                lowered.setdefault(hname.lower(), []).append(hvalue)
            getall = lowered.get  # type: ignore[assignment]

        auth_values = getall("authorization", None)
        if not auth_values:
            raise MissingAuthenticationTokenException("Missing Authentication Token")
        header = auth_values[0].strip()
        if not header.startswith(_PREFIX):
            raise IncompleteSignatureException(
                f"Unsupported AWS 'algorithm': only '{ALGORITHM}' is accepted.")
        match = _AUTH_RE.fullmatch(header)
        if match is not None:
            credential, signed, signature = match.groups()
            problems: list[str] = []
        else:
            credential, signed, signature, problems = _parse_slow(header)
        date_values = getall("x-amz-date", None) or getall("date", None) or []
        if not date_values:
            problems.append("Authorization header requires existence of either a 'X-Amz-Date' "
                            "or a 'Date' header.")
        if problems:
            raise IncompleteSignatureException(
                " ".join(problems) + f" Authorization={_redacted(header)}")

        scope = credential.split("/")
        if len(scope) != 5 or not all(scope):
            raise IncompleteSignatureException(
                f"Credential should be of the form '<access key>/YYYYMMDD/<region>/<service>/"
                f"{TERMINATOR}'. Authorization={_redacted(header)}")
        access_key, scope_date, region, service, terminator = scope
        if terminator != TERMINATOR:
            raise IncompleteSignatureException(
                f"Credential should be scoped with a valid terminator: '{TERMINATOR}', "
                f"not '{terminator[:40]}'. ")
        names, signed_line = self._signed.get(signed) or self._signed_headers(signed, header)
        if region != self._region:
            raise InvalidSignatureException("Credential should be scoped to a valid region. ")
        if service != self._service:
            raise InvalidSignatureException(
                f"Credential should be scoped to correct service: '{self._service}'. ")
        amz_date = self._check_time(date_values[0].strip(), scope_date)
        secret = self._secrets(access_key)
        if secret is None:
            raise UnrecognizedClientException(
                "The security token included in the request is invalid.")

        payload_hash = hashlib.sha256(body).hexdigest()
        declared = getall("x-amz-content-sha256", None)
        if declared is not None:  # signed or not, it must describe this very body
            if declared[0].strip().lower() != payload_hash:
                raise InvalidSignatureException(PAYLOAD_MISMATCH)
            payload_hash = declared[0].strip()
        lines = [method.upper(), canonical_uri(raw_path), canonical_query(query_string)]
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
        string_to_sign = (f"{ALGORITHM}\n{amz_date}\n{scope_date}/{region}/{service}/"
                          f"{TERMINATOR}\n{hashlib.sha256(canonical).hexdigest()}")
        key = self.signing_key(secret, scope_date)
        expected = hmac.digest(key, string_to_sign.encode(), "sha256").hex()
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            raise InvalidSignatureException(MISMATCH)
        return access_key
