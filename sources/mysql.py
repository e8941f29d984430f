"""MySQL / MariaDB source (PyMySQL): the first column of every row of ``query``.

Blocking. The connection (TCP or unix socket) gets what is left of ``timeout`` as PyMySQL's
connect timeout and as its read and write timeouts (each a bound on one wait for the server), and
the deadline is checked between batches of rows, so a server that stops answering is given up
after at most ``timeout`` seconds of silence. The query runs in a read-only session
(``SET SESSION TRANSACTION READ ONLY``) and is read unbuffered (``SSCursor``), ``BATCH`` rows at
a time.
"""
from __future__ import annotations

from typing import Any, List

from backupmx.sources.deadline import Deadline
from backupmx.sources.errors import (DriverMissing, SourceAuthError, SourceError,
                                     SourceQueryError, SourceTimeout, SourceUnreachable)
from backupmx.sources.passwords import read_password_file
from backupmx.sources.settings import MysqlSettings

BATCH = 10_000
_AUTH_CODES = {1044, 1045, 1698, 1251}  # access denied (db, user, plugin), auth method
_CLIENT_CODES_START = 2000  # CR_* client errors: no connection, lost connection


def driver() -> Any:
    """The pymysql module; DriverMissing naming python3-pymysql when it is not installed."""
    try:
        import pymysql
        import pymysql.cursors  # noqa: F401 (SSCursor)
    except ImportError:
        raise DriverMissing("mysql", "pymysql (PyMySQL)", "python3-pymysql") from None
    return pymysql


def fetch(settings: MysqlSettings, timeout: float) -> List[str]:
    """Values of the first column (as stored; NULLs skipped, other types as ``str()``), in
    the query's order.

    Raises SourceUnreachable (no server, connection lost), SourceTimeout, SourceAuthError (access
    denied), SourceQueryError (SQL error, missing table, unknown database), PasswordFileError,
    DriverMissing, SourceError."""
    pymysql = driver()
    where = (f"MySQL {settings.database} on "
             f"{settings.socket or f'{settings.host}:{settings.port}'}")
    deadline = Deadline(timeout, where)
    password = read_password_file(settings.password_file) if settings.password_file else ""
    step = "connecting"
    connection = None
    try:
        budget = deadline.remaining()
        connection = pymysql.connect(
            host=settings.host or "localhost", port=settings.port, unix_socket=settings.socket,
            user=settings.user, password=password, database=settings.database,
            charset="utf8mb4", connect_timeout=budget, read_timeout=budget, write_timeout=budget,
            autocommit=True, init_command="SET SESSION TRANSACTION READ ONLY",
            cursorclass=pymysql.cursors.SSCursor)
        step = "running the query"
        addresses: List[str] = []
        # No "with" for the cursor: closing an unbuffered cursor early reads the rest of the
        # result; closing the connection (finally) does not.
        cursor = connection.cursor()
        cursor.execute(settings.query)
        while True:
            rows = cursor.fetchmany(BATCH)
            if not rows:
                return addresses
            deadline.remaining()
            for row in rows:
                value = row[0]
                if value is None:
                    continue
                if isinstance(value, bytes):
                    value = value.decode("utf-8", "replace")
                addresses.append(value if isinstance(value, str) else str(value))
    except pymysql.MySQLError as error:
        raise _translate(error, f"{where}: {step}", deadline) from None
    except SourceTimeout:
        raise deadline.expired(step) from None
    finally:
        if connection is not None:
            try:
                connection.close()
            except pymysql.MySQLError:
                pass  # already closed by the server: nothing left to release


def _translate(error: Exception, where: str, deadline: Deadline) -> SourceError:
    """Map a PyMySQL exception (args: errno, message) onto the source errors."""
    code = error.args[0] if error.args and isinstance(error.args[0], int) else 0
    message = " ".join(str(error.args[1] if len(error.args) > 1 else error).split())
    text = f"{where}: ({code}) {message}"
    if "timed out" in message:
        return SourceTimeout(f"{where}: no answer within {deadline.timeout:g} s")
    if code in _AUTH_CODES:
        return SourceAuthError(text)
    if code >= _CLIENT_CODES_START or code == 0:
        return SourceUnreachable(text)
    if code in (1969, 3024):  # statement time limit (MariaDB max_statement_time, MySQL)
        return SourceTimeout(text)
    return SourceQueryError(text)
