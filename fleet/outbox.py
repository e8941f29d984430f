"""The ledger's side of the push: the outbox (ledger migration 5), its watermark and the rows.

The milter never calls this module. Triggers in the ledger add an outbox row for every new
(message, domain) row, every change of its state or adoption, every change of a message's details
(a late milter record completing an adopted message) and every flush event written, while
``fleet_push.enabled`` is set; ``enable`` sets it and queues everything already in the ledger in
the same transaction, so nothing written before or after is missed. A push reads batches in
sequence order, stores them, then ``acknowledge`` drops what the store has (its watermark).
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from backupmx.milter.ledger_schema import immediate

MESSAGE, FLUSH = "message", "flush"
MESSAGE_COLUMNS = ("id", "queue_id", "received_at", "sender", "size", "client_addr",
                   "client_name", "helo")
DOMAIN_COLUMNS = ("message_id", "domain", "recipients", "state", "changed_at", "flush_id",
                  "adopted_at")
FLUSH_COLUMNS = ("id", "domain", "trigger", "forced", "primary_state", "started_at",
                 "finished_at", "held_before", "delivered", "remaining", "result", "detail")


@dataclass(frozen=True)
class PushState:
    """The local view of the push (``status`` shows it; pure data)."""

    enabled: bool
    pushed_seq: int
    last_attempt_at: Optional[float]
    last_success_at: Optional[float]
    last_error: str
    pending_changes: int
    oldest_pending_at: Optional[float]
    token: str  # names this ledger in the fleet store

    def lag_seconds(self, now: float) -> float:
        """How long the oldest change not yet in the store has waited (0 when none)."""
        return 0.0 if self.oldest_pending_at is None else max(0.0, now - self.oldest_pending_at)


@dataclass(frozen=True)
class Batch:
    """Changes up to outbox sequence number ``last_seq``, with the rows they name as they are
    now (a message or flush event pruned meanwhile is simply absent)."""

    last_seq: int
    changes: int
    messages: List[tuple]  # MESSAGE_COLUMNS
    domains: List[tuple]  # DOMAIN_COLUMNS
    flushes: List[tuple]  # FLUSH_COLUMNS


def _write(conn: sqlite3.Connection, statements: Sequence[Tuple[str, tuple]]) -> None:
    with immediate(conn):
        for sql, args in statements:
            conn.execute(sql, args)


def state(conn: sqlite3.Connection) -> PushState:
    """The push's local state, with the pending changes counted (sqlite3.Error)."""
    row = conn.execute("SELECT enabled, pushed_seq, last_attempt_at, last_success_at,"
                       " last_error, token FROM fleet_push WHERE id = 1").fetchone()
    pending, oldest = conn.execute("SELECT COUNT(*), MIN(queued_at) FROM fleet_outbox"
                                   ).fetchone()
    return PushState(bool(row[0]), row[1], row[2], row[3], row[4], pending, oldest, row[5])


_QUEUE_ALL = (
    ("INSERT INTO fleet_outbox (kind, ref) SELECT 'message', id FROM messages ORDER BY id", ()),
    ("INSERT INTO fleet_outbox (kind, ref) SELECT 'flush', id FROM flush_events ORDER BY id", ()),
)


def enable(conn: sqlite3.Connection) -> bool:
    """Start recording changes, queueing the whole ledger once; False when already enabled."""
    if conn.execute("SELECT enabled FROM fleet_push WHERE id = 1").fetchone()[0]:
        return False
    with immediate(conn):
        if conn.execute("SELECT enabled FROM fleet_push WHERE id = 1").fetchone()[0]:
            conn.execute("ROLLBACK")
            return False
        conn.execute("UPDATE fleet_push SET enabled = 1 WHERE id = 1")
        for sql, args in _QUEUE_ALL:
            conn.execute(sql, args)
    return True


def disable(conn: sqlite3.Connection) -> bool:
    """Stop recording and drop the outbox (no [fleet] any more); False when it was off."""
    if not conn.execute("SELECT enabled FROM fleet_push WHERE id = 1").fetchone()[0]:
        return False
    _write(conn, [("UPDATE fleet_push SET enabled = 0, pushed_seq = 0 WHERE id = 1", ()),
                  ("DELETE FROM fleet_outbox", ())])
    return True


def requeue_all(conn: sqlite3.Connection) -> None:
    """Queue the whole ledger again: the store lost what this host pushed (a new or restored
    database, a new host_id). Upserts make the repeat harmless."""
    _write(conn, list(_QUEUE_ALL))


def batches(conn: sqlite3.Connection, after: int, size: int) -> Iterator[Batch]:
    """Batches of at most ``size`` outbox rows with sequence numbers above ``after``, up to the
    last one queued when the first batch is read (so a busy milter cannot keep a push going:
    what it adds meanwhile waits for the next push)."""
    last = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM fleet_outbox").fetchone()[0]
    while True:
        rows = conn.execute("SELECT seq, kind, ref FROM fleet_outbox WHERE seq > ? AND seq <= ?"
                            " ORDER BY seq LIMIT ?", (after, last, size)).fetchall()
        if not rows:
            return
        message_ids = sorted({ref for _, kind, ref in rows if kind == MESSAGE})
        flush_ids = sorted({ref for _, kind, ref in rows if kind == FLUSH})
        yield Batch(rows[-1][0], len(rows),
                    _select(conn, "messages", MESSAGE_COLUMNS, "id", message_ids),
                    _select(conn, "message_domains", DOMAIN_COLUMNS, "message_id", message_ids),
                    _select(conn, "flush_events", FLUSH_COLUMNS, "id", flush_ids))
        after = rows[-1][0]


def _select(conn: sqlite3.Connection, table: str, columns: Sequence[str], key: str,
            ids: Sequence[int]) -> List[tuple]:
    found: List[tuple] = []
    for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
        chunk = ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        found.extend(conn.execute(f"SELECT {', '.join(columns)} FROM {table}"
                                  f" WHERE {key} IN ({marks})", chunk).fetchall())
    return found


def acknowledge(conn: sqlite3.Connection, upto: int, now: float) -> None:
    """The store holds every change up to sequence number ``upto``: drop them locally."""
    _write(conn, [("DELETE FROM fleet_outbox WHERE seq <= ?", (upto,)),
                  ("UPDATE fleet_push SET pushed_seq = MAX(pushed_seq, ?), last_attempt_at = ?,"
                   " last_success_at = ?, last_error = '' WHERE id = 1", (upto, now, now))])


def record_failure(conn: sqlite3.Connection, error: str, now: float) -> None:
    """Remember why the last push failed (status shows it)."""
    _write(conn, [("UPDATE fleet_push SET last_attempt_at = ?, last_error = ? WHERE id = 1",
                   (now, error[:1000]))])


def prune(conn: sqlite3.Connection, before: float) -> int:
    """Delete messages none of whose relay domains is still held and whose last change is older
    than ``before`` (retention); their domain rows go with them. Returns how many."""
    with immediate(conn):
        cursor = conn.execute(
            "DELETE FROM messages WHERE id IN (SELECT message_id FROM message_domains"
            " GROUP BY message_id HAVING SUM(state = 'held') = 0"
            " AND MAX(COALESCE(changed_at, 0)) < ?)", (before,))
    return cursor.rowcount


def domain_summaries(conn: sqlite3.Connection) -> Dict[str, Tuple[int, int, Optional[float]]]:
    """domain -> (held messages, held bytes, oldest held arrival), as the ledger has it."""
    rows = conn.execute(
        "SELECT md.domain, COUNT(*), COALESCE(SUM(m.size), 0), MIN(m.received_at)"
        " FROM message_domains md JOIN messages m ON m.id = md.message_id"
        " WHERE md.state = 'held' GROUP BY md.domain").fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}
