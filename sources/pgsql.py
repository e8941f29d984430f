"""PostgreSQL source (psycopg 3): the first column of every row of ``query``.

Blocking from the caller's view, but run on a private asyncio loop so that one deadline bounds
the whole sync, even against a server that accepts the connection and never answers (psycopg's
blocking waits cannot be interrupted from another thread). libpq's ``connect_timeout`` and the
server's ``statement_timeout`` are set from the same budget, so a slow query is also stopped on
the server. The query runs in a read-only transaction through a server-side cursor, fetched in
batches of ``BATCH`` rows, so the client never holds the whole result twice.

Not to be called from a thread that already runs an asyncio loop.
"""
from __future__ import annotations

import asyncio
import math
import re
from typing import Any, Dict, List

from backupmx.common.source_settings import PgsqlSettings
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
_AUTH_FAILURES = re.compile(
    r"password authentication failed|no password supplied|authentication failed|"
    r"role \S+ does not exist|pg_hba\.conf rejects|SCRAM|password is required", re.IGNORECASE)


def driver() -> Any:
    """The psycopg (3) module; DriverMissing naming python3-psycopg when it is not installed."""
    return import_driver("pgsql", ("psycopg",), "psycopg (psycopg 3)", "python3-psycopg")


class _Progress:
    """What the sync was doing, for the timeout's message."""
    step = "connecting"


def fetch(settings: PgsqlSettings, timeout: float) -> List[str]:
    """Values of the first column (``user@domain`` or ``@domain``, as stored; NULLs skipped,
    other types as ``str()``), in the query's order.

    Raises SourceUnreachable (no server, connection lost), SourceTimeout (``timeout`` seconds in
    all), SourceAuthError (password or role refused), SourceQueryError (SQL error, missing
    table, no such database, bad ``dsn``), PasswordFileError, DriverMissing, SourceError."""
    psycopg = driver()
    from psycopg.conninfo import conninfo_to_dict

    try:
        params: Dict[str, Any] = conninfo_to_dict(settings.dsn)
    except psycopg.Error as error:
        raise SourceQueryError(f"PostgreSQL: bad dsn: {_one_line(error)}") from None
    where = f"PostgreSQL {params.get('dbname') or params.get('user') or ''}".rstrip()
    if params.get("host"):
        where += f" on {params['host']}"
    deadline = Deadline(timeout, where)
    if settings.password_file:
        params["password"] = read_password_file(settings.password_file)
    budget = deadline.remaining()
    params["connect_timeout"] = max(2, math.ceil(budget))  # libpq's minimum is 2 s
    params["options"] = " ".join(filter(None, [params.get("options"),
                                               f"-c statement_timeout={int(budget * 1000)}"]))
    params.setdefault("application_name", "backupmx")
    progress = _Progress()
    try:
        return asyncio.run(asyncio.wait_for(_fetch(psycopg, params, settings.query, progress),
                                            deadline.remaining()))
    except asyncio.TimeoutError:
        raise deadline.expired(progress.step) from None
    except psycopg.Error as error:
        raise _translate(psycopg, error, f"{where}: {progress.step}", deadline) from None


async def _fetch(psycopg: Any, params: Dict[str, Any], query: str,
                 progress: _Progress) -> List[str]:
    connection = await psycopg.AsyncConnection.connect(**params)
    try:
        await connection.set_read_only(True)
        progress.step = "running the query"
        cursor = connection.cursor(name="backupmx_recipient_source")
        await cursor.execute(query)
        addresses: List[str] = []
        while True:
            rows = await cursor.fetchmany(BATCH)
            if not rows:
                return addresses
            addresses.extend(first_column(rows))
    finally:
        await connection.close()  # no rollback round trip: closing ends the transaction


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _translate(psycopg: Any, error: Exception, where: str, deadline: Deadline) -> SourceError:
    """Map a psycopg exception onto the source errors."""
    errors = psycopg.errors
    text = f"{where}: {_one_line(error)}"
    if isinstance(error, errors.QueryCanceled):
        return SourceTimeout(f"{where}: stopped by statement_timeout ({deadline.timeout:g} s)")
    if isinstance(error, (errors.InvalidPassword, errors.InvalidAuthorizationSpecification)):
        return SourceAuthError(text)
    if isinstance(error, errors.InvalidCatalogName):  # no such database
        return SourceQueryError(text)
    if isinstance(error, psycopg.OperationalError):
        message = str(error)
        if _AUTH_FAILURES.search(message):
            return SourceAuthError(text)
        if re.search(r"database \S+ does not exist", message):
            return SourceQueryError(text)
        if "timeout expired" in message:
            return SourceTimeout(f"{where}: no answer within {deadline.timeout:g} s")
        return SourceUnreachable(text)
    if isinstance(error, (psycopg.ProgrammingError, psycopg.DataError,
                          psycopg.NotSupportedError, psycopg.InternalError)):
        return SourceQueryError(text)
    return SourceError(text)
