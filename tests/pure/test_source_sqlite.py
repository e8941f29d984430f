"""The sqlite source on real SQLite files."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from backupmx.common.source_settings import SqliteSettings
from backupmx.sources import sqlite
from backupmx.sources.errors import SourceQueryError, SourceTimeout, SourceUnreachable


@pytest.fixture
def database(tmp_path: Path) -> str:
    path = tmp_path / "directory.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, address TEXT)")
        connection.executemany("INSERT INTO users (address) VALUES (?)",
                               [("alice@example.test",), (None,), ("@other.test",)])
    return str(path)


def test_returns_the_first_column(database: str) -> None:
    settings = SqliteSettings(path=database, query="SELECT address, id FROM users ORDER BY id")
    assert sqlite.fetch(settings, timeout=5) == ["alice@example.test", "@other.test"]


def test_missing_file_is_unreachable_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent.sqlite3"
    with pytest.raises(SourceUnreachable, match="unable to open database file"):
        sqlite.fetch(SqliteSettings(path=str(path), query="SELECT 1"), timeout=5)
    assert not path.exists()


def test_missing_table_is_a_query_error(database: str) -> None:
    with pytest.raises(SourceQueryError, match="no such table: people"):
        sqlite.fetch(SqliteSettings(path=database, query="SELECT mail FROM people"), timeout=5)


def test_not_a_database_is_a_query_error(tmp_path: Path) -> None:
    path = tmp_path / "text"
    path.write_text("alice@example.test\n" * 100)
    with pytest.raises(SourceQueryError, match="not a database"):
        sqlite.fetch(SqliteSettings(path=str(path), query="SELECT address FROM users"),
                     timeout=5)


def test_the_query_cannot_write(database: str) -> None:
    settings = SqliteSettings(path=database, query="DELETE FROM users RETURNING address")
    with pytest.raises(SourceQueryError, match="readonly database"):
        sqlite.fetch(settings, timeout=5)
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT count(*) FROM users").fetchone() == (3,)


def test_endless_query_is_interrupted_at_the_timeout(database: str) -> None:
    endless = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
               "SELECT i FROM n WHERE i < 0")
    started = time.monotonic()
    with pytest.raises(SourceTimeout, match=r"within 1 s while running the query"):
        sqlite.fetch(SqliteSettings(path=database, query=endless), timeout=1)
    assert time.monotonic() - started < 2
