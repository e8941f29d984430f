"""policyd takes callout results another process added to the cache file.

``backupmx flush`` learns recipients from what the primary answered to held mail
(admin.flush_learning) and writes them to ``callouts.sqlite3``, the file policyd keeps its
callout results in (common.callout_cache). policyd reads that file whole only at start, so every
FOLLOW_INTERVAL seconds it asks the file, in a thread (the reactor never waits for the disk),
for the entries stored since its last look, and takes those that differ from its memory into
the cache, under the usual rule (common.callout_rules.merged).
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.internet import threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from backupmx.common.callout_cache import CalloutStore
from backupmx.common.callout_rules import Entry

#: seconds between two looks at the file
FOLLOW_INTERVAL = 10.0
#: seconds looked back before the newest entry seen, for writers whose clock reading and
#: commit were a little apart (entries already in memory are skipped)
SLACK = 60.0


class StoreFollower:
    """See the module docstring. ``engine``: policyd.callouts.CalloutEngine (its ``setup``
    says which domains have callouts, its ``cache`` takes the entries); ``since``: Unix
    seconds, what was loaded at start."""

    log = Logger(namespace="backupmx.policyd")

    def __init__(self, reactor: Any, store: CalloutStore, engine: Any, since: float,
                 interval: float = FOLLOW_INTERVAL) -> None:
        self.reactor = reactor
        self.store = store
        self.engine = engine
        self.since = since
        self.interval = interval
        self._looking = False
        self._timer: Optional[LoopingCall] = None

    def start(self) -> None:
        self._timer = LoopingCall(self.look)
        self._timer.clock = self.reactor
        self._timer.start(self.interval, now=False)

    def stop(self) -> None:
        if self._timer is not None and self._timer.running:
            self._timer.stop()

    def look(self) -> Any:
        """One look (the timer's); a Deferred firing with how many entries were taken."""
        if self._looking:
            return None
        self._looking = True
        looked = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                           self.store.entries_since, self.since - SLACK)
        looked.addCallback(self.take)
        looked.addErrback(self._failed)
        looked.addBoth(self._done)
        return looked

    def take(self, found: Tuple[List[Entry], float]) -> int:
        """Take the stored entries that differ from memory (``found``: what
        CalloutStore.entries_since gives); how many. Reactor thread only."""
        entries, newest = found
        self.since = max(self.since, newest)
        taken = 0
        for entry in entries:
            if entry.domain not in self.engine.setup or self.engine.cache.get(entry.address) \
                    == entry:
                continue
            if self.engine.cache.record(entry) is not None:
                taken += 1
        if taken:
            self.log.info("took {count} callout results added to {path} by another process "
                          "(backupmx flush)", count=taken, path=self.store.path)
        return taken

    def _failed(self, failure: Any) -> int:
        self.log.error("callout cache {path}: reading new entries failed: {error}",
                       path=self.store.path, error=failure.getErrorMessage())
        return 0

    def _done(self, taken: Any) -> Any:
        self._looking = False
        return taken
