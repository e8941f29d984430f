"""The safety rules of a recipient sync, as pure functions of plain data (no I/O).

A sync's raw rows become map keys grouped by the source domain they fall under
(``classify``); each domain's new key set is then applied or held back against the last good
one (``judge``): a domain with no address at all, or one losing more than ``max_shrink`` of its
addresses, is held back until the admin accepts it (``backupmx recipients accept NAME``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterable, Mapping, Optional, Sequence, Set

from backupmx.common.recipient_map import address_key


@dataclass(frozen=True)
class Classified:
    """A sync's rows sorted out.

    ``keys``: source domain -> map keys (``local@domain`` or ``@domain``, in the form
    ``common.recipient_map.address_key`` gives) of that domain or its subdomains; every domain of
    the source is present, with an empty set when no row named it. ``ignored``: rows of other
    domains; ``malformed``: rows that are no address, ``first_malformed`` the first of them with
    the reason (``'not an address': no '@domain'``)."""

    keys: Dict[str, FrozenSet[str]] = field(default_factory=dict)
    ignored: int = 0
    malformed: int = 0
    first_malformed: Optional[str] = None

    def count(self, domain: str) -> int:
        return len(self.keys.get(domain, ()))


def owner_of(domain: str, domains: Sequence[str]) -> Optional[str]:
    """The source domain ``domain`` falls under: itself, or the nearest parent among
    ``domains`` (``a.example.test`` under ``example.test``); None when outside all of them."""
    if domain in domains:
        return domain
    best: Optional[str] = None
    for candidate in domains:
        if domain.endswith("." + candidate) and (best is None or len(candidate) > len(best)):
            best = candidate
    return best


def classify(rows: Iterable[str], domains: Sequence[str]) -> Classified:
    """Normalise raw rows (``address_key``) and group them by source domain (``owner_of``)."""
    keys: Dict[str, Set[str]] = {domain: set() for domain in domains}
    ignored = malformed = 0
    first: Optional[str] = None
    for row in rows:
        try:
            local, domain = address_key(row)
        except ValueError as error:
            malformed += 1
            if first is None:
                first = f"{row[:120]!r}: {error}"
            continue
        owner = owner_of(domain, domains)
        if owner is None:
            ignored += 1
            continue
        keys[owner].add(f"{local}@{domain}")
    return Classified({d: frozenset(k) for d, k in keys.items()}, ignored, malformed, first)


def loses_too_much(old_count: int, new_count: int, max_shrink: float) -> bool:
    """The one shrink rule, for synced sources and for map files alike: more than
    ``max_shrink`` (a fraction 0..1) of ``old_count`` keys lost, compared as counts (as many new
    keys as old ones lost is not a shrink). A valid user must never get a 5xx because a file or
    a directory answer was caught half-way."""
    lost = old_count - new_count
    return lost > 0 and lost > max_shrink * old_count


def judge(old_count: Optional[int], new_count: int, max_shrink: float) -> Optional[str]:
    """Why a domain's new result must be held back, or None to apply it.

    ``old_count``: addresses in the last good snapshot (None: none yet). Held back: no address
    at all; or more than ``max_shrink`` (a fraction 0..1) of the old addresses lost, compared as
    counts (a result with as many new addresses as it lost old ones is not a shrink)."""
    if new_count == 0:
        return "the source returned no address for it"
    if old_count and loses_too_much(old_count, new_count, max_shrink):
        lost = old_count - new_count
        return (f"it would shrink from {old_count} to {new_count} addresses "
                f"({lost / old_count:.0%} lost, more than max_shrink {max_shrink:.0%})")
    return None


def plan(old_counts: Mapping[str, int], new: Classified, max_shrink: float,
         only: Optional[Iterable[str]] = None) -> Dict[str, Optional[str]]:
    """Domain -> None (apply) or the reason to hold it back, for each domain of ``new`` (or of
    ``only``, when given: the other domains are left as they are)."""
    domains = list(only) if only is not None else list(new.keys)
    return {d: judge(old_counts.get(d), new.count(d), max_shrink) for d in domains}


def fresh_until(applied_at: Optional[float], stale_after: float) -> float:
    """When a domain's snapshot applied at ``applied_at`` goes stale (Unix seconds);
    minus infinity when nothing was ever applied."""
    return float("-inf") if applied_at is None else applied_at + stale_after


def domains_fresh_until(per_source: Iterable[Mapping[str, float]]) -> Dict[str, float]:
    """Merge each source's domain -> deadline: a domain is fresh while at least one of its
    sources is (the latest deadline wins)."""
    merged: Dict[str, float] = {}
    for deadlines in per_source:
        for domain, deadline in deadlines.items():
            if deadline > merged.get(domain, float("-inf")) or domain not in merged:
                merged[domain] = deadline
    return merged
