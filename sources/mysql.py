"""MySQL / MariaDB source (PyMySQL): the first column of every row of ``query``.

Blocking, with one deadline for the whole sync: PyMySQL's connect timeout and its read and
write timeouts (each a bound on one wait) get what is left of ``timeout``, and a watchdog timer
shuts the connection's socket down when the deadline passes, which ends any wait at once, also
for a server that trickles its answer. The query runs in a read-only session (``SET SESSION
TRANSACTION READ ONLY``) and is read unbuffered (``SSCursor``), ``BATCH`` rows at a time.
"""
from __future__ import annotations

import socket
import threading
from typing import Any, List, Optional

from backupmx.common.source_settings import MysqlSettings
from backupmx.sources.deadline import Deadline
from backupmx.sources.errors import (
    SourceAuthError,
    SourceError,
    SourceQueryError,
    SourceTimeout,
    SourceUnreachable,
    import_driver,
)
from backupmx.sources.passwords import read_password_file
from backupmx.sources.rows import first_column

BATCH = 10_000
_AUTH_CODES = {1044, 1045, 1698, 1251}  # access denied (db, user, plugin), auth method
_CLIENT_CODES_START = 2000  # CR_* client errors: no connection, lost connection


def driver() -> Any:
    """The pymysql module; DriverMissing naming python3-pymysql when it is not installed."""
    # pymysql.cursors: SSCursor
    return import_driver("mysql", ("pymysql", "pymysql.cursors"), "pymysql (PyMySQL)",
                         "python3-pymysql")


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
    budget = deadline.remaining()
    connection = pymysql.connect(
        host=settings.host or "localhost", port=settings.port, unix_socket=settings.socket,
        user=settings.user, password=password, database=settings.database, charset="utf8mb4",
        connect_timeout=budget, read_timeout=budget, write_timeout=budget, autocommit=True,
        init_command="SET SESSION TRANSACTION READ ONLY", cursorclass=pymysql.cursors.SSCursor,
        defer_connect=True)
    watchdog = _Watchdog(connection, deadline.remaining())
    cursor = None
    try:
        connection.connect()
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
            addresses.extend(first_column(rows))
    except (pymysql.MySQLError, OSError) as error:
        if watchdog.fired.is_set():
            raise deadline.expired(step) from None
        raise _translate(error, f"{where}: {step}", deadline) from None
    finally:
        watchdog.cancel()
        _abandon_result(connection, cursor)
        _close(pymysql, connection)


class _Watchdog:
    """At the deadline, shut the connection's socket down (both ways): a blocked recv or send
    returns at once and PyMySQL raises. ``fired`` tells the caller why the connection broke.
    PyMySQL keeps its socket in ``_sock`` (set as soon as it is connected, before the
    handshake); were that ever absent, the read and write timeouts still bound each wait."""

    def __init__(self, connection: Any, seconds: float) -> None:
        self.connection = connection
        self.fired = threading.Event()
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True
        self._timer.start()

    def _cut(self) -> None:
        self.fired.set()
        sock: Optional[socket.socket] = getattr(self.connection, "_sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed: nothing left to interrupt

    def cancel(self) -> None:
        self._timer.cancel()


def _abandon_result(connection: Any, cursor: Any) -> None:
    """Mark an unfinished unbuffered result as done, so that neither closing the cursor nor
    collecting the result later tries to read the rest of it from a connection that is gone
    (PyMySQL would raise AttributeError from a destructor). Harmless when the result was read
    to the end: it is already inactive."""
    for owner in (cursor, connection):
        result = getattr(owner, "_result", None)
        if result is not None and getattr(result, "unbuffered_active", False):
            result.unbuffered_active = False


def _close(pymysql: Any, connection: Any) -> None:
    if connection.open:
        try:
            connection.close()
        except (pymysql.MySQLError, OSError):
            pass  # the server or the watchdog closed it already: nothing left to release


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
