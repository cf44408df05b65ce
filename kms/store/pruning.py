"""Dropping old audit facts from the log: the change a prune writes, and its SQL.

Rules: only rows of the ``audit`` stream go, only those before the cut (a signed
checkpoint's seq; the row it signs stays) and older than ``before_ms``; the marks only move
up, in the same transaction as the deletion: ``pruned_through`` (the cut: below it the chain
has gaps and is trusted from the checkpoint's signed head) and ``pruned_facts`` (the last fact
dropped: a stream cursor at or before it has missed records). One writer runs this: the
node's own (kms.store.sqlite) or, with the node stopped, ``kms audit prune --data-dir``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from kms.store.chain import AUDIT_STREAM

PRUNED_MARK = "pruned_through"
FACTS_MARK = "pruned_facts"


@dataclass(frozen=True, slots=True)
class AuditPruned:
    """Drop the audit facts before ``cut`` whose time is before ``before_ms``; ``last`` is
    the seq of the last of them (``plan`` gives it)."""

    cut: int
    before_ms: int
    last: int


def plan(conn: sqlite3.Connection, cut: int, before_ms: int) -> tuple[int, int]:
    """(how many facts ``AuditPruned(cut, before_ms)`` drops, the last one's seq; 0 if none)."""
    row = conn.execute("SELECT count(*), coalesce(max(seq), 0) FROM events WHERE stream = ? "
                       "AND seq < ? AND at_ms < ?", (AUDIT_STREAM, cut, before_ms)).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def apply(conn: sqlite3.Connection, change: AuditPruned) -> int:
    """Delete and move the marks inside the caller's transaction; the rows deleted."""
    n = conn.execute("DELETE FROM events WHERE stream = ? AND seq < ? AND at_ms < ?",
                     (AUDIT_STREAM, change.cut, change.before_ms)).rowcount
    if n:
        # first (a log pruned before this mark existed: its earlier cut bounds what went then)
        conn.execute("INSERT OR REPLACE INTO log_marks VALUES (?, max(?, coalesce((SELECT seq "
                     "FROM log_marks WHERE name = ?), (SELECT seq - 1 FROM log_marks WHERE "
                     "name = ?), 0)))", (FACTS_MARK, change.last, FACTS_MARK, PRUNED_MARK))
        _raise(conn, PRUNED_MARK, change.cut)
    return int(n)


def _raise(conn: sqlite3.Connection, name: str, seq: int) -> None:
    conn.execute("INSERT OR REPLACE INTO log_marks VALUES (?, max(?, coalesce((SELECT seq FROM "
                 "log_marks WHERE name = ?), 0)))", (name, seq, name))


def floor(conn: sqlite3.Connection) -> int:
    """The seq of the last fact any prune dropped (0: none): a cursor at or before it has
    missed records. A log pruned before that mark existed answers its cut less one."""
    try:
        found = dict(conn.execute("SELECT name, seq FROM log_marks").fetchall())
    except sqlite3.OperationalError:  # a log from before prune existed
        return 0
    if FACTS_MARK in found:
        return int(found[FACTS_MARK])
    return max(0, int(found.get(PRUNED_MARK, 0)) - 1)
