"""The mysql driver against a real private MariaDB (PyMySQL)."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from backupmx.common.source_settings import MysqlSettings
from backupmx.sources import mysql
from backupmx.sources.errors import (
    SourceAuthError,
    SourceQueryError,
    SourceTimeout,
    SourceUnreachable,
)
from tests.harness.postfix import free_port
from tests.harness.servers import MariaDB, write_password


def table(mariadb: MariaDB, name: str, addresses: list) -> None:
    values = ", ".join("(NULL)" if a is None else f"('{a}')" for a in addresses)
    mariadb.sql(f"CREATE TABLE {name} (id INT AUTO_INCREMENT PRIMARY KEY, address VARCHAR(320)); "
                + (f"INSERT INTO {name} (address) VALUES {values};" if values else ""),
                database="directory")


def over_socket(mariadb: MariaDB, tmp_path: Path, query: str,
                password: str = "reader-secret") -> MysqlSettings:
    return MysqlSettings(socket=str(mariadb.socket), user="reader", database="directory",
                         query=query, password_file=write_password(tmp_path, password))


def test_returns_the_first_column_over_the_unix_socket(mariadb: MariaDB, unique: str,
                                                       tmp_path: Path) -> None:
    table(mariadb, unique, ["alice@example.test", "Bob@Example.Test", None, "@other.test"])
    settings = over_socket(mariadb, tmp_path, f"SELECT address, id FROM {unique} ORDER BY id")
    assert mysql.fetch(settings, timeout=10) == ["alice@example.test", "Bob@Example.Test",
                                                 "@other.test"]


def test_returns_the_first_column_over_tcp(mariadb: MariaDB, unique: str,
                                           tmp_path: Path) -> None:
    table(mariadb, unique, ["alice@example.test"])
    settings = dataclasses.replace(over_socket(mariadb, tmp_path, f"SELECT address FROM {unique}"),
                                   socket=None, host="127.0.0.1", port=mariadb.port)
    assert mysql.fetch(settings, timeout=10) == ["alice@example.test"]


def test_more_rows_than_a_batch(mariadb: MariaDB, unique: str, tmp_path: Path) -> None:
    mariadb.sql(f"CREATE TABLE {unique} AS SELECT CONCAT('u', seq, '@example.test') AS address "
                f"FROM seq_1_to_25000", database="directory")
    addresses = mysql.fetch(over_socket(mariadb, tmp_path, f"SELECT address FROM {unique}"),
                            timeout=30)
    assert len(addresses) == 25000 and len(set(addresses)) == 25000


def test_a_user_added_or_removed_shows_in_the_next_fetch(mariadb: MariaDB, unique: str,
                                                         tmp_path: Path) -> None:
    table(mariadb, unique, ["alice@example.test", "bob@example.test"])
    settings = over_socket(mariadb, tmp_path, f"SELECT address FROM {unique} ORDER BY 1")
    assert mysql.fetch(settings, timeout=10) == ["alice@example.test", "bob@example.test"]
    mariadb.sql(f"INSERT INTO {unique} (address) VALUES ('carol@example.test'); "
                f"DELETE FROM {unique} WHERE address = 'bob@example.test'", database="directory")
    assert mysql.fetch(settings, timeout=10) == ["alice@example.test", "carol@example.test"]


def test_wrong_password_is_an_authentication_error(mariadb: MariaDB, tmp_path: Path) -> None:
    settings = over_socket(mariadb, tmp_path, "SELECT 1", password="wrong")
    with pytest.raises(SourceAuthError, match=r"\(1045\) Access denied for user 'reader'"):
        mysql.fetch(settings, timeout=10)


def test_missing_table_is_a_query_error(mariadb: MariaDB, tmp_path: Path) -> None:
    settings = over_socket(mariadb, tmp_path, "SELECT address FROM no_such_table")
    with pytest.raises(SourceQueryError, match=r"\(1146\) Table 'directory.no_such_table' "
                                               r"doesn't exist"):
        mysql.fetch(settings, timeout=10)


def test_the_query_cannot_write(mariadb: MariaDB, unique: str, tmp_path: Path) -> None:
    """The session is read-only, whatever the account may do."""
    table(mariadb, unique, ["alice@example.test"])
    mariadb.sql(f"GRANT DELETE ON directory.{unique} TO 'reader'@'localhost'")
    settings = over_socket(mariadb, tmp_path, f"DELETE FROM {unique}")
    with pytest.raises(SourceQueryError, match="READ ONLY"):
        mysql.fetch(settings, timeout=10)
    assert mariadb.sql(f"SELECT COUNT(*) FROM {unique}", database="directory").strip() == "1"


def test_closed_port_is_unreachable(tmp_path: Path) -> None:
    settings = MysqlSettings(host="127.0.0.1", port=free_port(), user="reader",
                             database="directory", query="SELECT 1")
    with pytest.raises(SourceUnreachable, match=r"\(2003\) Can't connect"):
        mysql.fetch(settings, timeout=5)


def test_hanging_server_times_out_within_the_timeout(hanging, tmp_path: Path) -> None:
    settings = MysqlSettings(host="127.0.0.1", port=hanging.port, user="reader",
                             database="directory", query="SELECT 1",
                             password_file=write_password(tmp_path, "x"))
    started = time.monotonic()
    with pytest.raises(SourceTimeout, match=r"within 1\.5 s"):
        mysql.fetch(settings, timeout=1.5)
    assert time.monotonic() - started < 1.5 + 1.0


def test_slow_query_times_out(mariadb: MariaDB, tmp_path: Path) -> None:
    settings = over_socket(mariadb, tmp_path, "SELECT 'a@example.test' FROM (SELECT SLEEP(30)) s")
    started = time.monotonic()
    with pytest.raises(SourceTimeout):
        mysql.fetch(settings, timeout=1.5)
    assert time.monotonic() - started < 1.5 + 1.0


def test_a_trickling_result_is_cut_at_the_timeout(mariadb: MariaDB, tmp_path: Path) -> None:
    """Rows arriving every 0.4 s (each larger than the server's network buffer, so each is sent
    at once): every read is quick, the whole is not. The timeout bounds the whole sync."""
    settings = over_socket(mariadb, tmp_path,
                           "SELECT CONCAT('u', seq, '@example.test'), REPEAT('x', 40000), "
                           "SLEEP(0.4) FROM seq_1_to_15")
    started = time.monotonic()
    with pytest.raises(SourceTimeout, match=r"within 1\.5 s while running the query"):
        mysql.fetch(settings, timeout=1.5)
    assert time.monotonic() - started < 1.5 + 1.0
