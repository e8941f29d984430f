"""backupmx.conf: one strict INI file for every backupmx program.

configparser forgets line numbers and accepts any key, and an admin who mistypes a key must be told
where, so this module reads the (simple) INI syntax itself and validates every value against a
schema. Every error names the file, the line and the key. Values not written take the embedded
defaults below.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from backupmx.common.addresses import normalize_domain
from backupmx.common.listen import ListenAddress, optional_listen, parse_host_port, parse_listen

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
    idle_timeout: float
    max_line_length: int
    max_attributes: int
    metrics: Optional[ListenAddress]
    user: Optional[str]


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
class Config:
    path: str
    policyd: PolicydConfig
    milter: MilterConfig
    postfix: PostfixConfig
    domains: Mapping[str, PrimarySpec] = field(default_factory=dict)
    notify: NotifyConfig = field(default_factory=NotifyConfig)


# ---- value parsers: text -> value, ValueError with a short reason -----------------------------

def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{text!r} must be a positive number of seconds")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"{text!r} must be a positive whole number")
    return int(text)


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("yes", "true", "on", "1"):
        return True
    if lowered in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"{text!r} is not yes or no")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text.lower()
    return parse


def _path_list(text: str) -> Tuple[str, ...]:
    paths = tuple(p.strip() for p in text.split(",") if p.strip())
    for path in paths:
        _absolute_path(path)
    return paths


def _absolute_path(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError(f"{text!r} must be an absolute path")
    return text


def _optional_path(text: str) -> Optional[str]:
    return _absolute_path(text) if text else None


def _optional_text(text: str) -> Optional[str]:
    return text or None


def _delimiter(text: str) -> Optional[str]:
    if len(text) > 8 or any(c.isspace() or c == "@" for c in text):
        raise ValueError(f"{text!r} is not a set of delimiter characters")
    return text or None


def _user_name(text: str) -> Optional[str]:
    if text and not re.fullmatch(r"[a-z_][a-z0-9_.-]*\$?", text):
        raise ValueError(f"{text!r} is not a user name")
    return text or None


def _duration(text: str) -> int:
    """Postfix's time syntax (common.postfix_values.parse_time): ``15m``, ``24h``, ``2d``,
    or a bare number of seconds; 0 allowed."""
    from backupmx.common.postfix_values import parse_time
    try:
        return parse_time(text, default_unit="s")
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (like 900, 15m, 24h or 2d)") from None


def _mail_address(text: str) -> Optional[str]:
    if text and (text.count("@") != 1 or text.startswith("@") or text.endswith("@")
                 or any(c.isspace() or c in "<>,;\"" for c in text)):
        raise ValueError(f"{text!r} is not a plain mail address (user@domain)")
    return text or None


def _primary(text: str) -> PrimarySpec:
    if text.lower() == "mx":
        return PrimarySpec(host=None)
    host, port = parse_host_port(text, SMTP_PORT)
    return PrimarySpec(host=host, port=port)


_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9-]{1,63}$")

# section -> key -> (parser, embedded default as it would be written in the file)
SCHEMA: Dict[str, Dict[str, Tuple[Callable[[str], object], str]]] = {
    "policyd": {
        "listen": (parse_listen, "inet:127.0.0.1:10040"),
        "recipients": (_path_list, "/etc/backupmx/relay_recipients"),
        "sender_networks": (_optional_path, ""),
        "primary_up_action": (_choice(*PRIMARY_UP_ACTIONS), "defer"),
        "probe_interval": (_positive_seconds, "30"),
        # while a primary is reported down: probe it this often, so its return is seen soon
        "probe_interval_down": (_positive_seconds, "10"),
        "probe_timeout": (_positive_seconds, "5"),
        # run `backupmx flush DOMAIN --on-return` when a domain's primary is reported up again
        "flush_on_return": (_boolean, "yes"),
        # hysteresis: consecutive probes that must agree before the reported state changes
        "primary_up_after": (_positive_int, "2"),
        "primary_down_after": (_positive_int, "1"),
        "recipient_delimiter": (_delimiter, ""),
        "log_accepts": (_boolean, "no"),
        "map_check_interval": (_positive_seconds, "5"),
        "idle_timeout": (_positive_seconds, "600"),
        "max_line_length": (_positive_int, "8192"),
        "max_attributes": (_positive_int, "200"),
        "metrics": (optional_listen, ""),
        "user": (_user_name, ""),
    },
    "milter": {
        "listen": (parse_listen, "inet:127.0.0.1:8890"),
        "ledger": (_absolute_path, "/var/lib/backupmx/ledger.sqlite3"),
        "ledger_sync": (_choice("normal", "full"), "normal"),
        "journal": (_optional_path, ""),
        "user": (_user_name, ""),
    },
    "postfix": {
        "config_directory": (_optional_path, ""),
    },
    # off unless mail_to or command is set; evaluated by every `backupmx flush --auto` run
    "notify": {
        "mail_to": (_mail_address, ""),
        "command": (_optional_path, ""),
        "held_after": (_duration, "15m"),
        "repeat": (_duration, "24h"),
        "bounce_warning": (_duration, "24h"),
    },
}


@dataclass(frozen=True)
class _Entry:
    value: str
    line: int


def _read_ini(text: str, path: str) -> Dict[str, Dict[str, _Entry]]:
    """Sections of ``key = value`` lines; ``#``/``;`` comments, also after a value."""
    sections: Dict[str, Dict[str, _Entry]] = {}
    current: Optional[Dict[str, _Entry]] = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = re.sub(r"\s[;#].*$", "", raw).strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(f"{path}:{number}: malformed section header {raw.strip()!r}")
            name = line[1:-1].strip().lower()
            if name not in SCHEMA and name != "domains":
                known = ", ".join([*SCHEMA, "domains"])
                raise ConfigError(f"{path}:{number}: [{name}]: unknown section (known: {known})")
            if name in sections:
                raise ConfigError(f"{path}:{number}: section [{name}] appears twice")
            current = sections[name] = {}
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
        domain = normalize_domain(domain)
        if not _DOMAIN_RE.match(domain):
            raise ConfigError(f"{path}:{entry.line}: [domains] {domain}: not a domain name")
        if domain in domains:
            raise ConfigError(f"{path}:{entry.line}: [domains] {domain}: domain set twice")
        try:
            domains[domain] = _primary(entry.value)
        except ValueError as error:
            raise ConfigError(f"{path}:{entry.line}: [domains] {domain}: {error}") from None
    return domains


def parse_config(text: str, path: str = "<string>") -> Config:
    """Validate a whole configuration text; raise ConfigError naming file, line and key."""
    sections = _read_ini(text, path)
    policyd = _section_values(path, "policyd", sections.get("policyd", {}))
    milter = _section_values(path, "milter", sections.get("milter", {}))
    postfix = _section_values(path, "postfix", sections.get("postfix", {}))
    notify = _section_values(path, "notify", sections.get("notify", {}))
    if milter["journal"] is None:
        milter["journal"] = f"{milter['ledger']}.journal"
    return Config(
        path=path,
        policyd=PolicydConfig(**policyd),  # type: ignore[arg-type]  # values typed by SCHEMA parsers
        milter=MilterConfig(**milter),  # type: ignore[arg-type]  # (ditto)
        postfix=PostfixConfig(**postfix),  # type: ignore[arg-type]  # (ditto)
        domains=_domains(path, sections.get("domains", {})),
        notify=NotifyConfig(**notify),  # type: ignore[arg-type]  # (ditto)
    )


def load_config(path: str = DEFAULT_CONFIG_PATH) -> Config:
    """Read and validate the configuration file; ConfigError if unreadable or invalid."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ConfigError(f"{path}: cannot read configuration: {reason}") from None
    return parse_config(text, os.path.abspath(path))


def check_readable(paths: List[str]) -> None:
    """Fail early, with the path, when a file the configuration names cannot be read."""
    for path in paths:
        try:
            with open(path, "rb"):
                pass
        except OSError as error:
            raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
