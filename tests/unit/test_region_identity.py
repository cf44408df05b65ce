"""A region's identity key and its peer pins, on a real data dir: the private key is
minted once, kept only sealed under the root key (0600) and opened by no other root key;
a peer's key is pinned on first contact, a changed or unconfigured key is refused by name,
and pins survive a restart."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from kms.crypto import transport
from kms.crypto.sealing import RootKey
from kms.datadir import DataDirRefused
from regions.identity import (
    IDENTITY_KEY_FILE,
    PEERS_FILE,
    PeerIdentityChanged,
    PeerPins,
    RegionIdentity,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def peer_key() -> bytes:
    return transport.public_raw(transport.generate_private())


@pytest.fixture
def root() -> RootKey:
    return RootKey(os.urandom(32))


# --- the region's own identity ---

def test_first_start_creates_a_sealed_0600_identity(tmp_path: Path, root: RootKey) -> None:
    identity = RegionIdentity.load_or_create(tmp_path, root)
    path = tmp_path / IDENTITY_KEY_FILE
    assert mode(path) == 0o600
    assert len(identity.public_key) == 32
    assert base64.b64decode(identity.public_key_b64) == identity.public_key
    assert identity.fingerprint == transport.fingerprint(identity.public_key)


def test_identity_persists_across_loads(tmp_path: Path, root: RootKey) -> None:
    first = RegionIdentity.load_or_create(tmp_path, root)
    stored = (tmp_path / IDENTITY_KEY_FILE).read_bytes()
    again = RegionIdentity.load_or_create(tmp_path, root)
    assert again.public_key == first.public_key
    assert (tmp_path / IDENTITY_KEY_FILE).read_bytes() == stored  # not rewritten


def test_two_regions_have_different_identities(tmp_path: Path, root: RootKey) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = RegionIdentity.load_or_create(tmp_path / "a", root)
    b = RegionIdentity.load_or_create(tmp_path / "b", root)
    assert a.public_key != b.public_key


def test_file_holds_the_private_key_only_sealed_under_the_root_key(
        tmp_path: Path, root: RootKey) -> None:
    identity = RegionIdentity.load_or_create(tmp_path, root)
    stored = (tmp_path / IDENTITY_KEY_FILE).read_bytes()
    raw = root.unseal(base64.b64decode(stored), b"kms-region-identity")
    assert transport.public_raw(transport.private_from_raw(raw)) == identity.public_key
    for form in (raw, base64.b64encode(raw), raw.hex().encode()):
        assert form not in stored


def test_another_root_key_cannot_open_the_identity(tmp_path: Path, root: RootKey) -> None:
    RegionIdentity.load_or_create(tmp_path, root)
    stored = (tmp_path / IDENTITY_KEY_FILE).read_bytes()
    with pytest.raises(DataDirRefused) as info:
        RegionIdentity.load_or_create(tmp_path, RootKey(os.urandom(32)))
    assert IDENTITY_KEY_FILE in str(info.value)
    assert "root key" in str(info.value)
    assert (tmp_path / IDENTITY_KEY_FILE).read_bytes() == stored  # never replaced


@pytest.mark.parametrize("content", [b"not base64!\n", base64.b64encode(b"\x01" + bytes(40))])
def test_a_damaged_identity_file_is_refused(tmp_path: Path, root: RootKey,
                                            content: bytes) -> None:
    (tmp_path / IDENTITY_KEY_FILE).write_bytes(content)
    with pytest.raises(DataDirRefused) as info:
        RegionIdentity.load_or_create(tmp_path, root)
    assert IDENTITY_KEY_FILE in str(info.value)


def test_material_sealed_to_the_region_is_resealed_under_its_root_key(
        tmp_path: Path, root: RootKey) -> None:
    identity = RegionIdentity.load_or_create(tmp_path, root)
    material = os.urandom(32)
    sealed = transport.seal_to(identity.public_key, material, b"ctx")
    again = RegionIdentity.load_or_create(tmp_path, root)  # after a restart, too
    resealed = again.reseal(sealed, b"ctx", lambda p: root.seal(p, b"local"))
    assert material not in resealed
    assert root.unseal(resealed, b"local") == material


def test_material_sealed_to_another_region_does_not_open(tmp_path: Path, root: RootKey) -> None:
    identity = RegionIdentity.load_or_create(tmp_path, root)
    sealed = transport.seal_to(peer_key(), os.urandom(32), b"ctx")
    with pytest.raises(transport.PeerMaterialUnreadable):
        identity.reseal(sealed, b"ctx", lambda p: root.seal(p, b"local"))


# --- peer pins ---

def test_first_contact_pins_and_the_same_key_is_accepted(tmp_path: Path) -> None:
    pins = PeerPins.load(tmp_path)
    key = peer_key()
    assert pins.pin("eu-west-1", key, None) is True
    assert pins.get("eu-west-1") == key
    assert pins.pin("eu-west-1", key, None) is False
    path = tmp_path / PEERS_FILE
    assert json.loads(path.read_text()) == {"eu-west-1": base64.b64encode(key).decode()}
    assert mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [PEERS_FILE]  # no temp file left


def test_a_changed_key_is_refused_naming_the_region_and_both_fingerprints(
        tmp_path: Path) -> None:
    pins = PeerPins.load(tmp_path)
    first, changed = peer_key(), peer_key()
    pins.pin("eu-west-1", first, None)
    stored = (tmp_path / PEERS_FILE).read_bytes()
    with pytest.raises(PeerIdentityChanged) as info:
        pins.pin("eu-west-1", changed, None)
    message = str(info.value)
    assert "eu-west-1" in message
    assert transport.fingerprint(first) in message
    assert transport.fingerprint(changed) in message
    assert (info.value.region, info.value.source) == ("eu-west-1", "pinned")
    assert pins.get("eu-west-1") == first
    assert (tmp_path / PEERS_FILE).read_bytes() == stored


def test_pins_persist_across_loads(tmp_path: Path) -> None:
    first, second = peer_key(), peer_key()
    pins = PeerPins.load(tmp_path)
    pins.pin("eu-west-1", first, None)
    pins.pin("ap-southeast-2", second, None)
    reloaded = PeerPins.load(tmp_path)
    assert reloaded.get("eu-west-1") == first
    assert reloaded.get("ap-southeast-2") == second
    assert reloaded.pin("eu-west-1", first, None) is False
    with pytest.raises(PeerIdentityChanged):
        reloaded.pin("ap-southeast-2", first, None)


def test_a_configured_key_must_match_even_on_first_contact(tmp_path: Path) -> None:
    pins = PeerPins.load(tmp_path)
    configured, presented = peer_key(), peer_key()
    with pytest.raises(PeerIdentityChanged) as info:
        pins.pin("eu-west-1", presented, transport.public_to_text(configured))
    assert info.value.source == "configured"
    assert transport.fingerprint(configured) in str(info.value)
    assert transport.fingerprint(presented) in str(info.value)
    assert pins.get("eu-west-1") is None
    assert not (tmp_path / PEERS_FILE).exists()


def test_a_matching_configured_key_is_pinned_and_replaces_an_old_pin(tmp_path: Path) -> None:
    pins = PeerPins.load(tmp_path)
    old, new = peer_key(), peer_key()
    pins.pin("eu-west-1", old, None)
    assert pins.pin("eu-west-1", new, transport.public_to_text(new)) is True
    assert PeerPins.load(tmp_path).get("eu-west-1") == new


def test_a_malformed_configured_key_names_the_peer(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="eu-west-1"):
        PeerPins.load(tmp_path).pin("eu-west-1", peer_key(), "not a key")


def test_an_unusable_presented_key_is_refused(tmp_path: Path) -> None:
    pins = PeerPins.load(tmp_path)
    for bad in (bytes(32), bytes(31)):
        with pytest.raises(ValueError):
            pins.pin("eu-west-1", bad, None)
    assert pins.get("eu-west-1") is None


@pytest.mark.parametrize("content", ["{not json", "[]", '{"eu-west-1": "short"}'])
def test_a_damaged_pin_file_is_refused_not_read_as_empty(tmp_path: Path, content: str) -> None:
    (tmp_path / PEERS_FILE).write_text(content)
    with pytest.raises(DataDirRefused) as info:
        PeerPins.load(tmp_path)
    assert PEERS_FILE in str(info.value)
