"""regions.peer_auth: both sides derive the same MAC from their own private key and the other's
public key; a MAC proves nothing for another direction, request or key; nonces are
remembered for the freshness window only, within a bound."""

from __future__ import annotations

import pytest

from kms.crypto import transport
from regions.identity import RegionIdentity
from regions.peer_auth import PeerRequestRefused, PeerVerifier, sign, signed_headers

US, EU = "us-east-1", "eu-west-1"
PATH = "/_kms/replication"
QUERY = {"origin": US, "after": "3", "wait": "10"}
T0 = 1_800_000_000.0


def identity() -> RegionIdentity:
    return RegionIdentity(transport.generate_private())


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def test_the_served_region_recomputes_the_callers_mac() -> None:
    eu, us, clock = identity(), identity(), Clock()
    verifier = PeerVerifier(us, US, now=clock)
    headers = sign(eu, us.public_key, EU, US, "GET", PATH, QUERY, now=T0)
    request = signed_headers(headers)
    assert request is not None and request.region == EU
    verifier.verify(request, eu.public_key, "GET", PATH, reversed(list(QUERY.items())))
    with pytest.raises(PeerRequestRefused, match="replays nonce"):
        verifier.verify(request, eu.public_key, "GET", PATH, QUERY.items())


def test_a_mac_is_bound_to_direction_request_and_key() -> None:
    eu, us, other = identity(), identity(), identity()
    headers = sign(eu, us.public_key, EU, US, "GET", PATH, QUERY, now=T0)
    request = signed_headers(headers)
    assert request is not None
    # the same agreement, the other way: us-east-1's request to eu-west-1 (label differs)
    reflected = signed_headers({**headers, "X-Kms-Peer-Region": US,
                                "X-Kms-Peer-Key": us.fingerprint})
    assert reflected is not None
    with pytest.raises(PeerRequestRefused, match="does not match"):
        PeerVerifier(eu, EU, now=Clock()).verify(reflected, us.public_key, "GET", PATH,
                                                 QUERY.items())
    verifier = PeerVerifier(us, US, now=Clock())
    for method, path, query in (("POST", PATH, QUERY), ("GET", "/_kms/region", QUERY),
                                ("GET", PATH, {**QUERY, "after": "0"})):
        with pytest.raises(PeerRequestRefused, match="does not match"):
            verifier.verify(request, eu.public_key, method, path, query.items())
    with pytest.raises(PeerRequestRefused, match="signed with identity key"):
        verifier.verify(request, other.public_key, "GET", PATH, QUERY.items())


def test_nonces_are_remembered_for_the_window_and_bounded() -> None:
    eu, us, clock = identity(), identity(), Clock()
    verifier = PeerVerifier(us, US, now=clock, window_s=300, max_nonces=2)
    first = signed_headers(sign(eu, us.public_key, EU, US, "GET", PATH, QUERY, now=T0,
                                nonce="0" * 32))
    assert first is not None
    verifier.verify(first, eu.public_key, "GET", PATH, QUERY.items())
    for n in "12":
        req = signed_headers(sign(eu, us.public_key, EU, US, "GET", PATH, QUERY, now=T0,
                                  nonce=n * 32))
        assert req is not None
        if n == "1":
            verifier.verify(req, eu.public_key, "GET", PATH, QUERY.items())
        else:
            with pytest.raises(PeerRequestRefused, match="unexpired peer nonces"):
                verifier.verify(req, eu.public_key, "GET", PATH, QUERY.items())
    clock.now = T0 + 299  # still fresh: the nonce is still spent
    with pytest.raises(PeerRequestRefused, match="replays"):
        verifier.verify(first, eu.public_key, "GET", PATH, QUERY.items())
    clock.now = T0 + 301  # past the window: stale, and the nonces forgotten
    with pytest.raises(PeerRequestRefused, match="behind this node's clock"):
        verifier.verify(first, eu.public_key, "GET", PATH, QUERY.items())
    late = signed_headers(sign(eu, us.public_key, EU, US, "GET", PATH, QUERY,
                               now=clock.now, nonce="0" * 32))
    assert late is not None
    verifier.verify(late, eu.public_key, "GET", PATH, QUERY.items())


def test_headers_are_parsed_or_refused() -> None:
    assert signed_headers({"X-Kms-Peer-Region": EU}) is None  # unsigned
    eu, us = identity(), identity()
    headers = sign(eu, us.public_key, EU, US, "GET", PATH, QUERY, now=T0)
    for name, bad in (("X-Kms-Peer-Date", "yesterday"), ("X-Kms-Peer-Nonce", "x"),
                      ("X-Kms-Peer-Key", "zz"), ("X-Kms-Peer-Signature", "00")):
        with pytest.raises(PeerRequestRefused, match=name):
            signed_headers({**headers, name: bad})
    with pytest.raises(PeerRequestRefused, match="incomplete: X-Kms-Peer-Region missing"):
        signed_headers({k: v for k, v in headers.items() if k != "X-Kms-Peer-Region"})
