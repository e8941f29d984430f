"""backupmx.conf: one strict INI file for every backupmx program.

configparser forgets line numbers and accepts any key, and an admin who mistypes a key must be told
where, so this module reads the (simple) INI syntax itself and validates every value against a
schema. Every error names the file, the line and the key. Values not written take the embedded
defaults below.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from backupmx.common.listen import ListenAddress, optional_listen, parse_host_port, parse_listen
from backupmx.common.postfix_values import parse_time
from backupmx.common.source_settings import (
    FileSettings,
    SourceSettings,
    SourceSettingsError,
    parse_source,
)
from backupmx.common.values import (
    absolute_path,
    boolean,
    choice,
    domain_name,
    optional_mail_address,
    positive_int,
    positive_seconds,
    postfix_duration,
    share,
)

DEFAULT_CONFIG_PATH = "/etc/backupmx/backupmx.conf"
PRIMARY_UP_ACTIONS = ("defer", "reject", "ignore")
SMTP_PORT = 25


class ConfigError(Exception):
    """A configuration problem, already worded for the admin (file:line: [section] key: what)."""


@dataclass(frozen=True)
class PrimarySpec:
    """How to reach the primary MX of a relay domain: a fixed host and port, or its DNS MX."""

    host: Optional[str]  # None when looked up in DNS
    port: int = SMTP_PORT

    @property
    def lookup_mx(self) -> bool:
        return self.host is None

    def __str__(self) -> str:
        return "mx" if self.host is None else f"[{self.host}]:{self.port}"


@dataclass(frozen=True)
class PolicydConfig:
    listen: ListenAddress
    recipients: Tuple[str, ...]
    sender_networks: Optional[str]
    primary_up_action: str
    probe_interval: float
    probe_interval_down: float
    probe_timeout: float
    flush_on_return: bool
    primary_up_after: int
    primary_down_after: int
    recipient_delimiter: Optional[str]  # None: ask Postfix (postconf recipient_delimiter)
    log_accepts: bool
    map_check_interval: float
    max_shrink: float  # a fraction, 0 to 1
    idle_timeout: float
    max_line_length: int
    max_attributes: int
    metrics: Optional[ListenAddress]
    user: Optional[str]
    state_directory: str = "/var/lib/backupmx"  # recipient snapshots live in its recipients/


@dataclass(frozen=True)
class MilterConfig:
    listen: ListenAddress
    ledger: str
    ledger_sync: str
    journal: str
    user: Optional[str]


@dataclass(frozen=True)
class PostfixConfig:
    config_directory: Optional[str]  # None: $MAIL_CONFIG, else Postfix's default
    recipient_table: Optional[str] = None  # merged recipients as a hash: table; None: off


@dataclass(frozen=True)
class NotifyConfig:
    """``[notify]``: who is told when mail is held (off while neither mail_to nor command is set);
    durations in seconds."""

    mail_to: Optional[str] = None
    command: Optional[str] = None
    held_after: int = 15 * 60
    repeat: int = 24 * 3600
    bounce_warning: int = 24 * 3600

    @property
    def enabled(self) -> bool:
        return bool(self.mail_to or self.command)


@dataclass(frozen=True)
class FleetConfig:
    """``[fleet]``: the shared PostgreSQL store of a fleet of backup MXes (optional section)."""

    database: str  # libpq URI (postgresql://...) or conninfo (key=value ...)
    password_file: Optional[str]
    host_id: Optional[str]  # None: Postfix's myhostname, asked when the fleet is used
    push_interval: float  # seconds between pushes (the flush timer's period)
    retention: int  # seconds a delivered message's rows are kept, locally and in the store


@dataclass(frozen=True)
class Config:
    path: str
    policyd: PolicydConfig
    milter: MilterConfig
    postfix: PostfixConfig
    domains: Mapping[str, PrimarySpec] = field(default_factory=dict)
    notify: NotifyConfig = field(default_factory=NotifyConfig)

    fleet: Optional[FleetConfig] = None  # None: no [fleet] section
    #: every recipient source: the [policyd] recipients files first (type file, named by their
    #: path, speaking for every domain), then the [recipients NAME] sections in file order
    sources: Tuple[SourceSettings, ...] = ()

    def source(self, name: str) -> Optional[SourceSettings]:
        """The source called ``name``, or None."""
        return next((s for s in self.sources if s.name == name), None)


# ---- value parsers: text -> value, ValueError with a short reason -----------------------------

def _path_list(text: str) -> Tuple[str, ...]:
    paths = tuple(p.strip() for p in text.split(",") if p.strip())
    for path in paths:
        absolute_path(path)
    return paths


def _optional_path(text: str) -> Optional[str]:
    return absolute_path(text) if text else None


def _delimiter(text: str) -> Optional[str]:
    if len(text) > 8 or any(c.isspace() or c == "@" for c in text):
        raise ValueError(f"{text!r} is not a set of delimiter characters")
    return text or None


def _user_name(text: str) -> Optional[str]:
    if text and not re.fullmatch(r"[a-z_][a-z0-9_.-]*\$?", text):
        raise ValueError(f"{text!r} is not a user name")
    return text or None


def _database(text: str) -> str:
    """A libpq connection string: a URI or key=value conninfo (checked by psycopg when used)."""
    if not text:
        return ""  # required when [fleet] is written: parse_config says so
    if "://" in text and not re.match(r"postgres(ql)?://", text):
        raise ValueError(f"{text!r} is not a postgresql:// URI")
    if "://" not in text and "=" not in text:
        raise ValueError(f"{text!r} is neither a postgresql:// URI nor key=value conninfo")
    if re.search(r"(^|\s)password\s*=|://[^/@]*:[^/@]*@", text):
        raise ValueError("holds a password: put it in password_file instead")
    return text


def _host_id(text: str) -> Optional[str]:
    if not text:
        return None
    try:
        return domain_name(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a host name") from None


def _retention(text: str) -> int:
    """Postfix time syntax, days when no unit: 30, 30d, 2w, 12h (parse_time)."""
    try:
        seconds = parse_time(text, default_unit="d")
    except ValueError as error:
        raise ValueError(f"{text!r} is not a time (30d, 2w, 12h): {error}") from None
    if seconds <= 0:
        raise ValueError(f"{text!r} must be positive")
    return seconds


def _primary(text: str) -> PrimarySpec:
    if text.lower() == "mx":
        return PrimarySpec(host=None)
    host, port = parse_host_port(text, SMTP_PORT)
    return PrimarySpec(host=host, port=port)


# section -> key -> (parser, embedded default as it would be written in the file)
SCHEMA: Dict[str, Dict[str, Tuple[Callable[[str], object], str]]] = {
    "policyd": {
        "listen": (parse_listen, "inet:127.0.0.1:10040"),
        "recipients": (_path_list, "/etc/backupmx/relay_recipients"),
        "sender_networks": (_optional_path, ""),
        "primary_up_action": (choice(*PRIMARY_UP_ACTIONS), "defer"),
        "probe_interval": (positive_seconds, "30"),
        # while a primary is reported down: probe it this often, so its return is seen soon
        "probe_interval_down": (positive_seconds, "10"),
        "probe_timeout": (positive_seconds, "5"),
        # run `backupmx flush DOMAIN --on-return` when a domain's primary is reported up again
        "flush_on_return": (boolean, "yes"),
        # hysteresis: consecutive probes that must agree before the reported state changes
        "primary_up_after": (positive_int, "2"),
        "primary_down_after": (positive_int, "1"),
        "recipient_delimiter": (_delimiter, ""),
        "log_accepts": (boolean, "no"),
        "map_check_interval": (positive_seconds, "5"),
        # an automatic map reload that drops more than this share of a domain's addresses is
        # held back (the file is probably being written); SIGHUP applies it anyway
        "max_shrink": (share, "20%"),
        "idle_timeout": (positive_seconds, "600"),
        "max_line_length": (positive_int, "8192"),
        "max_attributes": (positive_int, "200"),
        "metrics": (optional_listen, ""),
        "user": (_user_name, ""),
        "state_directory": (absolute_path, "/var/lib/backupmx"),
    },
    "milter": {
        "listen": (parse_listen, "inet:127.0.0.1:8890"),
        "ledger": (absolute_path, "/var/lib/backupmx/ledger.sqlite3"),
        "ledger_sync": (choice("normal", "full"), "normal"),
        "journal": (_optional_path, ""),
        "user": (_user_name, ""),
    },
    "postfix": {
        "config_directory": (_optional_path, ""),
        "recipient_table": (_optional_path, ""),
    },
    # off unless mail_to or command is set; evaluated by every `backupmx flush --auto` run
    "notify": {
        "mail_to": (optional_mail_address, ""),
        "command": (_optional_path, ""),
        "held_after": (postfix_duration, "15m"),
        "repeat": (postfix_duration, "24h"),
        "bounce_warning": (postfix_duration, "24h"),
    },
    "fleet": {
        "database": (_database, ""),
        "password_file": (_optional_path, ""),
        "host_id": (_host_id, ""),
        "push_interval": (positive_seconds, "60"),
        "retention": (_retention, "30d"),
    },
}
OPTIONAL_SECTIONS = ("fleet",)  # present only when written; the others always have defaults
#: a section "[recipients NAME]" (any NAME) is one recipient source: backupmx.common.source_settings
SOURCE_SECTION = "recipients "


@dataclass(frozen=True)
class _Entry:
    value: str
    line: int


def _read_ini(text: str, path: str,
              headers: Optional[Dict[str, int]] = None) -> Dict[str, Dict[str, _Entry]]:
    """Sections of ``key = value`` lines; ``#``/``;`` comments, also after a value.

    ``headers`` (when given) receives each section's header line number."""
    if headers is None:
        headers = {}
    sections: Dict[str, Dict[str, _Entry]] = {}
    current: Optional[Dict[str, _Entry]] = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = re.sub(r"\s[;#].*$", "", raw).strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(f"{path}:{number}: malformed section header {raw.strip()!r}")
            name = line[1:-1].strip()
            if name.lower().startswith(SOURCE_SECTION):
                name = SOURCE_SECTION + name[len(SOURCE_SECTION):].strip()
            else:
                name = name.lower()
            if name not in SCHEMA and name != "domains" and not name.startswith(SOURCE_SECTION):
                known = ", ".join([*SCHEMA, "domains", "recipients NAME"])
                raise ConfigError(f"{path}:{number}: [{name}]: unknown section (known: {known})")
            if name in sections:
                raise ConfigError(f"{path}:{number}: section [{name}] appears twice")
            current = sections[name] = {}
            headers[name] = number
            continue
        key, sep, value = line.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise ConfigError(f"{path}:{number}: expected 'key = value', got {raw.strip()!r}")
        if current is None:
            raise ConfigError(f"{path}:{number}: {key}: key outside of any [section]")
        if key in current:
            raise ConfigError(f"{path}:{number}: {key}: key set twice in its section")
        current[key] = _Entry(value.strip(), number)
    return sections


def _section_values(path: str, name: str, entries: Mapping[str, _Entry]) -> Dict[str, object]:
    schema = SCHEMA[name]
    values: Dict[str, object] = {}
    for key, entry in entries.items():
        if key not in schema:
            known = ", ".join(schema)
            raise ConfigError(f"{path}:{entry.line}: [{name}] {key}: unknown key (known: {known})")
    for key, (parse, default) in schema.items():
        found = entries.get(key)
        try:
            values[key] = parse(found.value if found else default)
        except ValueError as error:
            where = f"{path}:{found.line}" if found else f"{path}: (default)"
            raise ConfigError(f"{where}: [{name}] {key}: {error}") from None
    return values


def _domains(path: str, entries: Mapping[str, _Entry]) -> Dict[str, PrimarySpec]:
    domains: Dict[str, PrimarySpec] = {}
    for domain, entry in entries.items():
        try:
            domain = domain_name(domain)
        except ValueError:
            raise ConfigError(f"{path}:{entry.line}: [domains] {domain}: not a domain name"
                              ) from None
        if domain in domains:
            raise ConfigError(f"{path}:{entry.line}: [domains] {domain}: domain set twice")
        try:
            domains[domain] = _primary(entry.value)
        except ValueError as error:
            raise ConfigError(f"{path}:{entry.line}: [domains] {domain}: {error}") from None
    return domains


def parse_config(text: str, path: str = "<string>") -> Config:
    """Validate a whole configuration text; raise ConfigError naming file, line and key."""
    headers: Dict[str, int] = {}
    sections = _read_ini(text, path, headers)
    policyd = _section_values(path, "policyd", sections.get("policyd", {}))
    milter = _section_values(path, "milter", sections.get("milter", {}))
    postfix = _section_values(path, "postfix", sections.get("postfix", {}))
    notify = _section_values(path, "notify", sections.get("notify", {}))
    if milter["journal"] is None:
        milter["journal"] = f"{milter['ledger']}.journal"
    domains = _domains(path, sections.get("domains", {}))
    recipient_files: Tuple[str, ...] = policyd["recipients"]  # type: ignore[assignment]
    fleet = None
    if "fleet" in sections:
        values = _section_values(path, "fleet", sections["fleet"])
        if not values["database"]:
            raise ConfigError(f"{path}:{headers.get('fleet')}: [fleet] database: is required: "
                              f"a libpq URI "
                              f"(postgresql://...) or conninfo (host=... dbname=...)")
        fleet = FleetConfig(**values)  # type: ignore[arg-type]  # values typed by SCHEMA parsers
    return Config(
        path=path,
        policyd=PolicydConfig(**policyd),  # type: ignore[arg-type]  # values typed by SCHEMA parsers
        milter=MilterConfig(**milter),  # type: ignore[arg-type]  # (ditto)
        postfix=PostfixConfig(**postfix),  # type: ignore[arg-type]  # (ditto)
        domains=domains,
        notify=NotifyConfig(**notify),  # type: ignore[arg-type]  # (ditto)
        sources=_sources(path, recipient_files, sections, headers, domains),
        fleet=fleet,
    )


def _sources(path: str, recipient_files: Tuple[str, ...],
             sections: Mapping[str, Mapping[str, _Entry]], headers: Mapping[str, int],
             domains: Mapping[str, PrimarySpec]) -> Tuple[SourceSettings, ...]:
    """The recipient sources: ``[policyd] recipients`` files, then ``[recipients NAME]``.

    A source's ``domains`` must be domains of ``[domains]``; empty means all of them (filled in
    here for pulled sources; a file source keeps it empty: it speaks for what its file lists).
    Raises ConfigError naming file, line and key."""
    sources: List[SourceSettings] = [
        SourceSettings(name=file, type="file", driver=FileSettings(file))
        for file in recipient_files]
    names = set(recipient_files)
    for title, entries in sections.items():
        if not title.startswith(SOURCE_SECTION):
            continue
        name = title[len(SOURCE_SECTION):]
        try:
            source = parse_source(name, entries, headers.get(title))
        except SourceSettingsError as error:
            raise ConfigError(f"{path}:{error.line if error.line is not None else '?'}: "
                              f"[{error.section}] {error.key}: {error.reason}") from None
        if name in names:
            raise ConfigError(f"{path}:{headers.get(title)}: [{title}]: a source of this "
                              "name exists already")
        names.add(name)
        foreign = [d for d in source.domains if d not in domains]
        if foreign:
            line = entries["domains"].line
            raise ConfigError(f"{path}:{line}: [{title}] domains: {', '.join(foreign)} not in "
                              "[domains]")
        if not source.domains and source.type != "file":
            source = dataclasses.replace(source, domains=tuple(domains))
        sources.append(source)
    return tuple(sources)


def load_config(path: str = DEFAULT_CONFIG_PATH) -> Config:
    """Read and validate the configuration file; ConfigError if unreadable or invalid."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ConfigError(f"{path}: cannot read configuration: {reason}") from None
    return parse_config(text, os.path.abspath(path))


