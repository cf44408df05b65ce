"""In-memory projections folded from the log: keys, aliases, creation order.

Rules: the only writer is the log's subscriber call (after a commit, in log
order); handlers read it and never mutate it. ``None`` from the log means wipe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kms.domain import events as ev
from kms.domain import key as keys
from kms.domain import multi_region as mrks
from kms.domain.alias import Alias
from kms.store import snapshot as snap


def key_stream(key_id: str) -> str:
    return f"key/{key_id}"


def alias_stream(name: str) -> str:
    return name  # alias names already read "alias/<name>"


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """What ``State.snapshot`` saves: every field of the projection, shared history too."""

    keys: dict[str, keys.Key]
    key_seq: dict[str, int]
    aliases: dict[str, Alias]
    mrks: dict[str, mrks.MultiRegionKey]
    held: dict[str, list[tuple[ev.Event, int, str, int]]]  # mrks.Folded
    history: dict[str, list[tuple[ev.Event, int, str, int]]]
    conflicts_recorded: dict[str, set[tuple[str, int]]]


class State:
    snapshot_name = "state"
    snapshot_type = StateSnapshot

    def __init__(self) -> None:
        self.keys: dict[str, keys.Key] = {}
        self.key_seq: dict[str, int] = {}  # key id -> seq of its KeyCreated (ListKeys order)
        self.aliases: dict[str, Alias] = {}
        # Multi-region keys this region knows of (member or not): their shared side.
        self.mrks: dict[str, mrks.MultiRegionKey] = {}
        # Shared events that arrived ahead of what they follow (mrks.waits), per key.
        self._held: dict[str, list[mrks.Folded]] = {}
        # Every shared event folded, per key: a promotion refolds them (mrks.refold).
        self._history: dict[str, list[mrks.Folded]] = {}
        # Conflicts this region has reported (MultiRegionConflictRecorded), per key.
        self.conflicts_recorded: dict[str, set[tuple[str, int]]] = {}

    def __call__(self, envelopes: Sequence[ev.Envelope] | None) -> None:
        if envelopes is None:
            self.keys.clear()
            self.key_seq.clear()
            self.aliases.clear()
            self.mrks.clear()
            self._held.clear()
            self._history.clear()
            self.conflicts_recorded.clear()
            return
        for env in envelopes:
            self.apply(env)

    def snapshot(self) -> Any:
        return snap.dump(StateSnapshot(self.keys, self.key_seq, self.aliases, self.mrks,
                                       self._held, self._history, self.conflicts_recorded))

    def restore(self, data: Any) -> None:
        s: StateSnapshot = snap.load(StateSnapshot, data)  # raises before anything changes
        self(None)
        self.keys.update(s.keys)
        self.key_seq.update(s.key_seq)
        self.aliases.update(s.aliases)
        self.mrks.update(s.mrks)
        self._held.update(s.held)
        self._history.update(s.history)
        self.conflicts_recorded.update(s.conflicts_recorded)

    def apply(self, env: ev.Envelope) -> None:
        e = env.event
        if mrks.is_shared_stream(env.stream):
            self._apply_shared((e, env.at_ms, env.origin_region, env.origin_seq))
            return
        match e:
            case mrks.MultiRegionConflictRecorded(key_id=kid, origin_region=o, origin_seq=n):
                self.conflicts_recorded.setdefault(kid, set()).add((o, n))
            case mrks.CurrentMaterialRestored(key_id=kid, material_id=mid):
                key = self.keys.get(kid)
                if key is not None and key.material(mid) is not None:
                    self.keys[kid] = dataclasses.replace(key, current_material_id=mid)
            case ev.KeyCreated():
                self.keys[e.key_id] = keys.created(e, env.at_ms)
                self.key_seq[e.key_id] = env.seq
            case ev.AliasCreated(alias=name, key_id=kid):
                self.aliases[name] = Alias(name, kid, env.at_ms, env.at_ms)
            case ev.AliasUpdated(alias=name, key_id=kid):
                old = self.aliases[name]
                self.aliases[name] = dataclasses.replace(old, key_id=kid, updated_at_ms=env.at_ms)
            case ev.AliasDeleted(alias=name):
                self.aliases.pop(name, None)
            case ev.KeyDeleted(key_id=kid):
                self.keys.pop(kid, None)
                self.key_seq.pop(kid, None)  # its aliases go by their own AliasDeleted events
            case _:
                key_id = getattr(e, "key_id", None)
                if key_id is not None and key_id in self.keys:
                    self.keys[key_id] = keys.apply(self.keys[key_id], e, env.at_ms)

    def _apply_shared(self, item: mrks.Folded) -> None:
        e = item[0]
        key_id = getattr(e, "key_id", None)
        if key_id is None:
            return
        if mrks.waits(self.mrks.get(key_id), e):  # ahead of what it follows: hold it
            self._held.setdefault(key_id, []).append(item)
            return
        self._fold_shared(key_id, item)
        held = self._held.get(key_id)
        while held:  # what was held for this key may follow now, in arrival order
            ready = next((h for h in held if not mrks.waits(self.mrks.get(key_id), h[0])), None)
            if ready is None:
                break
            held.remove(ready)
            self._fold_shared(key_id, ready)
        if not held:
            self._held.pop(key_id, None)

    def _fold_shared(self, key_id: str, item: mrks.Folded) -> None:
        e, at_ms, origin, seq = item
        history = self._history.setdefault(key_id, [])
        if isinstance(e, ev.MultiRegionKeyCreated):
            if key_id in self.mrks:  # a promoted region's restatement (mrks.restatement)
                return
            history[:] = [item]
            self.mrks[key_id] = mrks.created(e)
            return
        history.append(item)
        if isinstance(e, mrks.PrimaryRegionPromoted):
            self.mrks[key_id] = mrks.refold(history)
        else:
            self.mrks[key_id] = mrks.apply(self.mrks[key_id], e, at_ms, origin, seq)

    def highest_epoch(self, key_id: str) -> int:
        """The highest epoch this region has seen for a key, held events' too."""
        found = self.mrks.get(key_id)
        epochs = [getattr(h[0], "epoch", 0) for h in self._held.get(key_id, ())]
        return max([found.epoch if found else 0, *epochs])

    def aliases_of(self, key_id: str) -> list[Alias]:
        return [a for a in self.aliases.values() if a.key_id == key_id]

    def keys_in_order(self) -> list[tuple[int, keys.Key]]:
        return sorted(((self.key_seq[k], v) for k, v in self.keys.items()), key=lambda t: t[0])
