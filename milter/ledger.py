"""The ledger: an SQLite file of every relay message accepted, per recipient domain, and flushes.

WAL mode so the command's readers never block the milter's writer; one transaction per message,
committed before the milter answers end-of-message, so a record of mail Postfix accepted survives
kill -9 of the milter. ``[milter] ledger_sync`` picks SQLite's ``synchronous`` level: ``normal``
(default) survives a crash of the process but may lose the last records on power loss; ``full``
also survives power loss, like Postfix's own fsync'ed queue file, at a measured cost of about a
quarter of the backup MX's message throughput (bench/README-milter.md). The
schema and its migrations are in ledger_schema.py.
When a write fails, the record goes to the fallback journal (journal.py) and is replayed on the
next successful write.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from backupmx.milter.envelope import MessageRecord
from backupmx.milter.journal import Journal
from backupmx.milter.ledger_schema import (  # noqa: F401 (the ledger's public names)
    MIGRATIONS,
    SCHEMA_VERSION,
    LedgerError,
    connect,
    immediate,
    migrate,
)

log = logging.getLogger("backupmx.milter.ledger")

HELD, FLUSHED, LEFT = "held", "flushed", "left"
STATES = (HELD, FLUSHED, LEFT)

#: a milter record and an adopted row of the same queue id this close in time (seconds) are
#: the same message (Postfix reuses a short queue id only much later)
ADOPTED_MATCH_SECONDS = 3600.0


class _Slot:
    """One record waiting for a group commit, and what became of it."""

    __slots__ = ("record", "result")

    def __init__(self, record: MessageRecord) -> None:
        self.record = record
        self.result: Optional[str] = None


class HeldRow(NamedTuple):
    """A (message, domain) row still held (a tuple: status builds 100,000 of them)."""

    message_id: int
    queue_id: str
    domain: str
    received_at: float
    seen_in_queue: bool


class KnownRow(NamedTuple):
    """A ledger row of a message, whatever its state (domain None: a message without any)."""

    message_id: int
    queue_id: str
    received_at: float
    domain: Optional[str]


@dataclass(frozen=True)
class DomainSummary:
    domain: str
    held_messages: int = 0
    held_bytes: int = 0
    oldest_received_at: Optional[float] = None
    adopted_messages: int = 0  # of the held ones: adopted from the queue, not milter-recorded


@dataclass(frozen=True)
class FlushEvent:
    id: int
    domain: str
    trigger: str
    forced: bool
    primary_state: str
    started_at: float
    finished_at: Optional[float]
    held_before: int
    delivered: Optional[int]
    remaining: Optional[int]
    result: str
    detail: str

    def to_json(self) -> Dict[str, object]:
        return dict(self.__dict__)


class Ledger:
    """Thread-safe access to one ledger file, with the journal as fallback for records."""

    def __init__(self, path: str, journal_path: Optional[str] = None,
                 busy_timeout: float = 5.0, create: bool = True, sync: str = "normal") -> None:
        self.path = path
        self.sync = sync
        self.journal = Journal(journal_path or f"{path}.journal")
        self.busy_timeout = busy_timeout
        self.create = create
        self._conn: Optional[sqlite3.Connection] = None
        self._lock = threading.RLock()  # one writer at a time on the connection
        self._pending_lock = threading.Lock()
        self._pending: List[_Slot] = []

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.path, self.busy_timeout, self.create, self.sync)
        return self._conn

    def open(self) -> "Ledger":
        """Connect (and migrate) now, so that errors surface at a known point."""
        with self._lock:
            self._connection()
        return self

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ---- writing records (the milter) ------------------------------------------------------

    def record(self, record: MessageRecord) -> str:
        """Store a record: "ledger" when committed, "journal" when kept aside, "lost" if neither.

        Never raises: the milter must answer Postfix whatever happens to accounting. Group
        commit: records arriving while another thread commits wait for the write lock, and the
        first of them to get it commits them all in one transaction (one fsync), so concurrent
        SMTP sessions share the cost of durability instead of queueing behind one fsync each.
        """
        slot = _Slot(record)
        with self._pending_lock:
            self._pending.append(slot)
        with self._lock:
            if slot.result is None:
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                self._commit_batch(batch)
        return slot.result or "lost"

    def _commit_batch(self, batch: List["_Slot"]) -> None:
        try:
            replayed = self.write([slot.record for slot in batch])
            if replayed:
                log.warning("ledger %s writable again: %d journaled records replayed",
                            self.path, replayed)
            for slot in batch:
                slot.result = "ledger"
            return
        except (sqlite3.Error, OSError, LedgerError) as error:
            self._drop_connection()
            reason = error
        for slot in batch:
            slot.result = self._keep_aside(slot.record, reason)

    def _keep_aside(self, record: MessageRecord, reason: Exception) -> str:
        try:
            self.journal.append(record)
            log.error("queue id %s: cannot write ledger %s (%s); record kept in journal %s",
                      record.queue_id, self.path, reason, self.journal.path)
            return "journal"
        except OSError as error:
            log.critical("queue id %s: cannot write ledger %s (%s) nor journal %s (%s); "
                         "record: %s", record.queue_id, self.path, reason,
                         self.journal.path, error.strerror or error, record.to_json())
            return "lost"

    def write(self, records: Sequence[MessageRecord]) -> int:
        """Commit records, replaying the journal first when it has any; returns how many replayed.

        Raises sqlite3.Error, OSError or LedgerError; nothing is committed then.
        """
        with self._lock:
            conn = self._connection()
            if not self.journal.pending():
                self._insert(conn, records)
                return 0
            replayed: List[int] = []

            def apply(old: List[MessageRecord]) -> None:
                self._insert(conn, [*old, *records])
                replayed.append(len(old))

            self.journal.replay(apply)
            return replayed[0] if replayed else 0

    def replay_journal(self) -> int:
        """Move journaled records into the ledger now (the command does this before reading)."""
        return self.write([]) if self.journal.pending() else 0

    def _insert(self, conn: sqlite3.Connection, records: Iterable[MessageRecord]) -> None:
        with immediate(conn):
            for record in records:
                if self._complete_adopted(conn, record):
                    continue
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO messages (queue_id, received_at, sender, size,"
                    " client_addr, client_name, helo) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (record.queue_id, record.received_at, record.sender, record.size,
                     record.client_addr, record.client_name, record.helo))
                if cursor.rowcount == 0:
                    continue  # already there: a journal replayed twice
                conn.executemany(
                    "INSERT INTO message_domains (message_id, domain, recipients, state,"
                    " changed_at) VALUES (?, ?, ?, 'held', ?)",
                    [(cursor.lastrowid, domain, "\n".join(rcpts), record.received_at)
                     for domain, rcpts in record.recipients.items()])

    @staticmethod
    def _complete_adopted(conn: sqlite3.Connection, record: MessageRecord) -> bool:
        """A milter record arriving after reconciliation adopted the same message from the queue
        (the milter's write waited in the journal meanwhile): the adopted row takes the
        milter's details instead of a second row being added. True when that happened."""
        found = conn.execute(
            "SELECT m.id FROM messages m JOIN message_domains md ON md.message_id = m.id"
            " WHERE m.queue_id = ? AND md.adopted_at IS NOT NULL"
            " AND ABS(m.received_at - ?) < ? LIMIT 1",
            (record.queue_id, record.received_at, ADOPTED_MATCH_SECONDS)).fetchone()
        if found is None:
            return False
        message_id = found[0]
        conn.execute(
            "UPDATE messages SET received_at = ?, sender = ?, size = ?, client_addr = ?,"
            " client_name = ?, helo = ? WHERE id = ?",
            (record.received_at, record.sender, record.size, record.client_addr,
             record.client_name, record.helo, message_id))
        conn.execute("UPDATE message_domains SET adopted_at = NULL WHERE message_id = ?",
                     (message_id,))
        conn.executemany(
            "INSERT OR IGNORE INTO message_domains (message_id, domain, recipients, state,"
            " changed_at) VALUES (?, ?, ?, 'held', ?)",
            [(message_id, domain, "\n".join(rcpts), record.received_at)
             for domain, rcpts in record.recipients.items()])
        return True

    def _drop_connection(self) -> None:
        """After a failure start afresh next time (the folder may come back, a lock go away)."""
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error as error:
                log.debug("closing the ledger after a failure: %s", error)
            self._conn = None

    # ---- reading and reconciling (the command) ---------------------------------------------

    def held_rows(self, domain: Optional[str] = None) -> List[HeldRow]:
        query = ("SELECT md.message_id, m.queue_id, md.domain, m.received_at,"
                 " m.seen_in_queue_at IS NOT NULL FROM message_domains md"
                 " JOIN messages m ON m.id = md.message_id WHERE md.state = 'held'")
        args: Tuple[str, ...] = ()
        if domain is not None:
            query += " AND md.domain = ?"
            args = (domain,)
        with self._lock:
            rows = self._connection().execute(query, args).fetchall()
        return [HeldRow._make(row) for row in rows]

    def apply_reconciliation(self, gone: Sequence[Tuple[int, str]], seen: Sequence[int],
                             now: float, flush_id: Optional[int] = None,
                             sizes: Sequence[Tuple[int, int]] = ()) -> None:
        """Mark (message, domain) rows as flushed (during a flush) or left, note sightings, and
        record the queue's exact size (bytes) of messages seen for the first time."""
        if not gone and not seen and not sizes:
            return
        state = FLUSHED if flush_id is not None else LEFT
        with self._lock:
            conn = self._connection()
            with immediate(conn):
                conn.executemany(
                    "UPDATE message_domains SET state = ?, changed_at = ?, flush_id = ?"
                    " WHERE message_id = ? AND domain = ? AND state = 'held'",
                    [(state, now, flush_id, message_id, domain) for message_id, domain in gone])
                conn.executemany(
                    "UPDATE messages SET seen_in_queue_at = ? WHERE id = ?"
                    " AND seen_in_queue_at IS NULL", [(now, message_id) for message_id in seen])
                conn.executemany("UPDATE messages SET size = ? WHERE id = ?",
                                 [(size, message_id) for message_id, size in sizes])

    def summaries(self) -> Dict[str, DomainSummary]:
        """Held messages, bytes, oldest arrival and adopted messages per domain (one indexed
        aggregate query)."""
        with self._lock:
            rows = self._connection().execute(
                "SELECT md.domain, COUNT(*), COALESCE(SUM(m.size), 0), MIN(m.received_at),"
                " COUNT(md.adopted_at)"
                " FROM message_domains md JOIN messages m ON m.id = md.message_id"
                " WHERE md.state = 'held' GROUP BY md.domain").fetchall()
        return {r[0]: DomainSummary(r[0], r[1], r[2], r[3], r[4]) for r in rows}

    def known_rows(self, queue_ids: Iterable[str]) -> List[KnownRow]:
        """Every row, in any state, of the messages with these queue ids (reconciliation asks
        before adopting queued messages)."""
        ids = list(dict.fromkeys(queue_ids))
        found: List[KnownRow] = []
        with self._lock:
            conn = self._connection()
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ", ".join("?" * len(chunk))
                found.extend(KnownRow._make(row) for row in conn.execute(
                    "SELECT m.id, m.queue_id, m.received_at, md.domain FROM messages m"
                    " LEFT JOIN message_domains md ON md.message_id = m.id"
                    f" WHERE m.queue_id IN ({marks})", chunk))
        return found

    def adopt(self, adoptions: Sequence[Tuple[Optional[int], MessageRecord]], now: float) -> None:
        """Store queued messages (or some of their domains) the milter never recorded, as held,
        seen in the queue now and marked adopted. ``(message_id, record)``: message_id is the
        ledger's message the domains belong to, or None to add the message too."""
        if not adoptions:
            return
        with self._lock:
            conn = self._connection()
            with immediate(conn):
                for message_id, record in adoptions:
                    if message_id is None:
                        conn.execute(
                            "INSERT OR IGNORE INTO messages (queue_id, received_at, sender,"
                            " size, seen_in_queue_at) VALUES (?, ?, ?, ?, ?)",
                            (record.queue_id, record.received_at, record.sender, record.size,
                             now))
                        message_id = conn.execute(
                            "SELECT id FROM messages WHERE queue_id = ? AND received_at = ?",
                            (record.queue_id, record.received_at)).fetchone()[0]
                    conn.executemany(
                        "INSERT OR IGNORE INTO message_domains (message_id, domain, recipients,"
                        " state, changed_at, adopted_at) VALUES (?, ?, ?, 'held', ?, ?)",
                        [(message_id, domain, "\n".join(rcpts), now, now)
                         for domain, rcpts in record.recipients.items()])

    def count_flushed(self, flush_id: int) -> int:
        with self._lock:
            return self._connection().execute(
                "SELECT COUNT(*) FROM message_domains WHERE flush_id = ?",
                (flush_id,)).fetchone()[0]

    # ---- flush events ----------------------------------------------------------------------

    def start_flush(self, domain: str, trigger: str, forced: bool, primary_state: str,
                    held_before: int, now: float) -> int:
        with self._lock:
            cursor = self._connection().execute(
                "INSERT INTO flush_events (domain, trigger, forced, primary_state, started_at,"
                " held_before) VALUES (?, ?, ?, ?, ?, ?)",
                (domain, trigger, int(forced), primary_state, now, held_before))
            assert cursor.lastrowid is not None  # an INSERT always sets it
            return cursor.lastrowid

    def finish_flush(self, flush_id: int, delivered: int, remaining: int, result: str,
                     detail: str, now: float) -> None:
        with self._lock:
            self._connection().execute(
                "UPDATE flush_events SET finished_at = ?, delivered = ?, remaining = ?,"
                " result = ?, detail = ? WHERE id = ?",
                (now, delivered, remaining, result, detail, flush_id))

    def unlearned_flushes(self, since: float) -> List[Tuple[int, str, float, str]]:
        """(id, domain, started_at, result) of the flushes that started after ``since`` (Unix
        seconds), ended complete or partial, and were not learned from yet; oldest first."""
        with self._lock:
            return [(row[0], row[1], row[2], row[3]) for row in self._connection().execute(
                "SELECT id, domain, started_at, result FROM flush_events"
                " WHERE learned_at IS NULL AND result IN ('complete', 'partial')"
                " AND started_at > ? ORDER BY id", (since,)).fetchall()]

    def left_since(self, domain: str, since: float) -> Dict[str, List[str]]:
        """Queue id -> every recipient the ledger recorded (all its domains) of the messages
        of ``domain`` that left the queue after ``since`` (Unix seconds)."""
        found: Dict[str, List[str]] = {}
        with self._lock:
            rows = self._connection().execute(
                "SELECT m.queue_id, every.recipients FROM message_domains md"
                " JOIN messages m ON m.id = md.message_id"
                " JOIN message_domains every ON every.message_id = md.message_id"
                " WHERE md.domain = ? AND md.state != 'held' AND md.changed_at >= ?",
                (domain, since)).fetchall()
        for queue_id, recipients in rows:
            found.setdefault(queue_id, []).extend(r for r in recipients.split("\n") if r)
        return found

    def mark_learned(self, flush_id: int, now: float) -> None:
        with self._lock:
            self._connection().execute(
                "UPDATE flush_events SET learned_at = ? WHERE id = ?", (now, flush_id))

    def last_flushes(self) -> Dict[str, FlushEvent]:
        """The latest flush event of every domain that had one."""
        with self._lock:
            rows = self._connection().execute(
                "SELECT id, domain, trigger, forced, primary_state, started_at, finished_at,"
                " held_before, delivered, remaining, result, detail FROM flush_events"
                " WHERE id IN (SELECT MAX(id) FROM flush_events GROUP BY domain)").fetchall()
        return {r[1]: FlushEvent(r[0], r[1], r[2], bool(r[3]), *r[4:]) for r in rows}

    def flush_event(self, flush_id: int) -> Optional[FlushEvent]:
        with self._lock:
            row = self._connection().execute(
                "SELECT id, domain, trigger, forced, primary_state, started_at, finished_at,"
                " held_before, delivered, remaining, result, detail FROM flush_events"
                " WHERE id = ?", (flush_id,)).fetchone()
        return FlushEvent(row[0], row[1], row[2], bool(row[3]), *row[4:]) if row else None

    # ---- notification state ----------------------------------------------------------------

    def notify_states(self) -> Dict[str, Tuple[Optional[float], Optional[float], Optional[float]]]:
        """domain -> (held_sent_at, last_sent_at, bounce_warned_at), Unix seconds or None."""
        with self._lock:
            rows = self._connection().execute(
                "SELECT domain, held_sent_at, last_sent_at, bounce_warned_at"
                " FROM notify_state").fetchall()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def save_notify_states(
            self, states: Dict[str, Tuple[Optional[float], Optional[float], Optional[float]]]
    ) -> None:
        """Replace the whole notification state in one transaction."""
        with self._lock:
            conn = self._connection()
            with immediate(conn):
                conn.execute("DELETE FROM notify_state")
                conn.executemany(
                    "INSERT INTO notify_state (domain, held_sent_at, last_sent_at,"
                    " bounce_warned_at) VALUES (?, ?, ?, ?)",
                    [(domain, *values) for domain, values in sorted(states.items())])
