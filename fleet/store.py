"""Connecting to the fleet store: psycopg 3 with the [fleet] settings and bounded waits.

Every wait is bounded so that a slow or dead PostgreSQL costs a push (or a status) at most a few
seconds and never anything on the SMTP path: libpq's ``connect_timeout``, the server's
``statement_timeout`` and TCP keepalives. The password comes only from ``password_file``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from backupmx.common.config import FleetConfig

CONNECT_TIMEOUT = 5  # seconds (libpq's minimum is 2)
STATEMENT_TIMEOUT = 60.0  # seconds per statement on the server


class StoreError(Exception):
    """The fleet store cannot be used now (driver missing, unreachable, refused, SQL error);
    one line, worded for the admin."""


def driver() -> Any:
    """The psycopg (3) module; StoreError naming the package when it is not installed."""
    try:
        import psycopg
    except ImportError:
        raise StoreError("[fleet] needs psycopg 3: install python3-psycopg (Debian) or "
                         "python3-psycopg3 (Fedora)") from None
    return psycopg


def read_password_file(path: str) -> str:
    """The first line of ``path`` without its line end; StoreError when unreadable or empty."""
    try:
        with open(path, encoding="utf-8") as handle:
            password = handle.readline().rstrip("\r\n")
    except OSError as error:
        raise StoreError(f"cannot read [fleet] password_file {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise StoreError(f"[fleet] password_file {path} is not UTF-8 text") from None
    if not password:
        raise StoreError(f"[fleet] password_file {path} is empty")
    return password


def one_line(error: BaseException) -> str:
    """A driver error as one line (libpq's messages span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def connect(fleet: FleetConfig, autocommit: bool = False,
            connect_timeout: int = CONNECT_TIMEOUT,
            statement_timeout: Optional[float] = STATEMENT_TIMEOUT) -> Any:
    """A psycopg connection to ``fleet.database``; StoreError (one line) when it fails."""
    psycopg = driver()
    params: Dict[str, Any] = {
        "connect_timeout": max(2, int(connect_timeout)),
        "application_name": "backupmx",
        "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
        "keepalives_count": 3,
    }
    if statement_timeout is not None:
        params["options"] = f"-c statement_timeout={int(statement_timeout * 1000)}"
    if fleet.password_file:
        params["password"] = read_password_file(fleet.password_file)
    try:
        return psycopg.connect(fleet.database, autocommit=autocommit, **params)
    except psycopg.Error as error:
        raise StoreError(f"fleet store: {one_line(error)}") from None
