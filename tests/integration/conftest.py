"""Fixtures that build a real backup MX on loopback (private Postfix + real daemons).

These tests need root and Debian's postfix package (``.ci/install`` provides both in CI). They
fail, not skip, when those are missing: a skipped integration suite would hide a broken MX.
Deselect them explicitly with ``-m "not integration"`` on a machine without Postfix.
"""
from __future__ import annotations

import os
import shutil
from typing import Iterator

import pytest

from tests.harness.lab import BackupMxLab
from tests.harness.servers import Postgres, outside_pytest_root


def require_postfix() -> None:
    if shutil.which("postfix", path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", "")) is None:
        pytest.fail("the integration tests need Postfix: run .ci/install (apt package postfix)")
    if os.geteuid() != 0:
        pytest.fail("the integration tests start a private Postfix instance: run them as root")


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests start private servers as other users: run them as root")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """A running private PostgreSQL 15 (unix socket only, superuser ``postgres``), shared by the
    recipient sources' and the fleet's tests; each creates its own roles and databases. A test
    that stops it (the fleet's outage test) starts it again before it ends. Its folder is
    outside /tmp/pytest-of-root (see outside_pytest_root)."""
    require_root()
    root = outside_pytest_root("postgres")
    server = Postgres(root)
    try:
        server.setup().start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackupMxLab]:
    """One relay domain, example.test, with policyd attached; primary stopped."""
    require_postfix()
    instance = BackupMxLab(tmp_path_factory.mktemp("lab")).start()
    yield instance
    instance.close()
