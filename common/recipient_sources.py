"""Where policyd, the table writer and the admin's commands find each recipient source's data,
and how fresh each relay domain's recipients are.

A source of type ``file`` is read from its own file (postmap text); every other source from its
snapshot file in ``[policyd] state_directory`` (backupmx.common.snapshots), written by
``backupmx recipients sync``/``import``/``accept``. Blocking (disk): call off the reactor thread.

Freshness (the rule of ``[recipients NAME] stale_after``): a domain is fresh while at least one
source speaking for it synced successfully within its ``stale_after``; a ``file`` source is
fresh while its file is readable, and speaks for the domains its ``domains`` key names, else for
the domains its file has keys for (so the shipped, empty or partial relay_recipients file does
not make every domain fresh for ever). A domain no source speaks for is not in the result.
"""
from __future__ import annotations

import os
from typing import Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple

from backupmx.common.config import Config
from backupmx.common.snapshots import SnapshotStore, SourceState
from backupmx.common.source_rules import domains_fresh_until, fresh_until, owner_of
from backupmx.common.source_settings import FileSettings, SourceSettings

FOREVER = float("inf")


def store(config: Config) -> SnapshotStore:
    return SnapshotStore(config.policyd.state_directory)


def file_paths(config: Config) -> Tuple[str, ...]:
    """The files of the ``file`` sources, in order."""
    return tuple(s.driver.path for s in config.sources if isinstance(s.driver, FileSettings))


def snapshot_sources(config: Config) -> Tuple[SourceSettings, ...]:
    """The sources kept in snapshots (every type but ``file`` and ``callout``)."""
    return tuple(s for s in config.sources if s.type not in ("file", "callout"))


def callout_domains(config: Config) -> Tuple[str, ...]:
    """The domains some ``callout`` source speaks for, in configuration order, each once."""
    found: List[str] = []
    for source in config.sources:
        if source.type == "callout":
            found.extend(d for d in source.domains if d not in found)
    return tuple(found)


def snapshot_paths(config: Config) -> Tuple[str, ...]:
    """Each snapshot source's snapshot file, whether it exists yet or not."""
    snapshots = store(config)
    return tuple(snapshots.map_path(s.name) for s in snapshot_sources(config))


def recipient_paths(config: Config) -> Tuple[str, ...]:
    """What a recipient map load reads: the files, then the snapshots that exist."""
    return file_paths(config) + tuple(p for p in snapshot_paths(config) if os.path.exists(p))


def read_states(config: Config) -> Dict[str, SourceState]:
    """Each snapshot source's state (a blank one when it never ran)."""
    snapshots = store(config)
    return {s.name: snapshots.read_state(s.name, s.type) for s in snapshot_sources(config)}


def freshness(config: Config, states: Mapping[str, SourceState],
              file_domains: Iterable[Tuple[str, FrozenSet[str]]],
              readable: Optional[Mapping[str, bool]] = None) -> Dict[str, float]:
    """Configured domain -> until when (Unix seconds) its recipients count as fresh:
    ``inf`` for a readable file source, minus infinity when no source ever synced it.

    ``file_domains``: (file, the domains its keys name), as RecipientMap.source_domains;
    ``readable``: file -> readable now (default: os.access)."""
    domains = tuple(config.domains)
    listed = dict(file_domains)
    per_source: List[Dict[str, float]] = []
    for source in config.sources:
        if isinstance(source.driver, FileSettings):
            path = source.driver.path
            ok = readable[path] if readable is not None and path in readable \
                else os.access(path, os.R_OK)
            names = source.domains or _owners(listed.get(path, frozenset()), domains)
            per_source.append({d: FOREVER if ok else float("-inf") for d in names})
            continue
        if source.type == "callout":
            continue  # no snapshot: a callout source never makes a domain fresh or stale
        state = states.get(source.name)
        per_source.append({
            d: fresh_until(state.domains[d].applied_at
                           if state is not None and d in state.domains else None,
                           source.stale_after)
            for d in source.domains})
    return domains_fresh_until(per_source)


def _owners(names: Iterable[str], domains: Tuple[str, ...]) -> Tuple[str, ...]:
    owners = {owner_of(name, domains) for name in names}
    return tuple(sorted(o for o in owners if o is not None))
