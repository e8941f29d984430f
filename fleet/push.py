"""One push: this host's outbox and domain states into the fleet store, and retention.

Called by ``backupmx fleet push`` and at the end of ``backupmx flush --auto`` (in the command's
own process: never on the SMTP path, never in the milter). Each batch is one PostgreSQL
transaction that upserts the rows keyed by ``(host_id, local_id)`` (COPY into temporary tables,
then ``INSERT ... ON CONFLICT DO UPDATE``) and moves this host's watermark; only after it commits
are the batch's outbox rows dropped locally. A push cut off anywhere therefore repeats at most one
batch, which the upserts make harmless: nothing is lost, nothing counted twice. When the store's
watermark is behind what the ledger already dropped (a new or restored database, a new host_id),
the whole ledger is queued again.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Tuple

from backupmx.common import version
from backupmx.fleet import outbox
from backupmx.fleet.outbox import Batch
from backupmx.fleet.schema import require_current
from backupmx.fleet.store import StoreError, driver, one_line
from backupmx.fleet.view import STALE_AFTER_INTERVALS

BATCH_SIZE = 5000

log = logging.getLogger("backupmx.fleet")


@dataclass(frozen=True)
class DomainState:
    """A relay domain as this host sees it now (pushed to ``domain_states``)."""

    domain: str
    primary_state: str  # up | down | unknown
    primary_host: str
    held_messages: int
    held_bytes: int
    oldest_received_at: Optional[float]


@dataclass(frozen=True)
class PushResult:
    changes: int  # outbox rows pushed
    messages: int  # message rows upserted
    domain_rows: int
    flush_events: int
    batches: int
    resynced: bool
    pruned_local: int
    pruned_store: int
    seconds: float

    def describe(self) -> str:
        text = (f"fleet push: {self.changes} changes ({self.messages} messages, "
                f"{self.domain_rows} domain rows, {self.flush_events} flush events) in "
                f"{self.batches} batches, {self.seconds:.1f} s")
        if self.resynced:
            text += "; the store had lost this host's rows: whole ledger pushed again"
        if self.pruned_local or self.pruned_store:
            text += (f"; retention pruned {self.pruned_local} messages here, "
                     f"{self.pruned_store} in the store")
        return text


_TEMP_TABLES = """
CREATE TEMP TABLE IF NOT EXISTS incoming_messages (LIKE messages) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS incoming_domains (LIKE message_domains) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS incoming_flushes (LIKE flush_events) ON COMMIT DELETE ROWS
"""

_UPSERT_MESSAGES = """
INSERT INTO messages SELECT * FROM incoming_messages
ON CONFLICT (host_id, local_id) DO UPDATE SET queue_id = EXCLUDED.queue_id,
    received_at = EXCLUDED.received_at, sender = EXCLUDED.sender, size = EXCLUDED.size,
    client_addr = EXCLUDED.client_addr, client_name = EXCLUDED.client_name,
    helo = EXCLUDED.helo
"""
_UPSERT_DOMAINS = """
INSERT INTO message_domains SELECT * FROM incoming_domains
ON CONFLICT (host_id, local_id, domain) DO UPDATE SET recipients = EXCLUDED.recipients,
    state = EXCLUDED.state, changed_at = EXCLUDED.changed_at, flush_id = EXCLUDED.flush_id,
    adopted_at = EXCLUDED.adopted_at
"""
_UPSERT_FLUSHES = """
INSERT INTO flush_events SELECT * FROM incoming_flushes
ON CONFLICT (host_id, local_id) DO UPDATE SET domain = EXCLUDED.domain,
    trigger = EXCLUDED.trigger, forced = EXCLUDED.forced,
    primary_state = EXCLUDED.primary_state, started_at = EXCLUDED.started_at,
    finished_at = EXCLUDED.finished_at, held_before = EXCLUDED.held_before,
    delivered = EXCLUDED.delivered, remaining = EXCLUDED.remaining, result = EXCLUDED.result,
    detail = EXCLUDED.detail
"""
# Messages none of whose relay domains is held any more, last changed before the cutoff.
_PRUNE_STORE = """
DELETE FROM messages m USING (
    SELECT host_id, local_id FROM message_domains GROUP BY host_id, local_id
    HAVING bool_and(state <> 'held') AND max(coalesce(changed_at, 0)) < %s) old
WHERE m.host_id = old.host_id AND m.local_id = old.local_id
"""


def register(pg: Any, host_id: str, push_interval: float, token: str) -> int:
    """Make sure the host has its row; returns the store's watermark for it.

    The row also names the ledger that pushes under this host_id (``token``). Another ledger's
    rows, silent for over three of their push intervals, are dropped: this host has a new
    ledger whose ids start again (it then pushes everything). Still pushing: StoreError, since
    two hosts share one host_id and their rows would overwrite each other."""
    with pg.transaction():
        pg.execute("INSERT INTO hosts (host_id, first_seen_at, push_interval, version,"
                   " ledger_token) VALUES (%s, extract(epoch FROM now()), %s, %s, %s)"
                   " ON CONFLICT (host_id) DO NOTHING",
                   (host_id, push_interval, version(), token))
        watermark, owner, silent, interval = pg.execute(
            "SELECT watermark, ledger_token, extract(epoch FROM now()) - last_push_at,"
            " push_interval FROM hosts WHERE host_id = %s FOR UPDATE", (host_id,)).fetchone()
        if owner != token:
            if owner and silent is not None and silent <= STALE_AFTER_INTERVALS * interval:
                raise StoreError(f"fleet store: host_id {host_id} is in use by another ledger "
                                 f"that pushed {int(silent)} s ago (two hosts with one host_id?):"
                                 f" set [fleet] host_id")
            for table in ("messages", "flush_events", "domain_states"):
                pg.execute(f"DELETE FROM {table} WHERE host_id = %s", (host_id,))
            watermark = 0
        pg.execute("UPDATE hosts SET push_interval = %s, version = %s, ledger_token = %s,"
                   " watermark = %s WHERE host_id = %s",
                   (push_interval, version(), token, watermark, host_id))
        return int(watermark)


def _copy(cursor: Any, table: str, rows: List[tuple]) -> None:
    if not rows:
        return
    with cursor.copy(f"COPY {table} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def store_batch(pg: Any, host_id: str, batch: Batch) -> None:
    """One transaction: the batch's rows upserted and the host's watermark moved to its end."""
    with pg.transaction(), pg.cursor() as cursor:
        _copy(cursor, "incoming_messages", [(host_id, *row) for row in batch.messages])
        _copy(cursor, "incoming_domains", [(host_id, *row) for row in batch.domains])
        _copy(cursor, "incoming_flushes",
              [(host_id, r[0], r[1], r[2], bool(r[3]), *r[4:]) for r in batch.flushes])
        if batch.messages:
            cursor.execute(_UPSERT_MESSAGES)
        if batch.domains:
            cursor.execute(_UPSERT_DOMAINS)
        if batch.flushes:
            cursor.execute(_UPSERT_FLUSHES)
        cursor.execute("UPDATE hosts SET watermark = GREATEST(watermark, %s) WHERE host_id = %s",
                       (batch.last_seq, host_id))


def store_domain_states(pg: Any, host_id: str, states: List[DomainState],
                        pending: int, lag: float) -> None:
    """Replace the host's domain states and stamp its push (the server's clock)."""
    with pg.transaction():
        pg.execute("DELETE FROM domain_states WHERE host_id = %s", (host_id,))
        with pg.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO domain_states (host_id, domain, primary_state, primary_host,"
                " held_messages, held_bytes, oldest_received_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, extract(epoch FROM now()))",
                [(host_id, s.domain, s.primary_state, s.primary_host, s.held_messages,
                  s.held_bytes, s.oldest_received_at) for s in states])
        pg.execute("UPDATE hosts SET last_push_at = extract(epoch FROM now()),"
                   " pending_changes = %s, lag_seconds = %s WHERE host_id = %s",
                   (pending, lag, host_id))


def domain_states(conn: sqlite3.Connection, primaries: Mapping[str, Tuple[str, str]],
                  ) -> List[DomainState]:
    """Every configured domain (primary state and host from ``primaries``) and every domain
    with held mail in the ledger, with its held counts."""
    held = outbox.domain_summaries(conn)
    names = sorted(set(primaries) | set(held))
    states = []
    for domain in names:
        primary, primary_host = primaries.get(domain, ("unknown", ""))
        count, size, oldest = held.get(domain, (0, 0, None))
        states.append(DomainState(domain, primary, primary_host, count, size, oldest))
    return states


def push(pg: Any, conn: sqlite3.Connection, host_id: str, push_interval: float,
         retention: float, primaries: Mapping[str, Tuple[str, str]],
         clock: Callable[[], float] = time.time, batch_size: int = BATCH_SIZE) -> PushResult:
    """Push everything pending; StoreError (the store) or sqlite3.Error (the ledger).

    ``primaries``: domain -> (primary state, primary host) as probed by the caller."""
    psycopg = driver()
    started = time.monotonic()
    try:
        require_current(pg)
        pg.commit()
        watermark = register(pg, host_id, push_interval, outbox.state(conn).token)
        outbox.enable(conn)
        local = outbox.state(conn)
        resynced = watermark < local.pushed_seq
        if resynced:
            outbox.requeue_all(conn)
        elif watermark > local.pushed_seq:  # stored, but the last push died before dropping
            outbox.acknowledge(conn, watermark, clock())
        pg.execute(_TEMP_TABLES)
        pg.commit()
        counts = [0, 0, 0, 0, 0]
        for batch in outbox.batches(conn, 0, batch_size):  # what is left is all unpushed
            store_batch(pg, host_id, batch)
            outbox.acknowledge(conn, batch.last_seq, clock())
            for index, value in enumerate((batch.changes, len(batch.messages),
                                           len(batch.domains), len(batch.flushes), 1)):
                counts[index] += value
        cutoff = clock() - retention
        pruned_local = outbox.prune(conn, cutoff)
        with pg.transaction():
            pruned_store = pg.execute(_PRUNE_STORE, (cutoff,)).rowcount
        after = outbox.state(conn)
        store_domain_states(pg, host_id, domain_states(conn, primaries),
                            after.pending_changes, after.lag_seconds(clock()))
        outbox.acknowledge(conn, after.pushed_seq, clock())  # stamps the successful push
    except psycopg.Error as error:
        message = f"fleet store: {one_line(error)}"
        _note_failure(conn, message, clock())
        raise StoreError(message) from None
    except StoreError as error:
        _note_failure(conn, str(error), clock())
        raise
    changes, messages, domain_rows, flushes, batch_count = counts
    return PushResult(changes, messages, domain_rows, flushes, batch_count, resynced,
                      pruned_local, max(0, pruned_store), time.monotonic() - started)


def _note_failure(conn: sqlite3.Connection, message: str, now: float) -> None:
    try:
        outbox.record_failure(conn, message, now)
    except sqlite3.Error as error:  # the caller reports the push's failure; this one is logged
        log.warning("cannot note the failed push in the ledger: %s", error)
