"""One sync of one recipient source: fetch, sort out, apply or hold back, store.

Blocking (the drivers block): run by ``backupmx recipients sync``, a process of its own, never
on policyd's reactor thread. The same ``apply_rows`` serves ``backupmx recipients import`` (a push
source) and ``accept`` applies what was held back. Every function takes the source's lock.

Log lines (``log``: one line each, for stderr/journald) are written once per change of state:
a failure when its kind or message differs from the last attempt's, a recovery, a domain newly
held back, a change in the count of malformed or ignored rows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence

from backupmx.common.snapshots import DomainState, HeldBack, SnapshotStore, SourceState
from backupmx.common.source_rules import Classified, classify, plan
from backupmx.common.source_settings import SourceSettings
from backupmx.sources import fetch as driver_fetch
from backupmx.sources.errors import SourceError

Log = Callable[[str], None]


@dataclass(frozen=True)
class SyncOutcome:
    """What one sync did: ``ok`` (False: the source failed, ``error`` says why), the domains
    applied and those held back."""

    name: str
    ok: bool
    applied: Sequence[str] = ()
    held_back: Sequence[str] = ()
    error: Optional[str] = None


def sync_source(source: SourceSettings, store: SnapshotStore, log: Log,
                fetch: Callable[[SourceSettings], List[str]] = driver_fetch,
                clock: Callable[[], float] = time.time) -> SyncOutcome:
    """Fetch ``source`` now and store the result (see the module docstring).

    Never raises SourceError: a failure is recorded in the state (the last good snapshot
    stays) and returned. OSError when the state folder cannot be written."""
    with store.lock(source.name):
        state = store.read_state(source.name, source.type)
        state.last_attempt = clock()
        try:
            rows = fetch(source)
        except SourceError as error:
            message, kind = str(error), type(error).__name__
            if (state.last_result != "error" or state.error_kind != kind
                    or state.last_error != message):
                log(f"recipient source {source.name}: sync failed, keeping the last good "
                    f"snapshot: {message}")
            state.last_result, state.last_error, state.error_kind = "error", message, kind
            store.write_state(state)
            return SyncOutcome(source.name, False, error=message)
        if state.last_result == "error":
            log(f"recipient source {source.name}: sync works again")
        return _apply(source, store, state, classify(rows, source.domains), log, None)


def apply_rows(source: SourceSettings, store: SnapshotStore, rows: Iterable[str], log: Log,
               only: Optional[Sequence[str]] = None,
               clock: Callable[[], float] = time.time) -> SyncOutcome:
    """Apply rows given directly (``import``): as a sync's, for ``only`` these domains when
    given (the others keep their snapshot)."""
    with store.lock(source.name):
        state = store.read_state(source.name, source.type)
        state.last_attempt = clock()
        return _apply(source, store, state, classify(rows, source.domains), log, only)


def _apply(source: SourceSettings, store: SnapshotStore, state: SourceState, new: Classified,
           log: Log, only: Optional[Sequence[str]]) -> SyncOutcome:
    now = state.last_attempt or time.time()
    domains = source.domains
    old = store.read_keys(store.map_path(source.name), domains)
    pending = store.read_keys(store.pending_path(source.name), domains)
    decisions = plan({d: len(k) for d, k in old.items()}, new, source.max_shrink, only)
    snapshot: Dict[str, FrozenSet[str]] = {d: frozenset(k) for d, k in old.items()}
    held: Dict[str, FrozenSet[str]] = {d: frozenset(k) for d, k in pending.items()
                                       if d not in decisions}
    for domain, reason in decisions.items():
        domain_state = state.domains.setdefault(domain, DomainState())
        if reason is None:
            snapshot[domain] = new.keys[domain]
            domain_state.addresses = len(new.keys[domain])
            domain_state.applied_at = now
            domain_state.held_back = None
            continue
        held[domain] = new.keys[domain]
        previous = domain_state.held_back
        if previous is None or previous.reason != reason:
            log(f"recipient source {source.name}: change of {domain} held back, {reason}: "
                f"run 'backupmx recipients accept {source.name}' to apply it")
        domain_state.held_back = HeldBack(len(new.keys[domain]), reason,
                                          previous.since if previous else now, now)
    for domain in list(state.domains):
        if domain not in domains:
            del state.domains[domain]
    snapshot = {d: k for d, k in snapshot.items() if k}
    store.write_keys(store.map_path(source.name), snapshot, f"recipient source {source.name}")
    store.write_keys(store.pending_path(source.name), held,
                     f"recipient source {source.name}: held back")
    if (new.malformed, new.first_malformed) != (state.malformed, state.first_malformed) \
            and new.malformed:
        log(f"recipient source {source.name}: {new.malformed} malformed rows skipped, the "
            f"first: {new.first_malformed}")
    if new.ignored != state.ignored and new.ignored:
        log(f"recipient source {source.name}: {new.ignored} addresses outside its domains "
            f"({', '.join(domains)}) ignored")
    state.malformed, state.first_malformed, state.ignored = (
        new.malformed, new.first_malformed, new.ignored)
    state.last_success = now
    state.last_error = state.error_kind = None
    held_domains = [d for d, s in state.domains.items() if s.held_back is not None]
    state.last_result = "held_back" if held_domains else "ok"
    store.write_state(state)
    applied = [d for d, reason in decisions.items() if reason is None]
    return SyncOutcome(source.name, True, applied, held_domains)


def accept(source: SourceSettings, store: SnapshotStore, log: Log,
           clock: Callable[[], float] = time.time) -> List[str]:
    """Apply every held-back change of ``source``; the domains applied (empty: none held)."""
    with store.lock(source.name):
        state = store.read_state(source.name, source.type)
        pending = store.read_keys(store.pending_path(source.name), source.domains)
        snapshot = {d: frozenset(k) for d, k in
                    store.read_keys(store.map_path(source.name), source.domains).items()}
        applied: List[str] = []
        for domain, domain_state in state.domains.items():
            held = domain_state.held_back
            if held is None:
                continue
            keys = frozenset(pending.get(domain, ()))
            if keys:
                snapshot[domain] = keys
            else:
                snapshot.pop(domain, None)
            domain_state.addresses = len(keys)
            domain_state.applied_at = held.at
            domain_state.held_back = None
            applied.append(domain)
        if not applied:
            return []
        store.write_keys(store.map_path(source.name), snapshot,
                         f"recipient source {source.name}")
        store.write_keys(store.pending_path(source.name), {}, "")
        if state.last_result == "held_back":
            state.last_result = "ok"
        store.write_state(state)
        log(f"recipient source {source.name}: held-back change of {', '.join(applied)} "
            f"accepted at {clock():.0f}")
        return applied
