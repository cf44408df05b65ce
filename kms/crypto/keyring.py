"""The keyring: the only holder of unsealed material, cached per material id.

Two levels: each KMS key has its own key-encryption key (KEK), wrapped under the
region's root key and kept in the log's vault; every material version of that
key is sealed under its KEK before it enters an event. Destroying the vault entry
crypto-shreds the key. Rules: nothing here logs; raw material only goes straight
into a cipher of this package.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from kms.crypto.sealing import RootKey, Sealer, seal_context
from kms.domain.errors import KMSInternalException
from kms.domain.events import Material


def kek_context(key_id: str) -> bytes:
    return f"kms-kek\x00{key_id}".encode()


class Keyring:
    def __init__(self, root: RootKey, vault: Mapping[str, bytes]) -> None:
        self._root = root
        self._vault = vault  # the log's committed vault: key id -> wrapped KEK
        self._keks: dict[str, Sealer] = {}
        self._raw: dict[tuple[str, str], bytes] = {}
        self._loaded: dict[tuple[str, str], Any] = {}  # parsed private keys, per material

    def new_kek(self, key_id: str) -> bytes:
        """Make a KEK for a new key; returns it wrapped, for the vault."""
        kek = os.urandom(32)
        self._keks[key_id] = Sealer(kek)
        return self._root.seal(kek, kek_context(key_id))

    def _kek(self, key_id: str) -> Sealer:
        sealer = self._keks.get(key_id)
        if sealer is None:
            wrapped = self._vault.get(key_id)
            if wrapped is None:
                raise KMSInternalException("The key's material has been destroyed.")
            sealer = Sealer(self._root.unseal(wrapped, kek_context(key_id)))
            self._keks[key_id] = sealer
        return sealer

    def seal(self, key_id: str, raw: bytes, public_key: bytes = b"",
             material_id: str | None = None) -> Material:
        material_id = material_id or os.urandom(32).hex()
        sealed = self._kek(key_id).seal(raw, seal_context(key_id, material_id))
        return Material(material_id, sealed, public_key)

    def raw(self, key_id: str, material: Material) -> bytes:
        ck = (key_id, material.material_id)
        raw = self._raw.get(ck)
        if raw is None:
            raw = self._kek(key_id).unseal(material.sealed,
                                           seal_context(key_id, material.material_id))
            self._raw[ck] = raw
        return raw

    def loaded(self, key_id: str, material: Material, load: Any) -> Any:
        """A parsed form of the material (e.g. a private key object), cached."""
        ck = (key_id, material.material_id)
        obj = self._loaded.get(ck)
        if obj is None:
            obj = load(self.raw(key_id, material))
            self._loaded[ck] = obj
        return obj

    def forget(self, key_id: str) -> None:
        self._keks.pop(key_id, None)
        for cache in (self._raw, self._loaded):
            for ck in [ck for ck in cache if ck[0] == key_id]:
                del cache[ck]

    def clear(self) -> None:
        self._keks.clear()
        self._raw.clear()
        self._loaded.clear()
