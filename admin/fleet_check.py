"""``backupmx check``'s lines about [fleet]: the driver, the password file, the store and its
schema, and this host's last push. No lines without [fleet]."""
from __future__ import annotations

import os
import sqlite3
import stat
import time
from typing import Callable, List

from backupmx.admin.setup_checks import FAIL, OK, WARN, Result
from backupmx.common.config import Config, FleetConfig
from backupmx.fleet import outbox
from backupmx.fleet.schema import SCHEMA_VERSION, current_version
from backupmx.fleet.store import StoreError, connect, driver, one_line
from backupmx.fleet.view import STALE_AFTER_INTERVALS
from backupmx.milter.ledger import LedgerError
from backupmx.milter.ledger import connect as ledger_connect


def check_password_file(fleet: FleetConfig) -> List[Result]:
    """Warn when the password file can be read by every user or written by others."""
    if not fleet.password_file:
        return []
    path = fleet.password_file
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        return [Result("fleet password_file", FAIL, f"{path}: {error.strerror}",
                       f"write the database password on the first line of {path}")]
    if mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP):
        return [Result("fleet password_file", WARN,
                       f"{path} is readable or writable by other users "
                       f"({stat.filemode(mode)})", f"chmod 0640 {path}")]
    return [Result("fleet password_file", OK, f"{path} is private ({stat.filemode(mode)})")]


def check_store(fleet: FleetConfig) -> List[Result]:
    """The store answers and its schema is the one this backupmx writes."""
    try:
        psycopg = driver()
    except StoreError as error:
        return [Result("fleet driver", FAIL, str(error), "apt install python3-psycopg")]
    try:
        pg = connect(fleet)
    except StoreError as error:
        return [Result("fleet store", FAIL, str(error),
                       "check [fleet] database and password_file, and that PostgreSQL accepts "
                       "this host (pg_hba.conf)")]
    try:
        version = current_version(pg)
    except psycopg.Error as error:
        return [Result("fleet store", FAIL, f"fleet store: {one_line(error)}", "")]
    finally:
        pg.close()
    if version < SCHEMA_VERSION:
        return [Result("fleet store", FAIL, f"schema version {version}, this backupmx needs "
                       f"{SCHEMA_VERSION}", "backupmx fleet init")]
    if version > SCHEMA_VERSION:
        return [Result("fleet store", FAIL, f"schema version {version} is newer than this "
                       f"backupmx understands ({SCHEMA_VERSION})", "upgrade backupmx here")]
    return [Result("fleet store", OK, f"reachable, schema version {version}")]


def check_last_push(config: Config, fleet: FleetConfig,
                    clock: Callable[[], float] = time.time) -> List[Result]:
    """This host pushed within three push intervals (as its ledger remembers)."""
    try:
        conn = ledger_connect(config.milter.ledger, create=False)
        try:
            state = outbox.state(conn)
        finally:
            conn.close()
    except (LedgerError, sqlite3.Error) as error:
        return [Result("fleet push", WARN, f"push state unknown: {error}", "")]
    fix = ("make sure backupmx-flush.timer runs (it pushes), or run backupmx fleet push; its "
           "period should be [fleet] push_interval")
    if state.last_success_at is None:
        detail = f": {state.last_error}" if state.last_error else ""
        return [Result("fleet push", WARN, f"this host never pushed{detail}", fix)]
    age = clock() - state.last_success_at
    if age > STALE_AFTER_INTERVALS * fleet.push_interval:
        detail = f"; last error: {state.last_error}" if state.last_error else ""
        return [Result("fleet push", WARN, f"last push {int(age)} s ago, "
                       f"{state.pending_changes} changes pending{detail}", fix)]
    return [Result("fleet push", OK, f"last push {int(age)} s ago, "
                   f"{state.pending_changes} changes pending")]


def check_fleet(config: Config) -> List[Result]:
    """Every [fleet] line of ``backupmx check`` (none without [fleet])."""
    if config.fleet is None:
        return []
    return [*check_password_file(config.fleet), *check_store(config.fleet),
            *check_last_push(config, config.fleet)]
