"""The milter follows edits of backupmx.conf: new ``[domains]`` are recorded without a restart.

libmilter owns SIGHUP in the milter process (it means "stop"), so the milter cannot reload on a
signal as policyd does. Instead a small thread looks at the file's signature (mtime, size,
inode) every CHECK_INTERVAL seconds; once a changed file has stayed the same for one more check,
it is read again, and the relay domains are swapped into the shared MilterSettings in one
assignment. The milter callbacks never touch the file. An invalid file is logged once and the
running domains kept; a changed ``[milter]`` setting that needs a restart is named in the log.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Callable, List, Optional, Tuple

from backupmx.common.config import Config, ConfigError, load_config
from backupmx.milter.app import MilterSettings

log = logging.getLogger("backupmx.milter")

#: seconds between two looks at the configuration file
CHECK_INTERVAL = 2.0
#: [milter] settings a running milter cannot change
RESTART_SETTINGS = ("listen", "ledger", "ledger_sync", "journal", "user")

Signature = Tuple[object, ...]


def file_signature(path: str) -> Signature:
    """(mtime in ns, size, inode) of path, or the error text when it cannot be looked at."""
    try:
        stat = os.stat(path)
    except OSError as error:
        return (error.strerror or str(error),)
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


class ConfigWatcher:
    """Re-reads the configuration file when it changed, and applies its ``[domains]``.

    ``check()`` does one look (tests call it directly); ``start()`` runs it every
    ``interval`` seconds in a daemon thread until ``stop()``.
    """

    def __init__(self, config: Config, settings: MilterSettings,
                 interval: float = CHECK_INTERVAL,
                 load: Callable[[str], Config] = load_config) -> None:
        self.config = config
        self.settings = settings
        self.interval = interval
        self.load = load
        self.signature = file_signature(config.path)
        self._pending: Optional[Signature] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def check(self) -> bool:
        """One look at the file; True when new domains were applied."""
        signature = file_signature(self.config.path)
        if signature == self.signature:
            self._pending = None
            return False
        if signature != self._pending:
            self._pending = signature  # changed: read it once it stays the same
            return False
        self._pending = None
        self.signature = signature
        try:
            config = self.load(self.config.path)
        except ConfigError as error:
            log.error("configuration changed but cannot be used, keeping the running relay "
                      "domains: %s", error)
            return False
        return self._apply(config)

    def _apply(self, config: Config) -> bool:
        old = self.config
        self.config = config
        restart = [name for name in RESTART_SETTINGS
                   if getattr(old.milter, name) != getattr(config.milter, name)]
        if restart:
            log.warning("configuration changed: %s; restart backupmx-milter to use the new "
                        "%s (running with the old until then)",
                        ", ".join(f"[milter] {name}" for name in restart),
                        "value" if len(restart) == 1 else "values")
        domains = frozenset(d.lower() for d in config.domains)
        current = self.settings.domains
        if domains == current:
            return False
        self.settings.domains = domains
        log.info("configuration re-read: recording mail for %d relay domains (%s)",
                 len(domains), _changes(current, domains))
        return True

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as error:  # the watcher must outlive any surprise; mail flows
                log.error("cannot check the configuration file %s: %s", self.config.path,
                          error)

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name="config watcher", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 1)


def _changes(old: frozenset, new: frozenset) -> str:
    parts: List[str] = []
    if new - old:
        parts.append("added " + ", ".join(sorted(new - old)))
    if old - new:
        parts.append("removed " + ", ".join(sorted(old - new)))
    return "; ".join(parts)
