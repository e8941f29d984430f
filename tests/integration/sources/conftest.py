"""Fixtures for the recipient sources' integration tests: real private servers.

slapd, PostgreSQL 15 and MariaDB are started once per test session from Debian's packages
(``.ci/install`` installs them) in pytest's temporary folders, never as the system's services,
and stopped at the end. Each test works in its own LDAP subtree or table, so tests do not see
each other's data. Missing packages or a non-root user make these tests fail, not skip.
"""
from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from tests.harness.servers import HangingServer, MariaDB, Postgres, Slapd
from tests.integration.conftest import require_root


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """A running private slapd (see Slapd: suffix dc=example,dc=test, a reader bind DN)."""
    server = Slapd(tmp_path_factory.mktemp("slapd")).setup().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres(postgres_server: Postgres) -> Postgres:
    """The private PostgreSQL (tests/integration/conftest.py) with role ``reader`` (password
    ``reader-secret``) owning the database ``directory``."""
    postgres_server.create_database("directory", "reader", "reader-secret")
    return postgres_server


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    """A running private MariaDB with database ``directory`` and user ``reader``
    (password ``reader-secret``) allowed to read it, from the unix socket and from 127.0.0.1."""
    require_root()
    server = MariaDB(tmp_path_factory.mktemp("mariadb")).setup().start()
    try:
        server.sql("CREATE DATABASE directory; "
                   "CREATE USER 'reader'@'localhost' IDENTIFIED BY 'reader-secret'; "
                   "CREATE USER 'reader'@'127.0.0.1' IDENTIFIED BY 'reader-secret'; "
                   "GRANT SELECT ON directory.* TO 'reader'@'localhost'; "
                   "GRANT SELECT ON directory.* TO 'reader'@'127.0.0.1';")
        yield server
    finally:
        server.stop()


@pytest.fixture
def hanging() -> Iterator[HangingServer]:
    """A loopback TCP port that accepts connections and never answers."""
    server = HangingServer()
    yield server
    server.close()


@pytest.fixture
def unique() -> str:
    """A name no other test uses (for LDAP subtrees and tables)."""
    return "t" + uuid.uuid4().hex[:12]
