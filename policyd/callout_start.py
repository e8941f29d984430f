"""Starting recipient callouts: at policyd's start, or at the reload that adds the first
``callout`` source.

``load`` is the blocking half (it reads the callout cache file, ``callouts.sqlite3`` in
``[policyd] state_directory``, and asks Postfix for ``myhostname``, the name sent in EHLO): at
start it runs before policyd listens, at a reload in a thread, so the reactor never waits for
the disk. ``build`` is the reactor half: the engine (policyd.callouts.CalloutEngine) with its
cache filled, its writer thread, and the follower that takes what ``backupmx flush`` learned.
"""
from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from backupmx.common.addresses import normalize_domain
from backupmx.common.callout_cache import (
    CalloutCache,
    CalloutStore,
    CalloutWriter,
    DomainCheck,
    store_path,
)
from backupmx.common.callout_rules import Entry
from backupmx.common.config import Config, ConfigError
from backupmx.common.postfix import Postfix, PostfixError
from backupmx.policyd.callouts import CalloutDomain, CalloutEngine, lifetimes_of


def local_names(config: Config) -> Tuple[str, ...]:
    """This host's own names (Postfix's ``myhostname``): an MX among them is never the primary,
    and the first is the EHLO name of callouts. Blocks (runs postconf); () when unknown."""
    try:
        name = Postfix.from_setting(config.postfix.config_directory).parameter("myhostname")
    except (PostfixError, KeyError):
        return ()
    return (normalize_domain(name),) if name else ()


@dataclass
class Loaded:
    """What ``load`` read: the store (kept open for the writer), its entries and accept-all
    checks, and this host's names."""

    store: CalloutStore
    entries: List[Entry]
    checks: Dict[str, DomainCheck]
    names: Tuple[str, ...]
    #: where a damaged cache file was moved (and why), or None
    moved_aside: Optional[str] = None


def load(config: Config) -> Loaded:
    """The blocking half (module docstring). A cache file that is no SQLite database (or a
    damaged one) is moved aside and policyd starts with an empty cache (said in one line: the
    cache is only what was learned, so starting empty loses no mail). Raises ConfigError when
    the file cannot be opened or read otherwise (permissions, a locked or missing folder)."""
    path = store_path(config.policyd.state_directory)
    moved = None
    try:
        try:
            store, entries, checks = _read(path)
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as error:  # not a database, or damaged
            moved = _move_aside(path, error)
            store, entries, checks = _read(path)
    except (sqlite3.Error, OSError) as error:
        raise ConfigError(f"callout cache {path}: {error}") from None
    return Loaded(store, entries, checks, local_names(config), moved)


def _read(path: str) -> Tuple[CalloutStore, List[Entry], Dict[str, DomainCheck]]:
    store = CalloutStore(path)
    try:
        return store, store.entries(), store.checks()
    except BaseException:
        store.close()
        raise


def _move_aside(path: str, error: Exception) -> str:
    """Rename the damaged file (and its -wal, -shm) to ``PATH.damaged-SECONDS``; what to log.
    Raises OSError."""
    target = f"{path}.damaged-{int(time.time())}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, target + suffix)
    return f"{target} ({error})"


def build(reactor: Any, setup: Mapping[str, CalloutDomain], loaded: Loaded, primaries: Any,
          log: Any) -> CalloutEngine:
    """The reactor half (module docstring): the engine, not started yet."""
    from backupmx.policyd.callout_follow import StoreFollower
    from backupmx.policyd.callout_protocol import tls_context
    if loaded.moved_aside:
        log.error("callout cache {path} was damaged: moved to {moved}; starting with an empty "
                  "cache", path=loaded.store.path, moved=loaded.moved_aside)
    cache = CalloutCache(lifetimes_of(setup), reactor.seconds)
    count = cache.load(loaded.entries)
    writer = CalloutWriter(loaded.store, lambda line: reactor.callFromThread(
        log.error, "{line}", line=line))
    tls = tls_context()
    log.info("recipient callouts for {domains}: {count} cached results{tls}",
             domains=", ".join(sorted(setup)), count=count,
             tls="" if tls is not None else " (no STARTTLS: pyOpenSSL is missing)")
    for domain, check in sorted(loaded.checks.items()):
        if check.accept_all and domain in setup:
            log.warn("callouts for {domain} are off: its primary accepted a random address "
                     "(it accepts every recipient)", domain=domain)
    engine = CalloutEngine(reactor, setup, cache, writer, loaded.checks, primaries,
                           loaded.names[0] if loaded.names else "localhost", tls=tls)
    engine.follower = StoreFollower(reactor, loaded.store, engine, reactor.seconds())
    return engine


def configure(service: Any, config: Config) -> None:
    """A reload's part (policyd.service.PolicyService): the running engine takes the new
    settings; the first callout source starts one, its cache file read in a thread (until it
    runs, the source's domains are judged as without a callout source)."""
    from backupmx.policyd.callouts import callout_setup
    setup = callout_setup(config)
    if service.callouts is not None:
        service.callouts.configure(setup)
        if store_path(config.policyd.state_directory) != service.callouts.writer.store.path:
            service.log.warn("reload: [policyd] state_directory changed; the callout cache "
                             "stays {path} until policyd restarts",
                             path=service.callouts.writer.store.path)
        return
    if not setup or service.starting_callouts:
        return
    service.starting_callouts = True

    def started(loaded: Loaded) -> None:
        service.starting_callouts = False
        now = callout_setup(service.config)  # another reload may have come meanwhile
        if not now or service.callouts is not None:
            loaded.store.close()
            return
        service.callouts = build(service.reactor, now, loaded, service.primaries, service.log)
        service.callouts.start()

    def failed(failure: Any) -> None:
        service.starting_callouts = False
        service.log.error("reload: recipient callouts not started: {why}",
                          why=failure.getErrorMessage())

    service.run_in_thread(load, config).addCallback(started).addErrback(failed)
