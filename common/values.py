"""Value parsers for backupmx.conf: text -> value, or ValueError with a short reason.

One definition of each syntax for every section (the daemons' settings, ``[domains]``, the
``[recipients NAME]`` sources); the callers add file, line, section and key to the message.
"""
from __future__ import annotations

import re
from typing import Callable, Optional, Tuple

from backupmx.common.addresses import normalize_domain

# RFC 1035 labels (letters, digits, hyphens; underscores too, as DNS names in the wild and
# Postfix accept them), at most 253 characters in all
_DOMAIN_NAME = re.compile(r"(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*"
                          r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def positive_seconds(text: str) -> float:
    """A positive, finite number of seconds (``30``, ``0.5``)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise ValueError(f"{text!r} must be a positive number of seconds")
    return value


def positive_int(text: str) -> int:
    """A positive whole number."""
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"{text!r} must be a positive whole number")
    return int(text)


def boolean(text: str) -> bool:
    """``yes``/``no`` (also true/false, on/off, 1/0), any case."""
    lowered = text.lower()
    if lowered in ("yes", "true", "on", "1"):
        return True
    if lowered in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"{text!r} is not yes or no")


def choice(*choices: str) -> Callable[[str], str]:
    """A parser accepting one of ``choices`` (any case), returned lower-case."""
    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text.lower()
    return parse


def absolute_path(text: str) -> str:
    """An absolute file path."""
    if not text.startswith("/"):
        raise ValueError(f"{text!r} must be an absolute path")
    return text


def domain_name(text: str) -> str:
    """A domain name, normalised (common.addresses.normalize_domain)."""
    domain = normalize_domain(text)
    if not _DOMAIN_NAME.fullmatch(domain):
        raise ValueError(f"{text.strip()!r} is not a domain name")
    return domain


def domain_list(text: str) -> Tuple[str, ...]:
    """Comma-separated domain names, each once."""
    domains = tuple(domain_name(part) for part in text.split(",") if part.strip())
    if len(set(domains)) != len(domains):
        raise ValueError("a domain is listed twice")
    return domains


def share(text: str) -> float:
    """A share: ``20%`` or ``0.2`` -> 0.2, from 0 (0%) to 1 (100%)."""
    number = text[:-1].strip() if text.endswith("%") else text
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a share such as 20% or 0.2") from None
    if text.endswith("%"):
        value /= 100
    if not 0 <= value <= 1:
        raise ValueError(f"{text!r} must be between 0% and 100%")
    return value


def postfix_duration(text: str) -> int:
    """Seconds, in Postfix's time syntax (common.postfix_values.parse_time): ``15m``, ``24h``,
    ``2d``, or a bare number of seconds; 0 allowed."""
    from backupmx.common.postfix_values import parse_time
    try:
        return parse_time(text, default_unit="s")
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (like 900, 15m, 24h or 2d)") from None


def optional_mail_address(text: str) -> Optional[str]:
    """A plain ``user@domain`` address (no brackets, comments or lists), or None when empty."""
    if text and (text.count("@") != 1 or text.startswith("@") or text.endswith("@")
                 or any(c.isspace() or c in "<>,;\"()" for c in text)):
        raise ValueError(f"{text!r} is not a plain mail address (user@domain)")
    return text or None
