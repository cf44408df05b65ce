"""The in-memory event log for unit tests: ``EventLog``'s writer, heads and hash chain, with
rows, vault, cursors, checkpoints and snapshots kept in lists and dicts.

Rules: it passes the same contract suite as ``SqliteLog`` (tests/unit/test_log_contract.py);
nothing here outlives the process. ``kms.store.log`` still names it (``MemoryLog``).
"""

from __future__ import annotations

import itertools

from kms.audit.checkpoints import Checkpoint
from kms.store import snapshot as snapshots
from kms.store.chain import AUDIT_STREAM, GENESIS, _Row
from kms.store.log import KEEP_SNAPSHOTS, EventLog, SideChange
from kms.store.pruning import AuditPruned
from kms.store.replication import CursorChange, ReplicatedRow


class MemoryLog(EventLog):
    """The in-memory twin used by unit tests; passes the same contract suite."""

    def __init__(self, region: str) -> None:
        super().__init__(region)
        self.rows: list[_Row] = []
        self.stored_vault: dict[str, bytes] = {}
        self.stored_cursors: dict[str, int] = {}
        self.stored_checkpoints: list[Checkpoint] = []
        self.stored_snapshots: list[snapshots.Snapshot] = []
        self.stored_floor = 0

    async def _load_floor(self) -> int:
        return self.stored_floor

    async def _load(self) -> tuple[dict[str, bytes], dict[str, int]]:
        return dict(self.stored_vault), dict(self.stored_cursors)

    async def _count(self, after_seq: int) -> tuple[int, int]:
        return (sum(r[0] > after_seq for r in self.rows), sum(r[0] < 1 for r in self.rows))

    async def _snapshots(self) -> list[snapshots.Snapshot]:
        return sorted(self.stored_snapshots, key=lambda s: -s.seq)

    async def _persist_snapshot(self, snapshot: snapshots.Snapshot) -> None:
        kept = [s for s in self.stored_snapshots if s.seq != snapshot.seq]
        self.stored_snapshots = sorted([*kept, snapshot], key=lambda s: -s.seq)[:KEEP_SNAPSHOTS]

    async def _persist(self, rows: list[_Row], changes: list[SideChange]) -> None:
        self.rows.extend(rows)
        for c in changes:
            if isinstance(c, CursorChange):
                self.stored_cursors[c.origin_region] = c.origin_seq
            elif isinstance(c, Checkpoint):
                self.stored_checkpoints.append(c)
            elif isinstance(c, AuditPruned):
                self.stored_floor = max(self.stored_floor, c.last)
                self.rows = [r for r in self.rows if not (
                    r[1] == AUDIT_STREAM and r[0] < c.cut and r[6] < c.before_ms)]
            elif c.wrapped is None:
                self.stored_vault.pop(c.key_id, None)
            else:
                self.stored_vault[c.key_id] = c.wrapped

    async def _wipe(self) -> None:
        self.rows.clear()
        self.stored_vault.clear()
        self.stored_cursors.clear()
        self.stored_checkpoints.clear()
        self.stored_snapshots.clear()
        self.stored_floor = 0

    async def _checkpoints(self) -> list[Checkpoint]:
        return list(self.stored_checkpoints)

    async def _tail(self) -> tuple[int, bytes]:
        return (self.rows[-1][0], self.rows[-1][9]) if self.rows else (0, GENESIS)

    async def _probe(self) -> None:
        return None

    async def read_rows(self, after_seq: int, limit: int) -> list[_Row]:
        return [r for r in self.rows if r[0] > after_seq][:limit]

    async def _read_own(self, after_seq: int, limit: int) -> list[ReplicatedRow]:
        own = (ReplicatedRow(r[0], r[1], r[3], r[6], r[7]) for r in self.rows
               if r[0] > after_seq and r[4] == self.region and r[1] != AUDIT_STREAM)
        return list(itertools.islice(own, limit))
