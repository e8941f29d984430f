"""RelayScope: the configured domain a recipient domain falls under, by Postfix's settings.

The rules are common.postfix_values' (checked against a real Postfix in
tests/integration/test_postfix_values_real.py); tests/integration/test_subdomains.py compares
whole answers with Postfix's own relay_recipient_maps recipe.
"""
from __future__ import annotations

from typing import Dict, Optional

import pytest

from backupmx.common.relay_scope import CACHE_SIZE, RelayScope, unconfigured_relay_names

PARENT = "debug_peer_list,fast_flush_domains,mynetworks,relay_domains"


def scope(relay_domains: str, parent: str = PARENT, **local: str) -> RelayScope:
    postconf: Dict[str, str] = {"relay_domains": relay_domains,
                                "parent_domain_matches_subdomains": parent, **local}
    return RelayScope(frozenset({"example.test", "other.test"}), postconf)


@pytest.mark.parametrize("relay, parent, domain, owner", [
    ("example.test", PARENT, "example.test", "example.test"),
    ("example.test", PARENT, "sub.example.test", "example.test"),
    ("example.test", PARENT, "a.b.example.test", "example.test"),
    ("example.test", "", "sub.example.test", None),           # no parent matching
    (".example.test, example.test", "", "sub.example.test", "example.test"),
    ("!sub.example.test, example.test", PARENT, "sub.example.test", None),
    ("!sub.example.test, example.test", PARENT, "x.sub.example.test", None),  # also excluded
    ("example.test", PARENT, "xexample.test", None),
    ("example.test", PARENT, "unrelated.test", None),
    ("hash:/etc/postfix/relay", PARENT, "sub.example.test", None),  # cannot tell: not ours
])
def test_owner(relay: str, parent: str, domain: str, owner: Optional[str]) -> None:
    assert scope(relay, parent).owner(domain) == owner


def test_locally_delivered_subdomains_are_never_relay_mail() -> None:
    local = scope("example.test", mydestination="mail.example.test",
                  virtual_mailbox_domains="hash:/etc/postfix/vmail")
    assert local.owner("mail.example.test") is None
    assert local.owner("other.example.test") is None  # the table might list it
    assert scope("example.test", mydestination="mail.example.test").owner(
        "www.example.test") == "example.test"


def test_unknown_postfix_judges_exact_names_only() -> None:
    blind = RelayScope(frozenset({"example.test"}))
    assert blind.owner("example.test") == "example.test"
    assert blind.owner("sub.example.test") is None


def test_cache_is_bounded() -> None:
    relay = scope("example.test")
    for number in range(CACHE_SIZE + 10):
        relay.owner(f"u{number}.example.test")
    assert len(relay._cache) <= CACHE_SIZE


def test_relay_names_not_configured() -> None:
    assert unconfigured_relay_names("example.test, .example.test, sub.example.test, "
                                    "!x.test, third.test, hash:/t", ["example.test"]) == (
        ("third.test",), ("hash:/t",))
    assert unconfigured_relay_names("", ["example.test"]) == ((), ())
