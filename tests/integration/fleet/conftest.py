"""Fixtures for the fleet's tests: a fresh fleet database per test in the shared private
PostgreSQL (tests/integration/conftest.py ``postgres_server``), owned by the role ``fleet``."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.servers import Postgres, write_password

ROLE, PASSWORD = "fleet", "fleet-secret"


@dataclass
class FleetDatabase:
    server: Postgres
    name: str
    password_file: str

    @property
    def dsn(self) -> str:
        return self.server.dsn(ROLE, self.name)

    def section(self, host_id: str = "", push_interval: float = 60, retention: str = "30d") -> str:
        """The [fleet] section of a backupmx.conf for this database."""
        lines = ["[fleet]", f"database = {self.dsn}", f"password_file = {self.password_file}",
                 f"push_interval = {push_interval}", f"retention = {retention}"]
        if host_id:
            lines.append(f"host_id = {host_id}")
        return "\n".join(lines) + "\n"

    def sql(self, sql: str) -> str:
        return self.server.psql(sql, database=self.name)


@pytest.fixture(scope="session")
def fleet_role(postgres_server: Postgres) -> Postgres:
    """The shared server with the login role ``fleet`` (password ``fleet-secret``)."""
    postgres_server.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
    return postgres_server


def new_database(server: Postgres, folder: Path) -> FleetDatabase:
    """An empty database of its own owned by ``fleet`` (``backupmx fleet init`` not run yet),
    with the password file in ``folder``."""
    name = "fleet_" + uuid.uuid4().hex[:10]
    server.psql(f"CREATE DATABASE {name} OWNER {ROLE}")
    folder.mkdir(parents=True, exist_ok=True)
    return FleetDatabase(server, name, write_password(folder, PASSWORD))


@pytest.fixture
def fleet_db(fleet_role: Postgres, tmp_path: Path) -> FleetDatabase:
    return new_database(fleet_role, tmp_path / "secrets")
