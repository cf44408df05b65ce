"""Peer requests signed with the regions' identity keys: what a follower sends, what a node checks.

Rules: the MAC key is HKDF-SHA256 over the X25519 agreement of the caller's identity key with
the served region's (``RegionIdentity.peer_mac``, info ``kms peer auth v1 <from> <to>``, so a
MAC for one direction or pair of regions proves nothing for another); the MAC is
HMAC-SHA256 over ``canonical``: method, path, sorted query, date, nonce, both regions and the
signer's key fingerprint. A request is fresh within ``WINDOW_S`` of the checking node's wall
clock (never its --dev key-schedule clock), and a nonce is accepted once in that window. No
I/O here: the node's Peering supplies the pinned keys (regions.peering).
"""

from __future__ import annotations

import heapq
import hmac
import os
import re
import time
from calendar import timegm
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from kms.crypto import transport
from regions.identity import RegionIdentity

REGION_HEADER = "X-Kms-Peer-Region"
DATE_HEADER = "X-Kms-Peer-Date"
NONCE_HEADER = "X-Kms-Peer-Nonce"
KEY_HEADER = "X-Kms-Peer-Key"
SIGNATURE_HEADER = "X-Kms-Peer-Signature"
SIGNED_HEADERS = (DATE_HEADER, NONCE_HEADER, KEY_HEADER, SIGNATURE_HEADER)
ALGORITHM = "KMS-PEER-HMAC-SHA256-V1"
WINDOW_S = 300.0  # a signed request is fresh this long either side of the checker's clock
MAX_NONCES = 100_000  # outstanding nonces remembered (only MAC-valid requests add one)
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_DATE = re.compile(r"\d{8}T\d{6}Z")
_NONCE = re.compile(r"[0-9a-f]{32}")
_HEX = re.compile(r"[0-9a-f]{64}")
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")


class PeerRequestRefused(Exception):
    """A replication request that is not a configured peer's signed, fresh, first use;
    the message is safe to echo (it names regions and key fingerprints, never a secret)."""


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """The peer-auth headers of one request, well-formed but not yet verified."""

    region: str
    date: str
    at: float  # the date as epoch seconds
    nonce: str
    key_fingerprint: str
    signature: str


def mac_label(from_region: str, to_region: str) -> bytes:
    return f"kms peer auth v1 {from_region} {to_region}".encode()


def canonical(method: str, path: str, query: Iterable[tuple[str, str]], date: str, nonce: str,
              from_region: str, to_region: str, key_fingerprint: str) -> bytes:
    pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in query)
    return "\n".join([ALGORITHM, method.upper(), path, "&".join(f"{k}={v}" for k, v in pairs),
                      date, nonce, from_region, to_region, key_fingerprint]).encode()


def format_date(at: float) -> str:
    return time.strftime(DATE_FORMAT, time.gmtime(at))


def sign(identity: RegionIdentity, peer_public: bytes, from_region: str, to_region: str,
         method: str, path: str, query: Mapping[str, str], *, now: float,
         nonce: str | None = None) -> dict[str, str]:
    """The headers that make ``method path?query`` a request of ``from_region`` (this
    node, holding ``identity``) to ``to_region``, whose identity key is ``peer_public``."""
    date, nonce = format_date(now), nonce or os.urandom(16).hex()
    fp = identity.fingerprint
    message = canonical(method, path, query.items(), date, nonce, from_region, to_region, fp)
    mac = identity.peer_mac(peer_public, mac_label(from_region, to_region), message)
    return {REGION_HEADER: from_region, DATE_HEADER: date, NONCE_HEADER: nonce,
            KEY_HEADER: fp, SIGNATURE_HEADER: mac.hex()}


def signed_headers(headers: Mapping[str, str]) -> SignedRequest | None:
    """The request's peer-auth headers; None when it carries none of the signing headers
    (unsigned); PeerRequestRefused when they are partial or malformed."""
    present = [h for h in SIGNED_HEADERS if h in headers]
    if not present:
        return None
    missing = [h for h in (REGION_HEADER, *SIGNED_HEADERS) if not headers.get(h)]
    if missing:
        raise PeerRequestRefused(f"The peer request's signature is incomplete: "
                                 f"{', '.join(missing)} missing.")
    date, nonce = headers[DATE_HEADER], headers[NONCE_HEADER]
    fp, signature = headers[KEY_HEADER], headers[SIGNATURE_HEADER]
    if not _DATE.fullmatch(date):
        raise PeerRequestRefused(f"{DATE_HEADER} must be a UTC time like 20260101T000000Z.")
    if not _NONCE.fullmatch(nonce):
        raise PeerRequestRefused(f"{NONCE_HEADER} must be 32 lowercase hex digits.")
    if not _FINGERPRINT.fullmatch(fp):
        raise PeerRequestRefused(f"{KEY_HEADER} must be the 16 hex digit fingerprint of the "
                                 "signer's identity key.")
    if not _HEX.fullmatch(signature):
        raise PeerRequestRefused(f"{SIGNATURE_HEADER} must be 64 lowercase hex digits.")
    try:
        at = float(timegm(time.strptime(date, DATE_FORMAT)))
    except ValueError:
        raise PeerRequestRefused(f"{DATE_HEADER} {date} is not a valid time.") from None
    return SignedRequest(headers[REGION_HEADER][:64], date, at, nonce, fp, signature)


class PeerVerifier:
    """Checks signed peer requests to ``region`` (this node, holding ``identity``)."""

    def __init__(self, identity: RegionIdentity, region: str,
                 now: Callable[[], float] = time.time, window_s: float = WINDOW_S,
                 max_nonces: int = MAX_NONCES) -> None:
        self.identity = identity
        self.region = region
        self.now = now
        self.window_s = window_s
        self.max_nonces = max_nonces
        self._seen: set[tuple[str, str]] = set()
        self._expiry: list[tuple[float, str, str]] = []  # heap of (expires, region, nonce)

    def check_fresh(self, signed: SignedRequest) -> None:
        skew = signed.at - self.now()
        if abs(skew) > self.window_s:
            raise PeerRequestRefused(
                f"The request from region {signed.region} is dated {signed.date}, "
                f"{abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} this node's "
                f"clock; a peer request must be within {self.window_s:.0f} s (check the "
                "clocks of both nodes).")

    def verify(self, signed: SignedRequest, pinned: bytes, method: str, path: str,
               query: Iterable[tuple[str, str]]) -> None:
        """Accept the request once, or raise PeerRequestRefused saying why."""
        self.check_fresh(signed)
        expected_fp = transport.fingerprint(pinned)
        if signed.key_fingerprint != expected_fp:
            raise PeerRequestRefused(
                f"The request names region {signed.region} but is signed with identity key "
                f"{signed.key_fingerprint}; the key pinned for {signed.region} is "
                f"{expected_fp}. Refusing it (if the peer's key was replaced on purpose, "
                "give the new key in its peer config).")
        message = canonical(method, path, query, signed.date, signed.nonce, signed.region,
                            self.region, signed.key_fingerprint)
        mac = self.identity.peer_mac(pinned, mac_label(signed.region, self.region), message)
        if not hmac.compare_digest(mac.hex(), signed.signature):
            raise PeerRequestRefused(
                f"The request's signature does not match region {signed.region}'s identity "
                f"key {expected_fp}.")
        self._remember(signed)

    def _remember(self, signed: SignedRequest) -> None:
        now = self.now()
        while self._expiry and self._expiry[0][0] < now:
            _, region, nonce = heapq.heappop(self._expiry)
            self._seen.discard((region, nonce))
        entry = (signed.region, signed.nonce)
        if entry in self._seen:
            raise PeerRequestRefused(
                f"The request from region {signed.region} replays nonce {signed.nonce}, "
                "already used; each peer request carries a new one.")
        if len(self._seen) >= self.max_nonces:
            raise PeerRequestRefused(
                f"This node holds {self.max_nonces} unexpired peer nonces; retry later.")
        self._seen.add(entry)
        heapq.heappush(self._expiry, (signed.at + self.window_s, *entry))
