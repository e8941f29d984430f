"""Settings of one recipient source: a ``[recipients NAME]`` section of backupmx.conf.

``parse_source(name, section)`` turns the section's ``key -> (value text, line number)`` mapping
into a frozen ``SourceSettings``: the keys every source has, plus ``driver``, the frozen
settings of its type (``LdapSettings``, ``PgsqlSettings``, ``MysqlSettings``, ``SqliteSettings``,
``CommandSettings``, ``FileSettings``, ``PushSettings``), which is what that type's
``fetch(settings, timeout)`` takes. An unknown key, a missing required key or a bad value raises
``SourceSettingsError`` (a ``ValueError``) naming the line, the section and the key.

Keys of every source (defaults after ``=``):

- ``type``: required; ``ldap | pgsql | mysql | sqlite | command | file | push | callout``.
- ``domains`` = empty: comma-separated domains this source speaks for; empty means every domain
  of ``[domains]`` (the caller fills that in). Addresses of other domains are ignored.
- ``interval = 300``: seconds between syncs (the scheduler adds +-10 % jitter).
- ``timeout = 60``: seconds one sync may take in all (connect, authenticate, query, read).
- ``max_shrink = 20%``: a sync losing more than this share of a domain's addresses is held back;
  written ``20%`` or ``0.2``, from ``0%`` (any loss held back) to ``100%`` (never).
- ``stale_after = 3600``: seconds without a good sync after which the source's domains are stale.

The keys of each type are listed on its settings class below. A ``callout`` source has no
snapshot and no sync: it is filled by recipient callouts to the domain's primary MX (policyd's
callout engine), so ``interval``, ``max_shrink`` and ``stale_after`` are unknown keys for it and
its ``timeout`` (default 30 there) bounds one callout session.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from backupmx.common.callout_rules import Lifetimes
from backupmx.common.postfix_values import parse_time
from backupmx.common.values import (
    absolute_path,
    boolean,
    choice,
    domain_list,
    domain_name,
    positive_int,
    positive_seconds,
    share,
)

SOURCE_TYPES = ("ldap", "pgsql", "mysql", "sqlite", "command", "file", "push", "callout")
#: common keys that mean nothing for a callout source (it has no sync and no snapshot)
_NOT_FOR_CALLOUT = ("interval", "max_shrink", "stale_after")
#: a callout session's whole time limit when ``timeout`` is not given
CALLOUT_TIMEOUT = 30.0


class SourceSettingsError(ValueError):
    """A bad ``[recipients NAME]`` section. ``str()`` is one line:
    ``line 12: [recipients directory] scope: 'base' is not one of sub, one`` (``line ?`` when the
    problem has no line, e.g. a missing key without a known section line). ``line``, ``section``,
    ``key`` and ``reason`` are also attributes, for a caller that words it its own way."""

    def __init__(self, line: Optional[int], section: str, key: str, reason: str) -> None:
        where = f"line {line}" if line is not None else "line ?"
        super().__init__(f"{where}: [{section}] {key}: {reason}")
        self.line = line
        self.section = section
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class LdapSettings:
    """``type = ldap`` (python-ldap).

    - ``uri``: required; ``ldap://HOST[:PORT]``, ``ldaps://...`` or ``ldapi://...``; several
      separated by spaces are tried in turn (libldap's rule).
    - ``base``: required; the search base DN.
    - ``starttls = no``: ``yes`` sends StartTLS and requires it to succeed (certificate checked).
    - ``tls_ca_file`` = empty: CA certificates (PEM) to check the server with; empty: the system's.
    - ``bind_dn`` = empty: simple bind as this DN; empty: anonymous.
    - ``bind_password_file``: the bind DN's password (first line); required with ``bind_dn``.
    - ``scope = sub``: ``sub`` (the whole subtree) or ``one`` (the base's children).
    - ``filter = (objectClass=*)``: the LDAP search filter (RFC 4515).
    - ``attributes = mail``: comma-separated attributes whose values are addresses.
    - ``page_size = 1000``: entries per page (RFC 2696 simple paged results).
    """

    uri: str
    base: str
    starttls: bool = False
    tls_ca_file: Optional[str] = None
    bind_dn: Optional[str] = None
    bind_password_file: Optional[str] = None
    scope: str = "sub"
    filter: str = "(objectClass=*)"
    attributes: Tuple[str, ...] = ("mail",)
    page_size: int = 1000


@dataclass(frozen=True)
class PgsqlSettings:
    """``type = pgsql`` (psycopg 3).

    - ``dsn``: required; a libpq connection string, ``key=value ...`` or a
      ``postgresql://`` URI (the password belongs in ``password_file``, not here).
    - ``password_file`` = empty: the password (first line); empty: libpq's own rules (.pgpass,
      peer authentication on a unix socket).
    - ``query``: required; a ``SELECT`` (or ``VALUES``) whose first column is an address or
      ``@domain`` per row; it is read through a server-side cursor in a read-only transaction.
      A trailing ``;`` is dropped.
    """

    dsn: str
    query: str
    password_file: Optional[str] = None


@dataclass(frozen=True)
class MysqlSettings:
    """``type = mysql`` for MySQL and MariaDB (PyMySQL).

    - ``host`` or ``socket``: exactly one; a host name or address for TCP, or the absolute path
      of the server's unix socket.
    - ``port = 3306``: TCP port (with ``host`` only).
    - ``user``: required.
    - ``password_file`` = empty: the password (first line); empty: no password.
    - ``database``: required.
    - ``query``: required; first column of each row, as for pgsql. A trailing ``;`` is dropped.
    """

    user: str
    database: str
    query: str
    host: Optional[str] = None
    port: int = 3306
    socket: Optional[str] = None
    password_file: Optional[str] = None


@dataclass(frozen=True)
class SqliteSettings:
    """``type = sqlite`` (Python's sqlite3; the file is opened read-only).

    - ``path``: required; absolute path of the database file.
    - ``query``: required; first column of each row, as for pgsql.
    """

    path: str
    query: str


@dataclass(frozen=True)
class CommandSettings:
    """``type = command``.

    - ``command``: required; an absolute program path and its arguments, split like a shell
      would (``shlex``) but run without a shell. Its standard output: one address or
      ``@domain`` a line (blank lines and ``#`` comments allowed); exit status 0 means complete.
    ``argv`` is the split command.
    """

    argv: Tuple[str, ...]


@dataclass(frozen=True)
class FileSettings:
    """``type = file``: ``path``, required, absolute: a map in postmap text format, as the
    files of ``[policyd] recipients`` today."""

    path: str


@dataclass(frozen=True)
class PushSettings:
    """``type = push``: no keys; filled only by ``backupmx recipients import NAME``."""


@dataclass(frozen=True)
class CalloutSettings:
    """``type = callout``: recipients learned by asking the domain's primary MX (RFC 5321
    ``RCPT TO`` without ``DATA``), as Postfix's ``reject_unverified_recipient`` and Exim's
    ``verify = recipient/callout`` do. Times take Postfix's units (``31d``, ``4h``, ``30s``).

    - ``helo_name`` = empty: the name sent in ``EHLO``; empty: Postfix's ``myhostname``.
    - ``max_connections = 2``: callout sessions open at once per domain.
    - ``rate = 30``: callouts (addresses verified) a minute per domain.
    - ``client_rate = 10``: callouts one SMTP client (the policy request's ``client_address``)
      may cause per hour; a dictionary attacker's further recipients are not verified.
    - ``max_unknown = 5``: refused recipients per session before it ends (Postfix primaries
      slow a client down after ``smtpd_soft_error_limit`` = 10 errors).
    - ``positive_expire_time = 31d``: how long an accepted address stays known valid
      (Postfix: ``address_verify_positive_expire_time``).
    - ``positive_refresh_time = 7d``: after this a valid address is verified again in the
      background; a failed refresh never removes it.
    - ``negative_expire_time = 4h``: how long a refused (5xx) address stays known invalid.
    """

    helo_name: Optional[str] = None
    max_connections: int = 2
    rate: int = 30
    client_rate: int = 10
    max_unknown: int = 5
    positive_expire_time: float = 31 * 86400.0
    positive_refresh_time: float = 7 * 86400.0
    negative_expire_time: float = 4 * 3600.0

    @property
    def lifetimes(self) -> Lifetimes:
        """The cache lifetimes these settings give (common.callout_rules)."""
        return Lifetimes(self.positive_expire_time, self.positive_refresh_time,
                         self.negative_expire_time)


DriverSettings = Union[LdapSettings, PgsqlSettings, MysqlSettings, SqliteSettings,
                       CommandSettings, FileSettings, PushSettings, CalloutSettings]


@dataclass(frozen=True)
class SourceSettings:
    """One source: its ``name`` (the text after ``recipients ``), ``type``, the common keys
    (times in seconds, ``max_shrink`` as a fraction 0..1, ``domains`` lower-case, empty tuple for
    every domain) and ``driver``, the settings of its type."""

    name: str
    type: str
    driver: DriverSettings
    domains: Tuple[str, ...] = ()
    interval: float = 300.0
    timeout: float = 60.0
    max_shrink: float = 0.2
    stale_after: float = 3600.0


# ---- value parsers: text -> value, ValueError with a short reason -----------------------------

def _text(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


def _query(text: str) -> str:
    query = text.strip().rstrip(";").strip()
    if not query:
        raise ValueError("must not be empty")
    return query


def _ldap_uri(text: str) -> str:
    for uri in text.split():
        if not re.match(r"ldap[si]?://", uri, re.IGNORECASE):
            raise ValueError(f"{uri!r} is not an ldap://, ldaps:// or ldapi:// URI")
    return _text(text)


def _ldap_filter(text: str) -> str:
    if not (text.startswith("(") and text.endswith(")")) or text.count("(") != text.count(")"):
        raise ValueError(f"{text!r} is not an LDAP filter in parentheses (RFC 4515)")
    return text


def _attributes(text: str) -> Tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise ValueError("must name at least one attribute")
    for name in names:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*(;[A-Za-z0-9-]+)*|[0-9]+(\.[0-9]+)+", name):
            raise ValueError(f"{name!r} is not an attribute name")
    return names


def _page_size(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1_000_000:
        raise ValueError(f"{text!r} must be a whole number from 1 to 1000000")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{text!r} is not a port number")
    return int(text)


def _time(text: str) -> float:
    """A positive Postfix time value (``31d``, ``4h``, ``90``: seconds)."""
    seconds = parse_time(text)
    if seconds <= 0:
        raise ValueError(f"{text!r} must be a positive time")
    return float(seconds)


def _helo_name(text: str) -> str:
    return domain_name(text)


def _argv(text: str) -> Tuple[str, ...]:
    try:
        argv = tuple(shlex.split(text))
    except ValueError as error:
        raise ValueError(f"{text!r} cannot be split into words: {error}") from None
    if not argv:
        raise ValueError("must not be empty")
    if not argv[0].startswith("/"):
        raise ValueError(f"{argv[0]!r}: the program must be an absolute path")
    return argv


_Parser = Callable[[str], Any]
# common key -> (parser, default); absent keys take SourceSettings' defaults.
_COMMON: Dict[str, Tuple[_Parser, Any]] = {
    "domains": (domain_list, ()),
    "interval": (positive_seconds, 300.0),
    "timeout": (positive_seconds, 60.0),
    "max_shrink": (share, 0.2),
    "stale_after": (positive_seconds, 3600.0),
}
# type -> (settings class, key -> (field name, parser, required?)); absent optional keys take
# the class's defaults.
_TYPES: Dict[str, Tuple[type, Dict[str, Tuple[str, _Parser, bool]]]] = {
    "ldap": (LdapSettings, {
        "uri": ("uri", _ldap_uri, True),
        "base": ("base", _text, True),
        "starttls": ("starttls", boolean, False),
        "tls_ca_file": ("tls_ca_file", absolute_path, False),
        "bind_dn": ("bind_dn", _text, False),
        "bind_password_file": ("bind_password_file", absolute_path, False),
        "scope": ("scope", choice("sub", "one"), False),
        "filter": ("filter", _ldap_filter, False),
        "attributes": ("attributes", _attributes, False),
        "page_size": ("page_size", _page_size, False),
    }),
    "pgsql": (PgsqlSettings, {
        "dsn": ("dsn", _text, True),
        "password_file": ("password_file", absolute_path, False),
        "query": ("query", _query, True),
    }),
    "mysql": (MysqlSettings, {
        "host": ("host", _text, False),
        "port": ("port", _port, False),
        "socket": ("socket", absolute_path, False),
        "user": ("user", _text, True),
        "password_file": ("password_file", absolute_path, False),
        "database": ("database", _text, True),
        "query": ("query", _query, True),
    }),
    "sqlite": (SqliteSettings, {
        "path": ("path", absolute_path, True),
        "query": ("query", _query, True),
    }),
    "command": (CommandSettings, {"command": ("argv", _argv, True)}),
    "file": (FileSettings, {"path": ("path", absolute_path, True)}),
    "push": (PushSettings, {}),
    "callout": (CalloutSettings, {
        "helo_name": ("helo_name", _helo_name, False),
        "max_connections": ("max_connections", positive_int, False),
        "rate": ("rate", positive_int, False),
        "client_rate": ("client_rate", positive_int, False),
        "max_unknown": ("max_unknown", positive_int, False),
        "positive_expire_time": ("positive_expire_time", _time, False),
        "positive_refresh_time": ("positive_refresh_time", _time, False),
        "negative_expire_time": ("negative_expire_time", _time, False),
    }),
}


def _unpack(entry: Any) -> Tuple[str, Optional[int]]:
    """(value, line) from a 2-tuple or from an object with ``value`` and ``line``."""
    if isinstance(entry, tuple):
        value, line = entry
    else:
        value, line = entry.value, entry.line
    return str(value).strip(), line


def parse_source(name: str, section: Mapping[str, Any],
                 section_line: Optional[int] = None) -> SourceSettings:
    """Parse one ``[recipients NAME]`` section.

    ``section`` maps each key (any case) to ``(value text, line number)`` (or an object with
    ``.value`` and ``.line``); ``section_line`` is the header's line, named when a required key is
    missing. Returns a frozen ``SourceSettings``. Raises ``SourceSettingsError`` (a ValueError)
    for an empty name, unknown key, missing required key or bad value, naming the key.
    """
    title = f"recipients {name}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or ""):
        raise SourceSettingsError(section_line, title, "name",
                                  f"{name!r} is not a source name (letters, digits, _ . -)")
    entries = {key.lower(): _unpack(entry) for key, entry in section.items()}
    if "type" not in entries:
        raise SourceSettingsError(section_line, title, "type",
                                  f"missing (one of {', '.join(SOURCE_TYPES)})")
    type_text, type_line = entries["type"]
    source_type = type_text.lower()
    if source_type not in _TYPES:
        raise SourceSettingsError(type_line, title, "type",
                                  f"{type_text!r} is not one of {', '.join(SOURCE_TYPES)}")
    driver_class, driver_keys = _TYPES[source_type]
    common_keys = [k for k in _COMMON
                   if not (source_type == "callout" and k in _NOT_FOR_CALLOUT)]
    known = ["type", *common_keys, *driver_keys]
    common: Dict[str, Any] = {}
    fields: Dict[str, Any] = {}
    for key, (value, line) in entries.items():
        if key == "type":
            continue
        if key in common_keys:
            parser, _ = _COMMON[key]
            target, field_name = common, key
        elif key in driver_keys:
            field_name, parser, _ = driver_keys[key]
            target = fields
        else:
            raise SourceSettingsError(line, title, key,
                                      f"unknown key for type {source_type} "
                                      f"(known: {', '.join(known)})")
        try:
            target[field_name] = parser(value)
        except ValueError as error:
            raise SourceSettingsError(line, title, key, str(error)) from None
    for key, (_, _, required) in driver_keys.items():
        if required and key not in entries:
            raise SourceSettingsError(section_line, title, key, f"missing (required for type "
                                      f"{source_type})")
    _check_combinations(source_type, entries, fields, title, section_line)
    if source_type == "callout":
        common.setdefault("timeout", CALLOUT_TIMEOUT)
    return SourceSettings(name=name, type=source_type, driver=driver_class(**fields), **common)


def _check_combinations(source_type: str, entries: Mapping[str, Tuple[str, Optional[int]]],
                        fields: Dict[str, Any], title: str, section_line: Optional[int]) -> None:
    """Rules between keys of one type."""
    def line_of(key: str) -> Optional[int]:
        return entries[key][1] if key in entries else section_line

    if source_type == "ldap":
        if ("bind_dn" in fields) != ("bind_password_file" in fields):
            key = "bind_password_file" if "bind_dn" in fields else "bind_dn"
            raise SourceSettingsError(line_of("bind_dn" if key == "bind_password_file"
                                              else "bind_password_file"), title, key,
                                      "bind_dn and bind_password_file go together")
    if source_type == "callout":
        refresh = fields.get("positive_refresh_time", CalloutSettings.positive_refresh_time)
        expire = fields.get("positive_expire_time", CalloutSettings.positive_expire_time)
        if refresh >= expire:
            raise SourceSettingsError(line_of("positive_refresh_time"), title,
                                      "positive_refresh_time",
                                      "must be shorter than positive_expire_time")
    if source_type == "mysql":
        if ("host" in fields) == ("socket" in fields):
            raise SourceSettingsError(line_of("socket" if "socket" in fields else "host"), title,
                                      "host", "give exactly one of host and socket")
        if "port" in fields and "socket" in fields:
            raise SourceSettingsError(line_of("port"), title, "port",
                                      "a port goes with host, not with socket")
