"""backupmx.sources: recipient sources, the drivers that read valid relay recipients from the
primary's directory (LDAP, PostgreSQL, MySQL/MariaDB, SQLite, a command).

Each driver module (``ldap``, ``pgsql``, ``mysql``, ``sqlite``, ``command``) has
``fetch(settings, timeout) -> list[str]``: blocking, bounded by ``timeout`` seconds, returning
the raw address strings the source holds (``user@domain`` or ``@domain``; the caller validates
and groups them) or raising a ``backupmx.sources.errors.SourceError``. The settings come from
``backupmx.common.source_settings.parse_source``. Types ``file`` and ``push`` have settings here but
no fetch driver: the map file is read by the caller, a push source is filled by import.

This package imports neither Twisted nor the daemons: it runs in a sync process or thread.
"""
from __future__ import annotations

import importlib
from typing import List

from backupmx.common.source_settings import SourceSettings

FETCH_TYPES = ("ldap", "pgsql", "mysql", "sqlite", "command")


def require_driver(source_type: str) -> None:
    """Check at start that the driver of ``source_type`` can be used.

    Raises DriverMissing (its message is the one line naming the Debian package to install)
    when the Python module it needs is absent; types without a library are always fine."""
    if source_type in FETCH_TYPES:
        module = importlib.import_module(f"backupmx.sources.{source_type}")
        check = getattr(module, "driver", None)
        if check is not None:
            check()


def fetch(settings: SourceSettings) -> List[str]:
    """Run the driver of ``settings.type`` with ``settings.timeout``; see the driver modules.

    Raises SourceError subclasses as the driver does; ValueError for a type without a fetch
    driver (``file``, ``push``)."""
    if settings.type not in FETCH_TYPES:
        raise ValueError(f"recipient source type {settings.type} has no fetch driver")
    module = importlib.import_module(f"backupmx.sources.{settings.type}")
    return module.fetch(settings.driver, settings.timeout)
