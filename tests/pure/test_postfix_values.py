"""Postfix value syntax (common.postfix_values): time values, lists, domain lists.

The cases where earlier copies of these rules disagreed (``1h30m``, `` 5 d ``, a subdomain, ``!``
exclusions) have their expected answers measured on the real Postfix in
tests/integration/test_postfix_values_real.py; these are the fast, pure versions.
"""
from __future__ import annotations

from typing import Optional

import pytest

from backupmx.common.postfix_values import (
    domain_list_matches,
    parent_matches_subdomains,
    parse_time,
    split_list,
)


@pytest.mark.parametrize("text, unit, seconds", [
    ("30d", "d", 30 * 86400), ("5", "d", 5 * 86400), ("100s", "s", 100), ("100", "s", 100),
    ("2w", "s", 14 * 86400), ("0", "d", 0), (" 7d ", "s", 7 * 86400), ("05m", "s", 300),
    # Postfix reads one number and one unit and ignores the rest (measured, see the real test)
    ("1h30m", "s", 3600), ("1h 30m", "d", 3600), ("1d1d", "s", 86400), ("1hx", "s", 3600),
    ("h", "s", 0), ("h1", "d", 0),
])
def test_postfix_time_values(text: str, unit: str, seconds: int) -> None:
    assert parse_time(text, unit) == seconds


@pytest.mark.parametrize("text", ["", "x", "5x", "-1d", "1.5d", "5 d", " 5 d ", "2W", "7D",
                                  "1 m", "+"])
def test_bad_time_values(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


def test_lists_keep_brace_groups_whole() -> None:
    assert split_list("a, b\tc,{ x, y=1 } d") == ["a", "b", "c", "{ x, y=1 }", "d"]
    assert split_list("") == [] and split_list(" , ,") == []


def test_parent_matching_is_read_from_postfix() -> None:
    postconf = {"parent_domain_matches_subdomains": "debug_peer_list,relay_domains"}
    assert parent_matches_subdomains(postconf, "relay_domains")
    assert not parent_matches_subdomains(postconf, "fast_flush_domains")
    assert not parent_matches_subdomains({}, "relay_domains")


@pytest.mark.parametrize("value, domain, parent, expected", [
    ("a.test, b.test", "a.test", True, True),
    ("a.test b.test", "B.test", True, True),
    ("a.test", "a.test.", False, True),
    ("", "a.test", True, False),
    ("other.test", "a.test", True, False),
    ("test", "a.test", True, True),            # parent matches subdomain (flag set)
    ("test", "a.test", False, False),          # ... and not without it
    ("example.test", "sub.example.test", True, True),
    ("example.test", "sub.example.test", False, False),
    (".example.test", "sub.example.test", False, True),
    (".example.test", "example.test", False, False),
    (".a.test", "a.test", True, False),        # only subdomains
    ("!a.test, test", "a.test", True, False),  # excluded first
    ("!sub.example.test, example.test", "sub.example.test", True, False),
    ("!sub.example.test, example.test", "x.example.test", True, True),
    ("!example.test, example.test", "example.test", True, False),
    ("example.test, !example.test", "example.test", True, True),
    ("hash:/etc/postfix/flush", "a.test", True, None),
    ("a.test, hash:/x", "a.test", True, True),
    ("hash:/x, a.test", "a.test", True, True),  # the table could only have said yes first
    ("!hash:/x, a.test", "a.test", True, None),  # ... or, negated, no
    ("hash:/x, !a.test", "a.test", True, None),
    ("!hash:/x", "a.test", True, False),
])
def test_domain_lists(value: str, domain: str, parent: bool, expected: Optional[bool]) -> None:
    assert domain_list_matches(value, domain, parent) is expected


def test_tables_are_looked_up_with_parent_domains() -> None:
    asked = []

    def lookup(table: str, key: str) -> Optional[bool]:
        asked.append(key)
        return key in ("example.test", ".example.test")

    assert domain_list_matches("hash:/t", "a.b.example.test", True, lookup) is True
    assert asked == ["a.b.example.test", "b.example.test", "example.test"]
    asked.clear()
    assert domain_list_matches("hash:/t", "a.example.test", False, lookup) is True
    assert asked == ["a.example.test", ".example.test"]
    assert domain_list_matches("hash:/t", "other.test", False, lambda t, k: False) is False
