"""The keyring: the only holder of unsealed material, cached per material id.

Two levels: each KMS key has its own key-encryption key (KEK), wrapped under the
region's root key and kept in the log's vault under the key id; every imported
material has one more, under ``<key id>/<material id>``, so it can be destroyed
alone. Every material version is sealed under its KEK before it enters an event.
Destroying a vault entry crypto-shreds what was sealed under it.

Rules: nothing here logs; raw material only goes straight into a cipher of this
package; a KEK of a key not yet committed lives only with its call: the caller passes
it in (``staged``: vault id -> wrapped KEK, the call's own vault changes) to each
method that may need it, and nothing read through it is ever cached; the caches are
bounded LRUs, re-derived from the vault on a miss, and nothing is served or cached once
its vault entry is gone.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from kms.crypto import transport
from kms.crypto.sealing import RootKey, Sealer, seal_context
from kms.domain import events as ev
from kms.domain.errors import KMSInternalException
from kms.domain.events import Material

MAX_KEKS = 10_000
MAX_MATERIALS = 10_000  # raw material and parsed private keys, each

# What a call that stages no KEK (most calls) passes: shared, read-only, built once.
NOTHING_STAGED: Mapping[str, bytes] = MappingProxyType({})

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """A dict with a fixed size: the least recently used entry goes first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, k: K) -> V | None:
        v = self._items.get(k)
        if v is not None:
            self._items.move_to_end(k)
        return v

    def put(self, k: K, v: V) -> None:
        self._items[k] = v
        self._items.move_to_end(k)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def drop(self, keep: Any) -> None:
        """Remove every entry whose key ``keep(key)`` rejects."""
        for k in [k for k in self._items if not keep(k)]:
            del self._items[k]

    def keys(self) -> list[K]:
        return list(self._items)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def kek_context(vault_id: str) -> bytes:
    return f"kms-kek\x00{vault_id}".encode()


def material_vault_id(key_id: str, material_id: str) -> str:
    """The vault entry of one imported material's own KEK."""
    return f"{key_id}/{material_id}"


def vault_ids_of(key_id: str, vault: Mapping[str, bytes]) -> list[str]:
    """Every vault entry that belongs to a key: its KEK and its materials' KEKs."""
    prefix = key_id + "/"
    return [v for v in vault if v == key_id or v.startswith(prefix)]


def _key_of(vault_id: str) -> str:
    return vault_id.split("/", 1)[0]


class Keyring:
    def __init__(self, root: RootKey, vault: Mapping[str, bytes], *,
                 max_keks: int = MAX_KEKS, max_materials: int = MAX_MATERIALS) -> None:
        self._root = root
        self._vault = vault  # the log's committed vault: vault id -> wrapped KEK
        self._keks: Lru[str, Sealer] = Lru(max_keks)
        # (vault id, material id) -> raw bytes / parsed private key
        self._raw: Lru[tuple[str, str], bytes] = Lru(max_materials)
        self._loaded: Lru[tuple[str, str], Any] = Lru(max_materials)

    # -- KEKs -------------------------------------------------------------------------------
    def new_kek(self, vault_id: str) -> bytes:
        """A fresh KEK, wrapped for the vault. Nothing is cached: until the vault entry is
        committed, the wrapped bytes (kept by the call) are the only copy."""
        return self._root.seal(os.urandom(32), kek_context(vault_id))

    def _kek(self, vault_id: str, staged: Mapping[str, bytes]) -> Sealer:
        wrapped = staged.get(vault_id) if staged else None
        if wrapped is not None:  # created by the calling call, not committed: never cached
            return Sealer(self._root.unseal(wrapped, kek_context(vault_id)))
        committed = self._vault.get(vault_id)
        if committed is None:
            self._forget_vault_id(vault_id)
            raise KMSInternalException("The key's material has been destroyed.")
        sealer = self._keks.get(vault_id)
        if sealer is None:
            sealer = Sealer(self._root.unseal(committed, kek_context(vault_id)))
            self._keks.put(vault_id, sealer)
        return sealer

    # -- material ---------------------------------------------------------------------------
    def seal(self, key_id: str, raw: bytes, public_key: bytes = b"",
             material_id: str | None = None, *, vault_id: str = "",
             staged: Mapping[str, bytes] = NOTHING_STAGED) -> Material:
        """Seal material under the KEK in ``vault_id`` (default: the key's own): the one
        in ``staged`` if the calling call creates that entry, else the committed one."""
        material_id = material_id or os.urandom(32).hex()
        sealer = self._kek(vault_id or key_id, staged)
        sealed = sealer.seal(raw, seal_context(key_id, material_id))
        return Material(material_id, sealed, public_key,
                        vault_id if vault_id and vault_id != key_id else "")

    def raw(self, key_id: str, material: Material, *,
            staged: Mapping[str, bytes] = NOTHING_STAGED) -> bytes:
        """The raw bytes of a material, under its staged KEK (uncached) or committed one."""
        vault_id = material.vault_id or key_id
        if staged and vault_id in staged:  # born with the calling call: nothing is cached
            return self._kek(vault_id, staged).unseal(
                material.sealed, seal_context(key_id, material.material_id))
        if vault_id not in self._vault:
            self._forget_vault_id(vault_id)  # destroyed: never served from a cache
            raise KMSInternalException("The key's material has been destroyed.")
        ck = (vault_id, material.material_id)
        raw = self._raw.get(ck)
        if raw is None:
            raw = self._kek(vault_id, NOTHING_STAGED).unseal(
                material.sealed, seal_context(key_id, material.material_id))
            self._raw.put(ck, raw)
        return raw

    def loaded(self, key_id: str, material: Material, load: Any, *,
               staged: Mapping[str, bytes] = NOTHING_STAGED) -> Any:
        """A parsed form of the material (e.g. a private key object), cached unless the
        material's KEK is staged by the calling call."""
        raw = self.raw(key_id, material, staged=staged)  # checks the vault first
        ck = (material.vault_id or key_id, material.material_id)
        if staged and ck[0] in staged:  # born with the calling call
            return load(raw)
        obj = self._loaded.get(ck)
        if obj is None:
            obj = load(raw)
            self._loaded.put(ck, obj)
        return obj

    def share(self, key_id: str, material: Material, recipient_public: bytes,
              context: bytes) -> bytes:
        """A material version sealed to another region's identity key (kms.crypto.transport,
        bound to ``context``): the raw bytes go straight into that seal."""
        return transport.seal_to(recipient_public, self.raw(key_id, material), context)

    @property
    def root(self) -> RootKey:
        """The region's root key (it also seals the region's transport identity)."""
        return self._root

    # -- forgetting -------------------------------------------------------------------------
    def committed(self, envelopes: Sequence[ev.Envelope] | None) -> None:
        """Log subscriber: drop what a committed deletion destroyed (the log has already
        removed the vault entries), or everything on a wipe."""
        if envelopes is None:
            self.clear()
            return
        for env in envelopes:
            e = env.event
            if isinstance(e, ev.KeyDeleted):
                self.forget(e.key_id)
            elif isinstance(e, ev.KeyMaterialDeleted):
                self._forget_gone(e.key_id)

    def forget(self, key_id: str) -> None:
        """Drop every cached KEK and material of a key."""
        self._keks.drop(lambda v: _key_of(v) != key_id)
        for cache in (self._raw, self._loaded):
            cache.drop(lambda ck: _key_of(ck[0]) != key_id)

    def _forget_vault_id(self, vault_id: str) -> None:
        self._keks.drop(lambda v: v != vault_id)
        for cache in (self._raw, self._loaded):
            cache.drop(lambda ck: ck[0] != vault_id)

    def _forget_gone(self, key_id: str) -> None:
        """Drop the cached entries of a key whose vault entry no longer exists."""
        def alive(vault_id: str) -> bool:
            return _key_of(vault_id) != key_id or vault_id in self._vault

        self._keks.drop(alive)
        for cache in (self._raw, self._loaded):
            cache.drop(lambda ck: alive(ck[0]))

    def clear(self) -> None:
        self._keks.clear()
        self._raw.clear()
        self._loaded.clear()

    def sizes(self) -> dict[str, int]:
        """How many entries each cache holds (for tests and health figures)."""
        return {"keks": len(self._keks), "raw": len(self._raw), "loaded": len(self._loaded)}

    def cached_vault_ids(self) -> set[str]:
        """The vault entries anything is cached under (for tests)."""
        ids = set(self._keks.keys())
        for cache in (self._raw, self._loaded):
            ids |= {ck[0] for ck in cache.keys()}
        return ids

    def cached_key_ids(self) -> set[str]:
        """The key ids anything is cached for (for tests)."""
        return {_key_of(v) for v in self.cached_vault_ids()}
