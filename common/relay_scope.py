"""Which configured relay domain a recipient domain falls under, as Postfix relays it.

Postfix relays ``sub.example.test`` for ``relay_domains = example.test`` when
``parent_domain_matches_subdomains`` lists relay_domains (its default up to compatibility level
3.6 on Postfix 3.7), and for a ``.example.test`` entry always (postconf(5)). policyd must judge
such a recipient with the map and the primary of ``example.test``: answering "not ours" there
lets Postfix accept mail that later bounces to a forged sender. Names Postfix delivers locally
(mydestination, virtual_mailbox_domains, virtual_alias_domains) are never relay mail.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Mapping, Optional, Sequence, Tuple

from backupmx.common.addresses import normalize_domain
from backupmx.common.postfix_values import (
    domain_list_matches,
    parent_matches_subdomains,
    split_list,
)

#: the Postfix parameters a RelayScope is built from (``postconf -x`` values)
PARAMETERS = ("relay_domains", "parent_domain_matches_subdomains", "mydestination",
              "virtual_mailbox_domains", "virtual_alias_domains")
LOCAL_LISTS = ("mydestination", "virtual_mailbox_domains", "virtual_alias_domains")
#: answers remembered per scope; a flood of random subdomains clears it rather than grow it
CACHE_SIZE = 10_000


@dataclass(frozen=True)
class RelayScope:
    """Answers ``owner(domain)``: the configured relay domain responsible for a recipient
    domain, or None when it is none of ours.

    ``postconf`` holds the PARAMETERS as ``postconf -x`` prints them; None means Postfix could
    not be read, and then only names configured exactly are ours (judging a subdomain without
    knowing whether Postfix delivers it locally could refuse a valid local user).
    """

    configured: FrozenSet[str]
    postconf: Optional[Mapping[str, str]] = None
    _cache: Dict[str, Optional[str]] = field(default_factory=dict, compare=False, repr=False)

    def owner(self, domain: str) -> Optional[str]:
        """The configured domain ``domain`` (normalised, lower-case) falls under, or None."""
        if domain in self.configured:
            return domain
        if self.postconf is None or "." not in domain:
            return None
        cache = self._cache
        if domain in cache:
            return cache[domain]
        if len(cache) >= CACHE_SIZE:
            cache.clear()
        found = cache[domain] = self._owner(domain, self.postconf)
        return found

    def _owner(self, domain: str, postconf: Mapping[str, str]) -> Optional[str]:
        parent = _configured_parent(domain, self.configured)
        if parent is None:
            return None
        for name in LOCAL_LISTS:
            local = domain_list_matches(postconf.get(name, ""), domain,
                                        parent_matches_subdomains(postconf, name))
            if local is not False:  # delivered here, or a table we cannot query: not ours
                return None
        relayed = domain_list_matches(postconf.get("relay_domains", ""), domain,
                                      parent_matches_subdomains(postconf, "relay_domains"))
        return parent if relayed else None


def _configured_parent(domain: str, configured: FrozenSet[str]) -> Optional[str]:
    """The nearest parent domain of ``domain`` that is configured, if any."""
    labels = domain.split(".")
    for index in range(1, len(labels)):
        parent = ".".join(labels[index:])
        if parent in configured:
            return parent
    return None


def unconfigured_relay_names(relay_domains: str, configured: Sequence[str]
                             ) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """Names in ``relay_domains`` that no configured domain covers, and its tables.

    Postfix relays mail for those names, but policyd would not check a single recipient of
    theirs: ``backupmx check`` fails on them. Tables (``type:name``, ``/file``) cannot be listed,
    so they are returned apart, for a warning.
    """
    names = frozenset(normalize_domain(d) for d in configured)
    missing = []
    tables = []
    for item in split_list(relay_domains.lower()):
        if item.startswith("!"):
            continue
        if ":" in item or item.startswith("/"):
            tables.append(item)
            continue
        name = normalize_domain(item.lstrip("."))
        if name and name not in names and _configured_parent(name, names) is None:
            missing.append(item)
    return tuple(missing), tuple(tables)
