"""The pgsql driver against a real private PostgreSQL 15 (psycopg 3)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from backupmx.common.source_settings import PgsqlSettings
from backupmx.sources import pgsql
from backupmx.sources.errors import (
    SourceAuthError,
    SourceQueryError,
    SourceTimeout,
    SourceUnreachable,
)
from tests.harness.servers import Postgres, write_password


def table(postgres: Postgres, name: str, addresses: list) -> None:
    """A table ``name(address text)`` in database directory, readable by reader."""
    values = ", ".join("(NULL)" if a is None else f"('{a}')" for a in addresses)
    postgres.psql(f"CREATE TABLE {name} (id serial, address text); "
                  f"ALTER TABLE {name} OWNER TO reader; "
                  + (f"INSERT INTO {name} (address) VALUES {values};" if values else ""),
                  database="directory")


def settings_for(postgres: Postgres, tmp_path: Path, query: str,
                 password: str = "reader-secret", dsn: str = "") -> PgsqlSettings:
    return PgsqlSettings(dsn=dsn or postgres.dsn("reader", "directory"), query=query,
                         password_file=write_password(tmp_path, password))


def test_returns_the_first_column_of_each_row(postgres: Postgres, unique: str,
                                              tmp_path: Path) -> None:
    table(postgres, unique, ["alice@example.test", "Bob@Example.Test", None, "@other.test"])
    settings = settings_for(postgres, tmp_path,
                            f"SELECT address, id FROM {unique} ORDER BY id;")
    assert pgsql.fetch(settings, timeout=10) == ["alice@example.test", "Bob@Example.Test",
                                                 "@other.test"]


def test_more_rows_than_a_batch(postgres: Postgres, unique: str, tmp_path: Path) -> None:
    postgres.psql(f"CREATE TABLE {unique} AS SELECT 'u' || n || '@example.test' AS address "
                  f"FROM generate_series(1, 25000) AS n; ALTER TABLE {unique} OWNER TO reader",
                  database="directory")
    addresses = pgsql.fetch(settings_for(postgres, tmp_path, f"SELECT address FROM {unique}"),
                            timeout=30)
    assert len(addresses) == 25000 and len(set(addresses)) == 25000


def test_uri_dsn(postgres: Postgres, unique: str, tmp_path: Path) -> None:
    table(postgres, unique, ["alice@example.test"])
    uri = f"postgresql://reader@/directory?host={postgres.socket_dir}"
    settings = settings_for(postgres, tmp_path, f"SELECT address FROM {unique}", dsn=uri)
    assert pgsql.fetch(settings, timeout=10) == ["alice@example.test"]


def test_a_user_added_or_removed_shows_in_the_next_fetch(postgres: Postgres, unique: str,
                                                         tmp_path: Path) -> None:
    table(postgres, unique, ["alice@example.test", "bob@example.test"])
    settings = settings_for(postgres, tmp_path, f"SELECT address FROM {unique} ORDER BY 1")
    assert pgsql.fetch(settings, timeout=10) == ["alice@example.test", "bob@example.test"]
    postgres.psql(f"INSERT INTO {unique} (address) VALUES ('carol@example.test'); "
                  f"DELETE FROM {unique} WHERE address = 'bob@example.test'",
                  database="directory")
    assert pgsql.fetch(settings, timeout=10) == ["alice@example.test", "carol@example.test"]


def test_wrong_password_is_an_authentication_error(postgres: Postgres, tmp_path: Path) -> None:
    settings = settings_for(postgres, tmp_path, "SELECT 1", password="wrong")
    with pytest.raises(SourceAuthError, match='password authentication failed for user "reader"'):
        pgsql.fetch(settings, timeout=10)


def test_missing_table_is_a_query_error(postgres: Postgres, tmp_path: Path) -> None:
    settings = settings_for(postgres, tmp_path, "SELECT address FROM no_such_table")
    with pytest.raises(SourceQueryError, match='relation "no_such_table" does not exist'):
        pgsql.fetch(settings, timeout=10)


def test_missing_database_is_a_query_error(postgres: Postgres, tmp_path: Path) -> None:
    settings = settings_for(postgres, tmp_path, "SELECT 1",
                            dsn=postgres.dsn("reader", "no_such_database"))
    with pytest.raises(SourceQueryError, match='database "no_such_database" does not exist'):
        pgsql.fetch(settings, timeout=10)


def test_the_query_cannot_write(postgres: Postgres, unique: str, tmp_path: Path) -> None:
    """Only a SELECT (or VALUES) can be a server-side cursor, and it runs read-only."""
    table(postgres, unique, ["alice@example.test"])
    delete = settings_for(postgres, tmp_path, f"DELETE FROM {unique} RETURNING address")
    with pytest.raises(SourceQueryError, match="syntax error"):
        pgsql.fetch(delete, timeout=10)
    sneaky = settings_for(postgres, tmp_path, f"SELECT nextval('{unique}_id_seq')::text")
    with pytest.raises(SourceQueryError, match="read-only transaction"):
        pgsql.fetch(sneaky, timeout=10)
    assert postgres.psql(f"SELECT count(*) FROM {unique}", database="directory").strip() == "1"


def test_missing_socket_is_unreachable(tmp_path: Path) -> None:
    settings = PgsqlSettings(dsn=f"host={tmp_path} dbname=directory user=reader", query="SELECT 1")
    with pytest.raises(SourceUnreachable, match="No such file or directory"):
        pgsql.fetch(settings, timeout=10)


def test_slow_query_is_stopped_within_the_timeout(postgres: Postgres, tmp_path: Path) -> None:
    settings = settings_for(postgres, tmp_path, "SELECT 'a@example.test' FROM pg_sleep(30)")
    started = time.monotonic()
    with pytest.raises(SourceTimeout):
        pgsql.fetch(settings, timeout=1.5)
    assert time.monotonic() - started < 1.5 + 1.0


def test_hanging_server_times_out_within_the_timeout(hanging, tmp_path: Path) -> None:
    settings = PgsqlSettings(dsn=f"host=127.0.0.1 port={hanging.port} dbname=directory "
                                 f"user=reader", query="SELECT 1",
                             password_file=write_password(tmp_path, "x"))
    started = time.monotonic()
    with pytest.raises(SourceTimeout, match=r"within 1\.5 s while connecting"):
        pgsql.fetch(settings, timeout=1.5)
    assert time.monotonic() - started < 1.5 + 1.0
