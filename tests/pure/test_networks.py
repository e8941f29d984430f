"""The sender networks allowlist: patterns, IPv4/IPv6 CIDRs, client address forms."""
from __future__ import annotations

from pathlib import Path

import pytest

from backupmx.common.recipient_map import MapError
from backupmx.common.sender_networks import (
    SenderNetworks,
    load_sender_networks,
    parse_sender_networks,
)

RULES = """
# our own outbound relays may send as anyone of ours
@corp.test        192.0.2.0/24, 2001:db8:100::/48
boss@partner.test 198.51.100.7
*                 203.0.113.0/28
@v6only.test
    2001:db8:200::/64
"""


@pytest.fixture
def networks() -> SenderNetworks:
    return parse_sender_networks(RULES.splitlines(), "<rules>")


@pytest.mark.parametrize("sender,client,allowed", [
    ("anyone@corp.test", "192.0.2.1", True),
    ("anyone@corp.test", "192.0.2.255", True),
    ("anyone@corp.test", "192.0.3.1", False),
    ("Anyone@CORP.test", "192.0.2.1", True),
    ("anyone@corp.test", "2001:db8:100:ffff::1", True),
    ("anyone@corp.test", "2001:db8:101::1", False),
    ("anyone@corp.test", "ipv6:2001:db8:100::1", True),
    ("anyone@corp.test", "IPv6:2001:db8:100::1", True),
    ("anyone@corp.test", "::ffff:192.0.2.10", True),
    ("anyone@corp.test", "::ffff:10.0.0.1", False),
    ("boss@partner.test", "198.51.100.7", True),
    ("boss@partner.test", "198.51.100.8", False),
    ("clerk@partner.test", "198.51.100.7", False),
    ("someone@anywhere.test", "203.0.113.15", True),
    ("", "203.0.113.1", True),  # the null sender matches only *
    ("", "192.0.2.1", False),
    ("someone@anywhere.test", "203.0.113.16", False),
    ("x@v6only.test", "2001:db8:200::9", True),
    ("anyone@corp.test", "unknown", False),
    ("anyone@corp.test", "", False),
    ("anyone@sub.corp.test", "192.0.2.1", False),
])
def test_allows(networks: SenderNetworks, sender: str, client: str, allowed: bool) -> None:
    assert networks.allows(sender, client) is allowed


def test_empty_allowlist_allows_nothing() -> None:
    assert not SenderNetworks().allows("a@b.test", "192.0.2.1")
    assert not parse_sender_networks(["# nothing"]).allows("a@b.test", "192.0.2.1")


@pytest.mark.parametrize("item,network", [
    ("10.1.2.77/16", "10.1.0.0/16"),
    ("192.0.2.77/24", "192.0.2.0/24"),
    ("2001:db8::1/32", "2001:db8::/32"),
])
def test_host_bits_set_are_refused_with_the_network_postfix_suggests(item: str,
                                                                      network: str) -> None:
    # Postfix's cidr tables skip such a rule with this suggestion (measured against postmap in
    # tests/integration/test_postfix_addresses.py); never widened silently.
    with pytest.raises(MapError) as caught:
        parse_sender_networks(["@a.test 192.0.2.0/24\n", f"* 198.51.100.1, {item}\n"], "nets")
    assert str(caught.value) == (
        f"nets:line 2: non-null host address bits in {item!r}, perhaps you should use "
        f"{network!r} instead (Postfix's cidr tables skip such a rule)")


def test_a_leading_byte_order_mark_is_dropped_with_a_warning() -> None:
    networks = parse_sender_networks(["\ufeff@a.test 192.0.2.0/24\n"], "nets")
    assert networks.allows("x@a.test", "192.0.2.1")
    assert networks.warnings == (
        "nets: starts with a UTF-8 byte-order mark; ignoring it "
        "(Postfix would not: save the file without it)",)
    assert parse_sender_networks(["@a.test 192.0.2.0/24\n"]).warnings == ()


def test_rules_for_one_pattern_accumulate() -> None:
    networks = parse_sender_networks(["@a.test 192.0.2.0/24", "@A.test 198.51.100.0/24"])
    assert networks.allows("x@a.test", "192.0.2.1") and networks.allows("x@a.test", "198.51.100.1")


@pytest.mark.parametrize("text,line", [
    ("@a.test 192.0.2.0/24\n@b.test 192.0.2.0/33\n", 2),
    ("@a.test not-a-network\n", 1),
    ("@a.test 192.0.2.0/24\n\n# c\n@b.test\n", 4),  # no network
    ("@a.test 192.0.2.1\nnoat.test 192.0.2.1\n", 2),  # pattern without @
    ("  192.0.2.1\n", 1),  # continuation at the top
])
def test_bad_rules_name_the_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "sender_networks"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(MapError) as caught:
        load_sender_networks(str(path))
    assert str(caught.value).startswith(f"{path}:line {line}:")


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "sender_networks"
    path.write_text(RULES, encoding="utf-8")
    networks = load_sender_networks(str(path))
    assert networks.source == str(path)
    assert networks.allows("a@corp.test", "192.0.2.9")


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(MapError, match="cannot read"):
        load_sender_networks(str(tmp_path / "missing"))
    latin = tmp_path / "latin"
    latin.write_bytes(b"j\xfcrgen@a.test 192.0.2.1\n")
    with pytest.raises(MapError, match=f"^{latin}: not UTF-8"):
        load_sender_networks(str(latin))
