"""The grants projection: every live grant of this region, folded from the ``grants/``
streams, indexed by key, by grantee form and by retiring principal.

Rules: like ``State``, the only writer is the log's subscriber call (after each commit,
in log order, before the committing call is answered), so a grant is usable by the next
request; ``None`` means wipe. A key's deletion takes its grants with it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kms.domain import events as ev
from kms.domain import grants as g
from kms.store import snapshot as snap


@dataclass(frozen=True, slots=True)
class GrantsSnapshot:
    """What ``Grants.snapshot`` saves: each live grant with the seq of its GrantCreated, in
    creation order (the indexes are rebuilt from them)."""

    grants: list[tuple[g.Grant, int]]


class Grants:
    snapshot_name = "grants"
    snapshot_type = GrantsSnapshot

    def __init__(self) -> None:
        self.by_key: dict[str, dict[str, g.Grant]] = {}  # key id -> grant id -> grant
        # key id -> grantee form (g.grantee_form) -> grant ids, in creation order
        self._by_grantee: dict[str, dict[str, dict[str, None]]] = {}
        # retiring principal (as given) -> (key id, grant id), in creation order
        self._by_retiring: dict[str, dict[tuple[str, str], None]] = {}
        self._order: dict[tuple[str, str], int] = {}  # (key id, grant id) -> seq
        self._named: dict[tuple[str, str], dict[str, None]] = {}  # (key id, name) -> ids

    def __call__(self, envelopes: Sequence[ev.Envelope] | None) -> None:
        if envelopes is None:
            self.by_key.clear()
            self._by_grantee.clear()
            self._by_retiring.clear()
            self._order.clear()
            self._named.clear()
            return
        for env in envelopes:
            e = env.event
            if isinstance(e, g.GrantCreated):
                self._add(g.created(e, env.at_ms), env.seq)
            elif isinstance(e, g.GrantRetired | g.GrantRevoked):
                self._drop(e.key_id, e.grant_id)
            elif isinstance(e, ev.KeyDeleted):
                for grant_id in list(self.by_key.get(e.key_id, ())):
                    self._drop(e.key_id, grant_id)

    def snapshot(self) -> Any:
        live = [(grant, self._order[(k, gid)]) for k, by_id in self.by_key.items()
                for gid, grant in by_id.items()]
        live.sort(key=lambda t: t[1])
        return snap.dump(GrantsSnapshot(live))

    def restore(self, data: Any) -> None:
        s: GrantsSnapshot = snap.load(GrantsSnapshot, data)  # raises before anything changes
        self(None)
        for grant, seq in s.grants:
            self._add(grant, seq)

    def _add(self, grant: g.Grant, seq: int) -> None:
        self.by_key.setdefault(grant.key_id, {})[grant.grant_id] = grant
        forms = self._by_grantee.setdefault(grant.key_id, {})
        forms.setdefault(g.grantee_form(grant.grantee_principal), {})[grant.grant_id] = None
        if grant.retiring_principal:
            self._by_retiring.setdefault(grant.retiring_principal, {})[
                (grant.key_id, grant.grant_id)] = None
        self._order[(grant.key_id, grant.grant_id)] = seq
        if grant.name:
            self._named.setdefault((grant.key_id, grant.name), {})[grant.grant_id] = None

    def _drop(self, key_id: str, grant_id: str) -> None:
        grant = self.by_key.get(key_id, {}).pop(grant_id, None)
        if grant is None:
            return
        if not self.by_key[key_id]:
            del self.by_key[key_id]
        forms = self._by_grantee.get(key_id, {})
        form = g.grantee_form(grant.grantee_principal)
        forms.get(form, {}).pop(grant_id, None)
        if not forms.get(form, True):
            del forms[form]
        if not forms:
            self._by_grantee.pop(key_id, None)
        if grant.retiring_principal:
            retiring = self._by_retiring.get(grant.retiring_principal, {})
            retiring.pop((key_id, grant_id), None)
            if not retiring:
                self._by_retiring.pop(grant.retiring_principal, None)
        self._order.pop((key_id, grant_id), None)
        if grant.name:
            named = self._named.get((key_id, grant.name), {})
            named.pop(grant_id, None)
            if not named:
                self._named.pop((key_id, grant.name), None)

    # -- reads ----------------------------------------------------------------------------
    def get(self, key_id: str, grant_id: str) -> g.Grant | None:
        return self.by_key.get(key_id, {}).get(grant_id)

    def of_key(self, key_id: str) -> list[g.Grant]:
        """The key's live grants, oldest first."""
        return list(self.by_key.get(key_id, {}).values())

    def named(self, key_id: str, name: str) -> list[g.Grant]:
        """The key's live grants of this Name (Name idempotency), oldest first."""
        grants = self.by_key.get(key_id, {})
        return [grants[gid] for gid in self._named.get((key_id, name), ())]

    def count(self, key_id: str) -> int:
        return len(self.by_key.get(key_id, ()))

    def for_caller(self, key_id: str, forms: Sequence[str]) -> Iterator[g.Grant]:
        """The key's grants whose grantee is one of ``forms`` (g.principal_forms)."""
        by_form = self._by_grantee.get(key_id)
        if not by_form:
            return
        grants = self.by_key[key_id]
        for form in forms:
            for grant_id in by_form.get(form, ()):
                yield grants[grant_id]

    def retirable_by(self, principal: str) -> list[g.Grant]:
        """Grants (across keys) naming ``principal`` as retiring principal, oldest first."""
        refs = self._by_retiring.get(principal, {})
        return [self.by_key[k][gid] for k, gid in refs]

    def position(self, grant: g.Grant) -> int:
        """The seq of the grant's GrantCreated: its place in list orders."""
        return self._order[(grant.key_id, grant.grant_id)]
