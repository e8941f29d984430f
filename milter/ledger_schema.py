"""The ledger's schema: the migrations in order, and opening a connection with it applied.

The schema is versioned with ``PRAGMA user_version``; ``connect`` opens a file in WAL mode (the
command's readers never block the milter's writer) with the ``[milter] ledger_sync`` level of
``synchronous`` and migrates it. milter/ledger.py reads and writes the rows.
"""
from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from typing import Iterator, List, Tuple


class LedgerError(Exception):
    """The ledger cannot be used as asked (newer schema, missing file); worded for the admin."""


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
    # 6: when the callout cache learned from a flush's deliveries (admin.flush_learning); the
    # fleet hears of a flush's own changes only, not of this local bookkeeping
    """
    ALTER TABLE flush_events ADD COLUMN learned_at REAL;
    DROP TRIGGER fleet_outbox_flush_update;
    CREATE TRIGGER fleet_outbox_flush_update
        AFTER UPDATE OF finished_at, delivered, remaining, result, detail ON flush_events
        WHEN (SELECT enabled FROM fleet_push WHERE id = 1)
        BEGIN INSERT INTO fleet_outbox (kind, ref) VALUES ('flush', NEW.id); END;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION, one transaction per step; returns the old version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise LedgerError(f"ledger schema version {version} is newer than this backupmx "
                          f"understands ({SCHEMA_VERSION}); upgrade backupmx")
    for target in range(version + 1, SCHEMA_VERSION + 1):
        with immediate(conn):
            # Another process may have migrated while we waited for the write lock.
            if conn.execute("PRAGMA user_version").fetchone()[0] >= target:
                conn.execute("ROLLBACK")
                continue
            for statement in _statements(MIGRATIONS[target - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
    return version


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on an autocommit connection (``isolation_level=None``).

    ``BEGIN IMMEDIATE`` takes SQLite's write lock at once, so a transaction that reads and then
    writes never fails with SQLITE_BUSY halfway (the milter, the command and the fleet push
    write the same file). COMMIT when the block ends, ROLLBACK when it raises (the exception
    goes on). A block may end the transaction itself with ROLLBACK (nothing is committed then).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        if conn.in_transaction:
            conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


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
