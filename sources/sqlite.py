"""SQLite source (Python's sqlite3): the first column of every row of ``query``.

The database is opened read-only (``mode=ro`` URI), so the sync can never change it. SQLite's
busy timeout and a progress handler that interrupts the query share the sync's deadline.
"""
from __future__ import annotations

import sqlite3
import time
import urllib.parse
from typing import List

from backupmx.common.source_settings import SqliteSettings
from backupmx.sources.deadline import Deadline
from backupmx.sources.errors import SourceQueryError, SourceTimeout, SourceUnreachable
from backupmx.sources.rows import first_column

PROGRESS_STEPS = 10_000  # SQLite virtual machine steps between deadline checks


def fetch(settings: SqliteSettings, timeout: float) -> List[str]:
    """Values of the first column (as stored; NULLs skipped, other types as ``str()``).

    Raises SourceUnreachable (file missing or unreadable), SourceTimeout (locked or slower than
    ``timeout``), SourceQueryError (SQL error, missing table, not a database)."""
    where = f"SQLite {settings.path}"
    deadline = Deadline(timeout, where)
    end = time.monotonic() + deadline.remaining()
    uri = "file:" + urllib.parse.quote(settings.path) + "?mode=ro"
    try:
        connection = sqlite3.connect(uri, uri=True, timeout=deadline.remaining())
    except sqlite3.Error as error:
        raise SourceUnreachable(f"{where}: {error}") from None
    try:
        connection.set_progress_handler(lambda: int(time.monotonic() > end), PROGRESS_STEPS)
        return list(first_column(connection.execute(settings.query)))
    except sqlite3.OperationalError as error:
        message = str(error)
        if message == "interrupted":
            raise deadline.expired("running the query") from None
        if "database is locked" in message:
            raise SourceTimeout(f"{where}: still locked after {deadline.timeout:g} s") from None
        if "unable to open" in message:
            raise SourceUnreachable(f"{where}: {message}") from None
        raise SourceQueryError(f"{where}: {message}") from None
    except sqlite3.Error as error:
        raise SourceQueryError(f"{where}: {error}") from None
    finally:
        connection.close()
