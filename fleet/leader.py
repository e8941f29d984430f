"""One host of the fleet at a time sends the notifications: a PostgreSQL advisory lock.

``leader(config)`` opens its own connection to the fleet store and tries the session-level
advisory lock ``pg_try_advisory_lock`` (PostgreSQL's explicit locking, section 13.3.5): the host
that gets it may send, the others must not. The lock lives as long as the connection: it is
released when the block ends, and by the server when the holder dies (its connection closes), so
a dead leader never silences the fleet.

Never losing a notice matters more than sending it once: without [fleet] every host is its own
leader, and when the store cannot be reached each host sends (a duplicate at worst).
"""
from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from typing import Iterator

from backupmx.common.config import Config
from backupmx.fleet.store import StoreError, connect, driver, one_line

log = logging.getLogger("backupmx.fleet")
LEADER_CONNECT_TIMEOUT = 3


def lock_key(name: str) -> int:
    """The advisory lock's key for ``name``: a signed 64-bit integer from its SHA-256."""
    digest = hashlib.sha256(f"backupmx.fleet.leader.{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def leader(config: Config, name: str = "notify") -> Iterator[bool]:
    """Yields True when this host may send (it holds the fleet's lock ``name`` until the block
    ends), False when another live host holds it. True without [fleet], and True (with a
    warning logged) when the store cannot be asked. Never raises for the store's sake.

    Usage: ``with leader(config) as may_send: if may_send: send(...)``."""
    if config.fleet is None:
        yield True
        return
    try:
        psycopg = driver()
        conn = connect(config.fleet, autocommit=True, connect_timeout=LEADER_CONNECT_TIMEOUT,
                       statement_timeout=LEADER_CONNECT_TIMEOUT)
    except StoreError as error:
        log.warning("%s: sending notifications from this host", error)
        yield True
        return
    try:
        try:
            held = bool(conn.execute("SELECT pg_try_advisory_lock(%s)",
                                     (lock_key(name),)).fetchone()[0])
        except psycopg.Error as error:
            log.warning("fleet store: %s: sending notifications from this host",
                        one_line(error))
            held = True
        yield held
    finally:
        conn.close()  # ends the session: the server releases the lock
