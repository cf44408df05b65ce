"""The keyring: the only holder of unsealed material, cached per material id.

Rules: callers get raw material only to pass straight into a cipher in this
package; nothing here logs, and ``forget`` drops a destroyed key's material.
"""

from __future__ import annotations

import os

from kms.crypto.sealing import RootKey, seal_context
from kms.crypto.symmetric import new_material
from kms.domain.events import Material


class Keyring:
    def __init__(self, root: RootKey) -> None:
        self._root = root
        self._cache: dict[tuple[str, str], bytes] = {}

    def new_symmetric(self, key_id: str) -> Material:
        return self.seal(key_id, new_material())

    def seal(self, key_id: str, raw: bytes, public_key: bytes = b"") -> Material:
        material_id = os.urandom(32).hex()
        sealed = self._root.seal(raw, seal_context(key_id, material_id))
        return Material(material_id, sealed, public_key)

    def raw(self, key_id: str, material: Material) -> bytes:
        ck = (key_id, material.material_id)
        raw = self._cache.get(ck)
        if raw is None:
            raw = self._root.unseal(material.sealed, seal_context(key_id, material.material_id))
            self._cache[ck] = raw
        return raw

    def forget(self, key_id: str) -> None:
        for ck in [ck for ck in self._cache if ck[0] == key_id]:
            del self._cache[ck]

    def clear(self) -> None:
        self._cache.clear()
