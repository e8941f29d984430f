"""LDAP source (python-ldap): the values of ``attributes`` of every entry that ``filter``
matches under ``base``, read in pages (RFC 2696 simple paged results, ``page_size`` entries a
page, the control marked critical so a server that cannot page fails instead of truncating).

Blocking. Every wait (connect, StartTLS, bind, each page) gets what is left of ``timeout``:
libldap's network timeout for the connection, ``result3``'s timeout and the search time limit
sent to the server for the rest.
"""
from __future__ import annotations

from typing import Any, List

from backupmx.common.source_settings import LdapSettings
from backupmx.sources.deadline import Deadline
from backupmx.sources.errors import (
    SourceAuthError,
    SourceError,
    SourceQueryError,
    SourceTimeout,
    SourceUnreachable,
    import_driver,
)
from backupmx.sources.passwords import read_password_file


def driver() -> Any:
    """The python-ldap module; DriverMissing naming python3-ldap when it is not installed."""
    # ldap.controls: SimplePagedResultsControl
    return import_driver("ldap", ("ldap", "ldap.controls"), "ldap (python-ldap)", "python3-ldap")


def fetch(settings: LdapSettings, timeout: float) -> List[str]:
    """Addresses (raw strings as the directory holds them: ``user@domain`` or ``@domain``) from
    every matching entry's address attributes, in the server's order; values that are not UTF-8
    are decoded with U+FFFD replacement (the caller rejects them as malformed).

    Raises SourceUnreachable (no connection, StartTLS failed), SourceTimeout (``timeout``
    seconds in all), SourceAuthError (bind refused), SourceQueryError (bad filter, no such
    base, paging refused, limits hit), PasswordFileError, DriverMissing, SourceError (other
    LDAP errors)."""
    ldap = driver()
    deadline = Deadline(timeout, f"LDAP {settings.uri}")
    password = (read_password_file(settings.bind_password_file)
                if settings.bind_password_file else "")
    step = "connecting"
    try:
        connection = ldap.initialize(settings.uri)
    except ldap.LDAPError as error:
        raise SourceUnreachable(f"LDAP {settings.uri}: {_describe(error)}") from None
    try:
        connection.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
        connection.set_option(ldap.OPT_REFERRALS, 0)
        connection.set_option(ldap.OPT_NETWORK_TIMEOUT, deadline.remaining())
        connection.set_option(ldap.OPT_TIMEOUT, deadline.remaining())
        if settings.tls_ca_file:
            connection.set_option(ldap.OPT_X_TLS_CACERTFILE, settings.tls_ca_file)
        connection.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND)
        connection.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
        if settings.starttls:
            step = "starting TLS"
            connection.start_tls_s()
        if settings.bind_dn:
            step = f"binding as {settings.bind_dn}"
            message = connection.simple_bind(settings.bind_dn, password)
            connection.result3(message, all=1, timeout=deadline.remaining())
        step = f"searching {settings.base}"
        return _paged_search(ldap, connection, settings, deadline)
    except ldap.LDAPError as error:
        failure = _translate(ldap, error, f"LDAP {settings.uri}: {step}", deadline)
        if settings.starttls and step == "starting TLS" and not isinstance(failure,
                                                                          SourceTimeout):
            failure = SourceUnreachable(str(failure))  # no secure connection to be had
        raise failure from None
    finally:
        try:
            connection.unbind_ext()
        except ldap.LDAPError:
            pass  # the connection is gone already; nothing to close


def _paged_search(ldap: Any, connection: Any, settings: LdapSettings,
                  deadline: Deadline) -> List[str]:
    from ldap.controls import SimplePagedResultsControl

    scope = ldap.SCOPE_SUBTREE if settings.scope == "sub" else ldap.SCOPE_ONELEVEL
    wanted = {name.lower() for name in settings.attributes}
    page = SimplePagedResultsControl(True, size=settings.page_size, cookie=b"")
    addresses: List[str] = []
    while True:
        message = connection.search_ext(settings.base, scope, settings.filter,
                                        attrlist=list(settings.attributes), serverctrls=[page],
                                        timeout=deadline.remaining())
        _, entries, _, controls = connection.result3(message, all=1, timeout=deadline.remaining())
        for dn, attributes in entries:
            if dn is None:  # a search continuation reference (referral): not followed
                continue
            for name, values in attributes.items():
                if name.lower() in wanted:
                    addresses.extend(value.decode("utf-8", "replace") for value in values)
        cookies = [control.cookie for control in controls
                   if control.controlType == SimplePagedResultsControl.controlType]
        if not cookies or not cookies[0]:
            return addresses
        page.cookie = cookies[0]


def _describe(error: Exception) -> str:
    """python-ldap's error as one line: its description and the server's diagnostic text."""
    detail = error.args[0] if error.args else {}
    if not isinstance(detail, dict):
        return str(detail)
    text = detail.get("desc", type(error).__name__)
    info = detail.get("info")
    if isinstance(info, bytes):
        info = info.decode("utf-8", "replace")
    if info:
        text += f" ({info})"
    return text.replace("\n", " ")


def _translate(ldap: Any, error: Exception, where: str, deadline: Deadline) -> SourceError:
    """Map a python-ldap exception onto the source errors."""
    if isinstance(error, (ldap.TIMEOUT, ldap.TIMELIMIT_EXCEEDED)):
        return SourceTimeout(f"{where}: no answer within {deadline.timeout:g} s")
    text = f"{where}: {_describe(error)}"
    if isinstance(error, (ldap.SERVER_DOWN, ldap.CONNECT_ERROR, ldap.UNAVAILABLE, ldap.BUSY)):
        return SourceUnreachable(text)
    if isinstance(error, (ldap.INVALID_CREDENTIALS, ldap.INAPPROPRIATE_AUTH,
                          ldap.STRONG_AUTH_REQUIRED, ldap.CONFIDENTIALITY_REQUIRED,
                          ldap.AUTH_UNKNOWN)):
        return SourceAuthError(text)
    if isinstance(error, (ldap.FILTER_ERROR, ldap.NO_SUCH_OBJECT, ldap.UNDEFINED_TYPE,
                          ldap.INVALID_DN_SYNTAX, ldap.UNAVAILABLE_CRITICAL_EXTENSION,
                          ldap.SIZELIMIT_EXCEEDED, ldap.ADMINLIMIT_EXCEEDED,
                          ldap.INSUFFICIENT_ACCESS, ldap.PROTOCOL_ERROR,
                          ldap.INVALID_SYNTAX)):
        return SourceQueryError(text)
    return SourceError(text)
