"""The sender networks allowlist: which client networks may send as which senders.

One rule per line: ``PATTERN  NETWORK[, NETWORK...]`` where PATTERN is ``user@domain``,
``@domain`` or ``*`` and NETWORK an IPv4 or IPv6 address or CIDR. ``#`` starts a comment line.
A client inside a network listed for its sender skips the primary-MX check (e.g. the
organisation's own outbound relays, which must always reach the backup).

A network with host bits set (``10.1.2.77/16``) is an error naming file and line, as Postfix's
cidr tables refuse such a rule ("non-null host address bits ... skipping this rule", measured
with ``postmap -q ADDRESS cidr:FILE`` on Postfix 3.7): it was never widened silently. A UTF-8
byte-order mark at the start of the file is dropped with a warning.
"""
from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple, Union

from backupmx.common.recipient_map import MapError, logical_lines, strip_bom

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


@dataclass(frozen=True)
class SenderNetworks:
    """Pattern (``user@domain``, ``@domain`` or ``*``) -> networks allowed for it."""

    rules: Dict[str, Tuple[Network, ...]] = field(default_factory=dict)
    source: str = ""
    #: one line each, naming the file: a dropped byte-order mark
    warnings: Tuple[str, ...] = ()

    def allows(self, sender: str, client_address: str) -> bool:
        """True when client_address lies in a network listed for this sender (any case)."""
        rules = self.rules
        if not rules:
            return False
        sender = sender.lower()
        at = sender.rfind("@")
        candidates = (rules.get(sender), rules.get(sender[at:]) if at >= 0 else None,
                      rules.get("*"))
        if not (candidates[0] or candidates[1] or candidates[2]):
            return False
        address = _client_ip(client_address)
        if address is None:
            return False
        return any(
            address in network
            for networks in candidates if networks
            for network in networks
            if network.version == address.version
        )


@functools.lru_cache(maxsize=4096)
def _client_ip(text: str) -> Optional[Address]:
    """The client's address, IPv4-mapped IPv6 unwrapped; None if not an address.

    Cached: ipaddress parsing costs about 2 us, and a client sends one request per recipient.
    """
    text = text.strip()
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def parse_sender_networks(lines: Iterable[str], source: str = "<text>") -> SenderNetworks:
    """Parse the allowlist text; MapError naming file and line on the first bad rule.

    Bad rules: no network, a pattern that is not user@domain, @domain or ``*``, an item that is
    not an IP address or network, a network with host bits set.
    """
    rules: Dict[str, List[Network]] = {}
    warnings: List[str] = []
    try:
        for number, text in logical_lines(strip_bom(lines, source, warnings)):
            parts = text.split(None, 1)
            if len(parts) < 2:
                raise MapError(f"line {number}: expected 'PATTERN NETWORK[, NETWORK...]'")
            pattern = parts[0].lower()
            if pattern != "*" and "@" not in pattern:
                raise MapError(f"line {number}: {parts[0]!r} is not user@domain, @domain or *")
            for item in parts[1].replace(",", " ").split():
                try:
                    network = ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise MapError(f"line {number}: {item!r} is not an IP network") from None
                if network.network_address != ipaddress.ip_interface(item).ip:
                    raise MapError(
                        f"line {number}: non-null host address bits in {item!r}, perhaps you "
                        f"should use {str(network)!r} instead (Postfix's cidr tables skip "
                        "such a rule)")
                rules.setdefault(pattern, []).append(network)
    except MapError as error:
        raise MapError(f"{source}:{error}") from None
    return SenderNetworks({k: tuple(v) for k, v in rules.items()}, source, tuple(warnings))


def load_sender_networks(path: str) -> SenderNetworks:
    """Read the allowlist file (blocking: call it off the reactor thread)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_sender_networks(handle, path)
    except OSError as error:
        raise MapError(f"{path}: cannot read: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise MapError(f"{path}: not UTF-8 text ({error.reason})") from None
