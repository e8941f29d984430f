"""Errors a recipient source raises when a sync cannot give a complete, trustworthy answer.

Every driver's ``fetch`` raises only these (never a driver library's own exception), each with a
one-line message fit for the admin's log: what failed, where, and the server's own words. A
caller keeps the last good snapshot on any ``SourceError``; the subclasses tell what to fix.
"""
from __future__ import annotations

import importlib
from typing import Any, Sequence


class SourceError(Exception):
    """A sync failed; the message is one line for the log. Base of every source error."""


class SourceUnreachable(SourceError):
    """The source cannot be reached: connection refused, no route, unknown host, missing socket
    or database file, server shutting down."""


class SourceTimeout(SourceError):
    """The source did not answer within the sync's timeout (connect, bind, query or command)."""


class SourceAuthError(SourceError):
    """The source refused our credentials (wrong password, unknown user, no password given)."""


class SourceQueryError(SourceError):
    """The source rejected the query: SQL error, missing table or column, bad LDAP filter,
    missing search base, unknown attribute, permission denied on the data."""


class SourceOutputError(SourceError):
    """The source answered with something that is not a list of addresses: undecodable bytes,
    NUL characters, or (for a command) text in which no line looks like an address."""


class SourceCommandFailed(SourceError):
    """A ``command`` source exited with a non-zero status (or was killed by a signal).

    ``returncode`` is the exit status (negative: the signal number), as subprocess gives it."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


class PasswordFileError(SourceError):
    """A ``*_password_file`` that cannot be read, or is empty."""


class DriverMissing(SourceError):
    """The Python module a source type needs is not installed.

    ``package`` is the Debian package to install (e.g. ``python3-ldap``); ``module`` the Python
    module that failed to import. The message is the one line to show at start."""

    def __init__(self, source_type: str, module: str, package: str) -> None:
        super().__init__(f"recipient sources of type {source_type} need the Python module "
                         f"{module}: install the package {package}")
        self.source_type = source_type
        self.module = module
        self.package = package


def import_driver(source_type: str, modules: Sequence[str], module: str, package: str) -> Any:
    """Import ``modules`` and return the first (a source type's driver library). Raises
    DriverMissing(source_type, module, package) when one of them is not installed."""
    try:
        loaded = [importlib.import_module(name) for name in modules]
    except ImportError:
        raise DriverMissing(source_type, module, package) from None
    return loaded[0]
