"""Which regions a node knows: its own, and its peers with the URL each is served at.

Rules: parsed from ``--peer REGION=URL`` flags and the config's ``[[peers]]`` tables (a flag
for a region the file names replaces that peer's URL, keeping its ``identity_key``); every
mistake is a ``ValueError`` whose message is one line naming the offending value: a malformed
flag, a region name that is not one, the node's own region, a region named twice in one
source, a URL that is not http(s)://host[:port], an identity key that is not a usable X25519
public key (kms.crypto.transport's check: base64 of 32 bytes, not a low-order point). The key
is kept as its base64 text, the one form PeerPins and the peers' answers use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kms.config import is_region_name
from kms.crypto import transport

PEER_FIELDS = frozenset({"region", "url", "identity_key"})


@dataclass(frozen=True, slots=True)
class Peer:
    """Another region's node: where to reach it, and (optionally) its pinned identity key."""

    region: str
    url: str  # scheme://host[:port], no trailing slash
    identity_key: str | None = None  # base64 text, checked (transport.public_from_text)


@dataclass(frozen=True, slots=True)
class Topology:
    region: str
    peers: Mapping[str, Peer]

    @classmethod
    def parse(cls, region: str, tables: Iterable[Mapping[str, Any]] = (),
              flags: Iterable[str] = ()) -> Topology:
        """The topology of a node in ``region`` from ``[[peers]]`` tables and ``--peer`` flags."""
        peers: dict[str, Peer] = {}
        for table in tables:
            peer = _from_table(table)
            _check_region(peer.region, region, peers, "[[peers]]")
            peers[peer.region] = peer
        flagged: set[str] = set()
        for flag in flags:
            name, url = _split_flag(flag)
            if name in flagged:
                raise ValueError(f"--peer {flag!r}: region {name} is named by another --peer")
            _check_region(name, region, {}, f"--peer {flag!r}")
            flagged.add(name)
            known = peers.get(name)
            peers[name] = Peer(name, _url(url, f"--peer {flag!r}"),
                               known.identity_key if known else None)
        return cls(region, peers)

    def peer(self, region: str) -> Peer | None:
        return self.peers.get(region)


def _split_flag(flag: str) -> tuple[str, str]:
    name, sep, url = flag.partition("=")
    if not sep or not name or not url:
        raise ValueError(f"--peer {flag!r}: expected REGION=URL, like "
                         "eu-west-1=http://127.0.0.1:8081")
    return name.strip(), url.strip()


def _check_region(name: str, own: str, seen: Mapping[str, Peer], where: str) -> None:
    if not is_region_name(name):
        raise ValueError(f"{where}: {name!r} is not a region name like eu-west-1")
    if name == own:
        raise ValueError(f"{where}: {name} is this node's own region, not a peer")
    if name in seen:
        raise ValueError(f"{where}: region {name} is named twice")


def _from_table(table: Mapping[str, Any]) -> Peer:
    if not isinstance(table, Mapping):
        raise ValueError("[[peers]]: each peer must be a table")
    unknown = set(table) - PEER_FIELDS
    if unknown:
        raise ValueError(f"[[peers]]: unknown settings {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(PEER_FIELDS))})")
    name, url, key = table.get("region"), table.get("url"), table.get("identity_key")
    if not isinstance(name, str) or not isinstance(url, str):
        raise ValueError(f"[[peers]]: each peer needs region and url strings, got {dict(table)!r}")
    where = f"[[peers]] region {name!r}"
    if key is not None and not isinstance(key, str):
        raise ValueError(f"{where}: identity_key must be a base64 string")
    return Peer(name, _url(url, where), _identity_key(key, where) if key is not None else None)


def _url(url: str, where: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        parts = None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
            or parts.path not in ("", "/") or parts.query or parts.fragment):
        raise ValueError(f"{where}: URL {url!r} is not http(s)://host[:port]")
    return f"{parts.scheme}://{parts.netloc}"


def _identity_key(text: str, where: str) -> str:
    """The configured key as canonical base64 text, once checked like a peer's answer."""
    try:
        raw = transport.public_from_text(text)
    except ValueError as exc:
        raise ValueError(f"{where}: identity_key: {exc}") from None
    return transport.public_to_text(raw)
