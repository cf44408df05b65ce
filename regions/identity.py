"""A region's transport identity and the identity keys it has pinned for its peers.

Rules: the X25519 private key lives only sealed under the region's root key, in
``region-identity.key`` (0600, created once on first start); ``peers.json`` maps each peer
region to its base64 public key, pinned on first contact unless the config names the key,
and rewritten only atomically (temp file, fsync, rename, fsync of the dir). A key that
differs from the pin or from the config is refused with ``PeerIdentityChanged``. The
private key also keys the MACs of peer requests (``peer_mac``, for regions.peer_auth).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kms.crypto import transport
from kms.crypto.sealing import Sealer
from kms.datadir import DataDirRefused, create_sealed_file, read_sealed_file
from kms.files import write_atomically

IDENTITY_KEY_FILE = "region-identity.key"
PEERS_FILE = "peers.json"
_SEAL_CONTEXT = b"kms-region-identity"


class RegionIdentity:
    """This region's X25519 key pair; the private half never leaves the object."""

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private
        self.public_key: bytes = transport.public_raw(private)
        self._mac_keys: dict[tuple[bytes, bytes], bytes] = {}  # (peer key, label) -> key

    @classmethod
    def load_or_create(cls, data_dir: Path, root_key: Sealer) -> RegionIdentity:
        """The identity in ``data_dir``, minted and sealed under ``root_key`` on first
        start. DataDirRefused if the file is damaged or sealed under another root key."""
        path = data_dir / IDENTITY_KEY_FILE
        if not path.exists():
            private = transport.generate_private()
            if create_sealed_file(path, root_key, transport.private_raw(private),
                                  _SEAL_CONTEXT):
                return cls(private)
            # else another starter won the race: its key is the region's
        raw = read_sealed_file(path, root_key, _SEAL_CONTEXT, "a sealed region identity")
        try:
            return cls(transport.private_from_raw(raw))
        except ValueError:
            raise DataDirRefused(f"{path} does not hold an X25519 private key") from None

    @property
    def public_key_b64(self) -> str:
        return transport.public_to_text(self.public_key)

    @property
    def fingerprint(self) -> str:
        return transport.fingerprint(self.public_key)

    def peer_mac(self, peer_public: bytes, label: bytes, message: bytes) -> bytes:
        """HMAC-SHA256 of ``message`` under the key HKDF derives from this region's and
        ``peer_public``'s X25519 agreement with ``label`` as info (regions.peer_auth); the
        peer computes the same with its private key and ours. The derived key stays here.
        ValueError if ``peer_public`` is not a usable X25519 public key."""
        key = self._mac_keys.get((peer_public, label))
        if key is None:
            transport.check_public(peer_public)
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
            low, high = sorted((self.public_key, peer_public))
            key = HKDF(algorithm=hashes.SHA256(), length=32, salt=low + high,
                       info=label).derive(shared)
            if len(self._mac_keys) >= 256:  # peers' keys are few; a bound all the same
                self._mac_keys.clear()
            self._mac_keys[(peer_public, label)] = key
        mac = crypto_hmac.HMAC(key, hashes.SHA256())
        mac.update(message)
        return mac.finalize()

    def reseal(self, sealed: bytes, context: bytes, seal_under: Callable[[bytes], bytes]) -> bytes:
        """Material a peer sealed to this region, resealed by ``seal_under`` (the local
        root key's sealer); PeerMaterialUnreadable if it does not open."""
        return transport.reseal(self._private, sealed, context, seal_under)


class PeerIdentityChanged(Exception):
    """A peer presented an identity key other than the one pinned or configured for it."""

    def __init__(self, region: str, expected: bytes, presented: bytes,
                 source: Literal["pinned", "configured"]) -> None:
        self.region = region
        self.expected = transport.fingerprint(expected)
        self.presented = transport.fingerprint(presented)
        self.source = source
        super().__init__(
            f"peer region {region} presented identity key {self.presented}, but its "
            f"{source} key is {self.expected}; refusing it (if the peer's key was "
            f"replaced on purpose, give the new key in its peer config)")


class PeerPins:
    """Region -> pinned public key, persisted in ``peers.json``; one instance per node."""

    def __init__(self, path: Path, pins: dict[str, bytes]) -> None:
        self.path = path
        self._pins = pins

    @classmethod
    def load(cls, data_dir: Path) -> PeerPins:
        """The pins in ``data_dir`` (none yet if the file is absent). A damaged file is
        refused rather than read as empty, which would re-pin whatever answers next."""
        path = data_dir / PEERS_FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            return cls(path, {})
        except OSError as exc:
            raise DataDirRefused(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            pins = {str(region): transport.public_from_text(str(key))
                    for region, key in data.items()}
        except ValueError as exc:
            raise DataDirRefused(f"{path} is damaged ({exc}); restore it or remove it "
                                 "to pin every peer again on first contact") from None
        return cls(path, pins)

    def get(self, region: str) -> bytes | None:
        return self._pins.get(region)

    def pin(self, region: str, public_key: bytes, configured: str | None) -> bool:
        """Accept ``public_key`` for ``region`` or raise PeerIdentityChanged; True when
        it was newly pinned (first contact, or a configured key replacing an old pin).
        A configured key is the operator's word: it must match, and it wins over a pin."""
        transport.check_public(public_key)
        if configured is not None:
            try:
                expected = transport.public_from_text(configured)
            except ValueError as exc:
                raise ValueError(f"the identity key configured for peer {region}: {exc}") from None
            if public_key != expected:
                raise PeerIdentityChanged(region, expected, public_key, "configured")
        else:
            pinned = self._pins.get(region)
            if pinned is not None and pinned != public_key:
                raise PeerIdentityChanged(region, pinned, public_key, "pinned")
        if self._pins.get(region) == public_key:
            return False
        self._write({**self._pins, region: public_key})
        self._pins[region] = public_key
        return True

    def _write(self, pins: dict[str, bytes]) -> None:
        body = json.dumps({r: transport.public_to_text(k) for r, k in sorted(pins.items())},
                          indent=2) + "\n"
        write_atomically(self.path, body.encode())
