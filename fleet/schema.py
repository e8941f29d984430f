"""The fleet store's schema in PostgreSQL, created and upgraded by ``backupmx fleet init``.

Times are seconds since the epoch (double precision), as in the ledger. Every row a host pushes
is keyed by ``(host_id, local_id)``: Postfix queue ids are unique only per host, and the ledger's
own ids are what the host's outbox names. Tables:

- ``hosts``: one row per backup MX: its push interval, its last push (the server's clock), the
  watermark (last outbox sequence number stored), its pending changes and their age at that
  push, and the token of the ledger that pushes under this host_id.
- ``messages`` / ``message_domains``: the ledger's rows of every host (per relay domain: the
  recipients, state held/flushed/left, when it changed).
- ``domain_states``: each relay domain as each host saw it at its last push: primary state,
  held messages and bytes, oldest held message.
- ``flush_events``: each host's flushes (as in its ledger), ``request_id`` when asked for by a
  fleet flush request.
- ``flush_requests`` / ``flush_request_results``: ``backupmx flush DOMAIN --fleet`` and what each
  host did about it.

The version lives in ``backupmx_schema``; migrations run in order, each in a transaction, under an
advisory lock so two ``fleet init`` runs never race. Never edit a shipped migration: append.
"""
from __future__ import annotations

from typing import Any, Tuple

from backupmx.fleet.store import StoreError, driver, one_line

MIGRATION_LOCK = 0x6261636B75706D78  # "backupmx" as a 64-bit advisory lock key

MIGRATIONS: Tuple[str, ...] = (
    # 1: hosts, their rows, domain states, flushes and flush requests.
    """
    CREATE TABLE hosts (
        host_id text PRIMARY KEY,
        first_seen_at double precision NOT NULL,
        last_push_at double precision,
        push_interval double precision NOT NULL,
        watermark bigint NOT NULL DEFAULT 0,
        pending_changes bigint NOT NULL DEFAULT 0,
        lag_seconds double precision NOT NULL DEFAULT 0,
        version text NOT NULL DEFAULT '',
        ledger_token text NOT NULL DEFAULT ''
    );
    CREATE TABLE messages (
        host_id text NOT NULL REFERENCES hosts ON DELETE CASCADE,
        local_id bigint NOT NULL,
        queue_id text NOT NULL,
        received_at double precision NOT NULL,
        sender text NOT NULL,
        size bigint NOT NULL,
        client_addr text NOT NULL DEFAULT '',
        client_name text NOT NULL DEFAULT '',
        helo text NOT NULL DEFAULT '',
        PRIMARY KEY (host_id, local_id)
    );
    CREATE TABLE message_domains (
        host_id text NOT NULL,
        local_id bigint NOT NULL,
        domain text NOT NULL,
        recipients text NOT NULL,
        state text NOT NULL CHECK (state IN ('held', 'flushed', 'left')),
        changed_at double precision,
        flush_id bigint,
        adopted_at double precision,  -- adopted from Postfix's queue, not recorded by the milter
        PRIMARY KEY (host_id, local_id, domain),
        FOREIGN KEY (host_id, local_id) REFERENCES messages ON DELETE CASCADE
    );
    CREATE INDEX message_domains_held ON message_domains (domain, host_id) WHERE state = 'held';
    CREATE TABLE domain_states (
        host_id text NOT NULL REFERENCES hosts ON DELETE CASCADE,
        domain text NOT NULL,
        primary_state text NOT NULL,
        primary_host text NOT NULL DEFAULT '',
        held_messages bigint NOT NULL,
        held_bytes bigint NOT NULL,
        oldest_received_at double precision,
        updated_at double precision NOT NULL,
        PRIMARY KEY (host_id, domain)
    );
    CREATE TABLE flush_requests (
        id bigserial PRIMARY KEY,
        domain text NOT NULL,
        requested_at double precision NOT NULL,
        requested_by text NOT NULL,
        force boolean NOT NULL DEFAULT false,
        wait_seconds double precision NOT NULL
    );
    CREATE TABLE flush_request_results (
        request_id bigint NOT NULL REFERENCES flush_requests ON DELETE CASCADE,
        host_id text NOT NULL REFERENCES hosts ON DELETE CASCADE,
        finished_at double precision NOT NULL,
        result text NOT NULL,
        held_before bigint,
        delivered bigint,
        remaining bigint,
        flush_id bigint,
        detail text NOT NULL DEFAULT '',
        PRIMARY KEY (request_id, host_id)
    );
    CREATE TABLE flush_events (
        host_id text NOT NULL REFERENCES hosts ON DELETE CASCADE,
        local_id bigint NOT NULL,
        domain text NOT NULL,
        trigger text NOT NULL,
        forced boolean NOT NULL,
        primary_state text NOT NULL,
        started_at double precision NOT NULL,
        finished_at double precision,
        held_before bigint NOT NULL,
        delivered bigint,
        remaining bigint,
        result text NOT NULL,
        detail text NOT NULL DEFAULT '',
        PRIMARY KEY (host_id, local_id)
    );
    CREATE INDEX flush_events_domain ON flush_events (domain, started_at)
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def current_version(conn: Any) -> int:
    """The store's schema version; 0 when ``fleet init`` never ran."""
    row = conn.execute("SELECT to_regclass('backupmx_schema') IS NOT NULL").fetchone()
    if not row[0]:
        return 0
    return int(conn.execute("SELECT version FROM backupmx_schema").fetchone()[0])


def require_current(conn: Any) -> None:
    """StoreError with the fix when the store's schema is missing, older or newer."""
    version = current_version(conn)
    if version < SCHEMA_VERSION:
        raise StoreError(f"fleet store schema version {version}, this backupmx needs "
                         f"{SCHEMA_VERSION}: run backupmx fleet init")
    if version > SCHEMA_VERSION:
        raise StoreError(f"fleet store schema version {version} is newer than this backupmx "
                         f"understands ({SCHEMA_VERSION}): upgrade backupmx on this host")


def migrate(conn: Any) -> Tuple[int, int]:
    """Create or upgrade the schema (a connection not in autocommit); (old, new) versions.

    StoreError when the store's schema is newer than this backupmx, or a statement fails."""
    psycopg = driver()
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS backupmx_schema (version integer NOT NULL)")
            if conn.execute("SELECT count(*) FROM backupmx_schema").fetchone()[0] == 0:
                conn.execute("INSERT INTO backupmx_schema VALUES (0)")
            old = current_version(conn)
            if old > SCHEMA_VERSION:
                raise StoreError(f"fleet store schema version {old} is newer than this "
                                 f"backupmx understands ({SCHEMA_VERSION})")
            for target in range(old + 1, SCHEMA_VERSION + 1):
                conn.execute(MIGRATIONS[target - 1])
                conn.execute("UPDATE backupmx_schema SET version = %s", (target,))
    except psycopg.Error as error:
        raise StoreError(f"fleet store: {one_line(error)}") from None
    return old, SCHEMA_VERSION
