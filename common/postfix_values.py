"""Postfix's own value syntax, one definition each: time values, lists, domain lists.

The rules are Postfix's (postconf(5) "Postfix time values" and "parent_domain_matches_subdomains";
the matching itself is util/match_list.c and match_ops.c ``match_hostname``), and the tests take
their expected answers from a real Postfix: ``postmap`` refusing a bad time value, and a private
smtpd relaying or not for a name under ``relay_domains``.
"""
from __future__ import annotations

import re
from typing import Callable, List, Mapping, Optional

#: (table as written in main.cf, key) -> found?, or None when the table could not be queried
TableLookup = Callable[[str, str], Optional[bool]]

_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TIME_RE = re.compile(r"(\d*)([smhdw]?)")


def parse_time(text: str, default_unit: str = "s") -> int:
    """Seconds in a Postfix time value: ``100s``, ``5d``, or a bare number in the parameter's
    default unit (``d`` for maximal_queue_lifetime, ``s`` for most others).

    Postfix's rule (global/conv_time.c, measured on Postfix 3.7 with ``postmap`` and the
    bounded ``in_flow_delay``): a number, then optionally one lower-case unit letter s, m, h, d
    or w; whatever follows a unit letter is ignored, so ``1h30m`` is one hour, not 90 minutes.
    Anything else after the number (a space, an upper-case or unknown unit, a dot) is an error.
    A unit letter without a number counts as 0 (``h`` and ``h1`` are 0 seconds to Postfix).
    Leading and trailing whitespace is dropped, as main.cf does. Raises ValueError.
    """
    value = text.strip()
    match = _TIME_RE.match(value)
    assert match is not None  # the pattern matches the empty string
    number, unit = match.groups()
    if not (number or unit) or (not unit and match.end() != len(value)):
        raise ValueError(f"{text!r} is not a Postfix time value")
    return int(number or 0) * _TIME_UNITS[unit or default_unit]


def split_list(value: str) -> List[str]:
    """Split a Postfix list on commas and whitespace, keeping ``{ ... }`` groups as one item."""
    items: List[str] = []
    current: List[str] = []
    depth = 0
    for char in value:
        if char == "{":
            depth += 1
        elif char == "}":
            depth = max(depth - 1, 0)
        if depth == 0 and (char == "," or char.isspace()):
            if current:
                items.append("".join(current))
                current = []
            continue
        current.append(char)
    if current:
        items.append("".join(current))
    return items


def parent_matches_subdomains(postconf: Mapping[str, str], parameter: str) -> bool:
    """Does ``parameter`` (e.g. ``relay_domains``) let ``example.test`` match its subdomains?

    Postfix decides with ``parent_domain_matches_subdomains`` (a list of parameter names; its
    default depends on compatibility_level): read its value from postconf, never assume it.
    """
    listed = split_list(postconf.get("parent_domain_matches_subdomains", ""))
    return parameter in listed


def _is_table(pattern: str) -> bool:
    return ":" in pattern or pattern.startswith("/")


def _name_matches(name: str, pattern: str, parent: bool) -> bool:
    """match_ops.c match_hostname for a plain pattern (both already lower-case, no dot at end)."""
    if name == pattern:
        return True
    if parent:
        return not pattern.startswith(".") and name.endswith("." + pattern)
    return pattern.startswith(".") and len(name) > len(pattern) and name.endswith(pattern)


def _table_matches(name: str, table: str, parent: bool, lookup: Optional[TableLookup]
                   ) -> Optional[bool]:
    """A table pattern: the name, then each parent domain (as ``parent`` with the flag, as
    ``.parent`` without it), like match_hostname."""
    if lookup is None:
        return None
    unknown = False
    keys = [name]
    labels = name.split(".")
    for index in range(1, len(labels)):
        parent_name = ".".join(labels[index:])
        keys.append(parent_name if parent else "." + parent_name)
    for key in keys:
        found = lookup(table, key)
        if found:
            return True
        unknown = unknown or found is None
    return None if unknown else False


def domain_list_matches(value: str, domain: str, parent: bool,
                        lookup: Optional[TableLookup] = None) -> Optional[bool]:
    """Is ``domain`` in the Postfix domain list ``value`` (e.g. relay_domains as ``postconf -x``
    prints it)?

    Items are names, ``.parent`` forms, ``type:table`` or ``/file`` tables, each optionally
    negated with ``!``; the first item that matches decides (match_list.c), so
    ``!sub.example.test, example.test`` excludes that subdomain. ``parent`` is
    :func:`parent_matches_subdomains` for the parameter. ``/file`` items and tables are looked
    up with ``lookup``; None when the answer depends on a table that could not be queried.
    """
    name = domain.strip().lower().rstrip(".")
    # a table that could not be queried might have matched: it could have answered True (or
    # False when negated) before any later item decides
    maybe_true = maybe_false = False
    for item in split_list(value.lower()):
        negated = item.startswith("!")
        pattern = item[1:] if negated else item
        if _is_table(pattern):
            found = _table_matches(name, pattern, parent, lookup)
            if found is None:
                maybe_false = maybe_false or negated
                maybe_true = maybe_true or not negated
                continue
        else:
            found = _name_matches(name, pattern.rstrip("."), parent)
        if found:
            answer = not negated
            return None if (maybe_false if answer else maybe_true) else answer
    return None if maybe_true else False
