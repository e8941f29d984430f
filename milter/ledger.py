"""The ledger: an SQLite file of every relay message accepted, per recipient domain, and flushes.

WAL mode so the command's readers never block the milter's writer; one transaction per message,
committed before the milter answers end-of-message, so a record of mail Postfix accepted survives
kill -9 of the milter. ``[milter] ledger_sync`` picks SQLite's ``synchronous`` level: ``normal``
(default) survives a crash of the process but may lose the last records on power loss; ``full``
also survives power loss, like Postfix's own fsync'ed queue file, at a measured cost of about a
quarter of the backup MX's message throughput (bench/README-milter.md). The
schema is versioned with ``PRAGMA user_version`` and upgraded by the migrations below, in order.
When a write fails, the record goes to the fallback journal (journal.py) and is replayed on the
next successful write.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from backupmx.milter.envelope import MessageRecord
from backupmx.milter.journal import Journal

log = logging.getLogger("backupmx.milter.ledger")

HELD, FLUSHED, LEFT = "held", "flushed", "left"
STATES = (HELD, FLUSHED, LEFT)

# Each entry upgrades the schema by one version; never edit one that has shipped, append.
MIGRATIONS: Tuple[str, ...] = (
    # 1: messages, one row per (message, relay domain), flush events.
    """
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        queue_id TEXT NOT NULL,
        received_at REAL NOT NULL,
        sender TEXT NOT NULL,
        size INTEGER NOT NULL,
        client_addr TEXT NOT NULL DEFAULT '',
        client_name TEXT NOT NULL DEFAULT '',
        helo TEXT NOT NULL DEFAULT '',
        UNIQUE (queue_id, received_at)
    );
    CREATE TABLE flush_events (
        id INTEGER PRIMARY KEY,
        domain TEXT NOT NULL,
        trigger TEXT NOT NULL,
        forced INTEGER NOT NULL DEFAULT 0,
        primary_state TEXT NOT NULL DEFAULT 'unknown',
        started_at REAL NOT NULL,
        finished_at REAL,
        held_before INTEGER NOT NULL,
        delivered INTEGER,
        remaining INTEGER,
        result TEXT NOT NULL DEFAULT 'running',
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE message_domains (
        message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        domain TEXT NOT NULL,
        recipients TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'flushed', 'left')),
        changed_at REAL,
        flush_id INTEGER REFERENCES flush_events(id),
        PRIMARY KEY (message_id, domain)
    ) WITHOUT ROWID;
    CREATE INDEX message_domains_state ON message_domains (state, domain);
    """,
    # 2: when reconciliation first saw the message in the queue: a row seen there once can be
    # declared gone as soon as it is missing; one never seen gets a grace period (the milter
    # records at end-of-message, a moment before Postfix commits the queue file).
    """
    ALTER TABLE messages ADD COLUMN seen_in_queue_at REAL;
    CREATE INDEX flush_events_domain ON flush_events (domain, id);
    """,
    # 3: rows adopted from Postfix's queue by reconciliation, because the milter never recorded
    # them (milter down or restarting, a session libmilter ended early): when. NULL: recorded
    # by the milter. The index finds a queued message's rows by its queue id.
    """
    ALTER TABLE message_domains ADD COLUMN adopted_at REAL;
    CREATE INDEX messages_queue_id ON messages (queue_id);
    """,
    # 4: what `[notify]` last sent per domain (admin/notify_events.py), so that each event is
    # sent once across `backupmx flush --auto` runs.
    """
    CREATE TABLE notify_state (
        domain TEXT PRIMARY KEY,
        held_sent_at REAL,
        last_sent_at REAL,
        bounce_warned_at REAL
    );
    """,
    # 5 (fleet): the outbox of changes to push to the fleet store (backupmx.fleet). Triggers add
    # one row per new (message, domain) row, per change of its state (or adoption) and of a
    # message's details, and per flush event written, only while fleet_push.enabled (set by the
    # first push), inside the writer's own transaction: nothing more on the SMTP path than one
    # local INSERT per relay domain of the message. AUTOINCREMENT: sequence
    # numbers are never reused, so the watermark in the fleet store stays meaningful. The token
    # names this ledger in the store: a new ledger (its ids start again) or a second host with
    # the same host_id is told apart from the ledger that pushed before.
    """
    CREATE TABLE fleet_push (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        enabled INTEGER NOT NULL DEFAULT 0,
        pushed_seq INTEGER NOT NULL DEFAULT 0,
        last_attempt_at REAL,
        last_success_at REAL,
        last_error TEXT NOT NULL DEFAULT '',
        token TEXT NOT NULL DEFAULT (lower(hex(randomblob(16))))
    );
    INSERT INTO fleet_push (id) VALUES (1);
    CREATE TABLE fleet_outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ('message', 'flush')),
        ref INTEGER NOT NULL,
        queued_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
    );
    CREATE TRIGGER fleet_outbox_message AFTER INSERT ON message_domains
        WHEN (SELECT enabled FROM fleet_push WHERE id = 1)
        BEGIN INSERT INTO fleet_outbox (kind, ref) VALUES ('message', NEW.message_id); END;
    CREATE TRIGGER fleet_outbox_message_state AFTER UPDATE OF state, adopted_at
        ON message_domains WHEN (SELECT enabled FROM fleet_push WHERE id = 1)
        BEGIN INSERT INTO fleet_outbox (kind, ref) VALUES ('message', NEW.message_id); END;
    CREATE TRIGGER fleet_outbox_message_details AFTER UPDATE OF received_at, sender, size
        ON messages WHEN (SELECT enabled FROM fleet_push WHERE id = 1)
        BEGIN INSERT INTO fleet_outbox (kind, ref) VALUES ('message', NEW.id); END;
    CREATE TRIGGER fleet_outbox_flush AFTER INSERT ON flush_events
        WHEN (SELECT enabled FROM fleet_push WHERE id = 1)
        BEGIN INSERT INTO fleet_outbox (kind, ref) VALUES ('flush', NEW.id); END;
    CREATE TRIGGER fleet_outbox_flush_update AFTER UPDATE ON flush_events
        WHEN (SELECT enabled FROM fleet_push WHERE id = 1)
        BEGIN INSERT INTO fleet_outbox (kind, ref) VALUES ('flush', NEW.id); END;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
#: a milter record and an adopted row of the same queue id this close in time (seconds) are
#: the same message (Postfix reuses a short queue id only much later)
ADOPTED_MATCH_SECONDS = 3600.0


class _Slot:
    """One record waiting for a group commit, and what became of it."""

    __slots__ = ("record", "result")

    def __init__(self, record: MessageRecord) -> None:
        self.record = record
        self.result: Optional[str] = None


class LedgerError(Exception):
    """The ledger cannot be used as asked (newer schema, missing file); worded for the admin."""


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


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION, one transaction per step; returns the old version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise LedgerError(f"ledger schema version {version} is newer than this backupmx "
                          f"understands ({SCHEMA_VERSION}); upgrade backupmx")
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the write lock.
            if conn.execute("PRAGMA user_version").fetchone()[0] >= target:
                conn.execute("ROLLBACK")
                continue
            for statement in _statements(MIGRATIONS[target - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return version


def _statements(script: str) -> List[str]:
    """The statements of a migration script; a ``;`` inside a trigger's BEGIN ... END does not
    end its statement (sqlite3.complete_statement decides)."""
    statements: List[str] = []
    current = ""
    for piece in script.split(";"):
        current += piece + ";"
        if current.strip(" \n;") and sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements


SYNC_LEVELS = {"normal": "NORMAL", "full": "FULL"}


def connect(path: str, busy_timeout: float = 5.0, create: bool = True,
            sync: str = "normal") -> sqlite3.Connection:
    """An autocommit connection in WAL mode with the schema migrated."""
    if not create and not os.path.exists(path):
        raise LedgerError(f"{path}: no ledger yet (does backupmx-milter run with this ledger?)")
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {SYNC_LEVELS[sync]}")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


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
        conn.execute("BEGIN IMMEDIATE")
        try:
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
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

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
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "UPDATE message_domains SET state = ?, changed_at = ?, flush_id = ?"
                    " WHERE message_id = ? AND domain = ? AND state = 'held'",
                    [(state, now, flush_id, message_id, domain) for message_id, domain in gone])
                conn.executemany(
                    "UPDATE messages SET seen_in_queue_at = ? WHERE id = ?"
                    " AND seen_in_queue_at IS NULL", [(now, message_id) for message_id in seen])
                conn.executemany("UPDATE messages SET size = ? WHERE id = ?",
                                 [(size, message_id) for message_id, size in sizes])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

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
            conn.execute("BEGIN IMMEDIATE")
            try:
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
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

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
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM notify_state")
                conn.executemany(
                    "INSERT INTO notify_state (domain, held_sent_at, last_sent_at,"
                    " bounce_warned_at) VALUES (?, ?, ?, ?)",
                    [(domain, *values) for domain, values in sorted(states.items())])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
