"""The recipient callout cache: in memory for the decision, in SQLite so it survives restarts.

``CalloutStore`` is the file ``[policyd] state_directory``/``callouts.sqlite3`` (WAL mode, so
``backupmx query`` and ``check`` read it while policyd writes): table ``verdicts`` (one row per
address: common.callout_rules.Entry) and table ``domains`` (per domain the last check with a
random address: whether the primary accepts every recipient). Its methods block on disk: policyd
calls ``load`` at start, before it listens, and writes through ``CalloutWriter`` (one thread of its
own, so writes stay in order and never run on the reactor thread).

``CalloutCache`` is the in-memory side policyd decides from: a cachetools ``TLRUCache`` whose
per-entry expiry is the entry's own (31 days valid, 4 hours invalid by default), bounded by
``maxsize`` entries (the least recently used go first when full).
"""
from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from cachetools import TLRUCache

from backupmx.common.callout_rules import (
    NO_ENTRY,
    VALID,
    Entry,
    Lifetimes,
    Verdict,
    merged,
    verdict_of,
)

FILE_NAME = "callouts.sqlite3"
#: most entries kept in memory (about 200 bytes each)
MAX_ENTRIES = 500_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    address TEXT PRIMARY KEY, domain TEXT NOT NULL, status TEXT NOT NULL,
    verified_at REAL NOT NULL, reply TEXT NOT NULL DEFAULT '',
    stored_at REAL NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS verdicts_domain ON verdicts (domain);
CREATE TABLE IF NOT EXISTS domains (
    domain TEXT PRIMARY KEY, accept_all INTEGER NOT NULL, checked_at REAL NOT NULL,
    reply TEXT NOT NULL DEFAULT '');
"""


def trusts_valid(check: Optional["DomainCheck"]) -> bool:
    """Whether a valid answer of a domain's primary proves anything: only once its check with
    a random address was refused (the primary does not accept every recipient)."""
    return check is not None and not check.accept_all


def store_path(state_directory: str) -> str:
    return os.path.join(state_directory, FILE_NAME)


@dataclass(frozen=True)
class DomainCheck:
    """The last check of a domain's primary with a random address: ``accept_all`` True when it
    was accepted (callouts for the domain then stop), ``checked_at`` Unix seconds."""

    domain: str
    accept_all: bool
    checked_at: float
    reply: str = ""


class CalloutStore:
    """The SQLite file (see the module docstring). Every method blocks; raises sqlite3.Error
    or OSError on a broken or unreadable file. Safe to call from several threads."""

    def __init__(self, path: str, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._lock = threading.Lock()
        self._db: Optional[sqlite3.Connection] = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            if self.readonly:
                db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                     check_same_thread=False)
            else:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                db = sqlite3.connect(self.path, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=5000")
            if not self.readonly:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                columns = {row[1] for row in db.execute("PRAGMA table_info(verdicts)")}
                if "stored_at" not in columns:  # a file of an earlier 0.2.0 build
                    with db:
                        db.execute("ALTER TABLE verdicts ADD COLUMN stored_at REAL NOT NULL "
                                   "DEFAULT 0")
                db.execute("CREATE INDEX IF NOT EXISTS verdicts_stored_at ON verdicts "
                           "(stored_at)")
            self._db = db
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def entries(self) -> List[Entry]:
        with self._lock:
            rows = self._connect().execute(
                "SELECT address, domain, status, verified_at, reply FROM verdicts").fetchall()
        return [Entry(*row) for row in rows]

    def entries_since(self, since: float) -> Tuple[List[Entry], float]:
        """Entries stored after ``since`` (Unix seconds), also by another process (``backupmx
        flush`` learning from a delivery), and when the newest of them was stored (``since``
        when none was)."""
        with self._lock:
            rows = self._connect().execute(
                "SELECT address, domain, status, verified_at, reply, stored_at FROM verdicts "
                "WHERE stored_at > ? ORDER BY stored_at", (since,)).fetchall()
        newest = max((row[5] for row in rows), default=since)
        return [Entry(*row[:5]) for row in rows], newest

    def get(self, address: str) -> Optional[Entry]:
        with self._lock:
            row = self._connect().execute(
                "SELECT address, domain, status, verified_at, reply FROM verdicts "
                "WHERE address = ?", (address,)).fetchone()
        return Entry(*row) if row else None

    def put(self, entries: Iterable[Entry]) -> None:
        with self._lock:
            db = self._connect()
            with db:
                now = time.time()
                db.executemany(
                    "INSERT OR REPLACE INTO verdicts (address, domain, status, verified_at, "
                    "reply, stored_at) VALUES (?, ?, ?, ?, ?, ?)",
                    [(e.address, e.domain, e.status, e.verified_at, e.reply, now)
                     for e in entries])

    def delete_before(self, domain: str, status: str, before: float) -> int:
        """Forget ``status`` entries of ``domain`` verified before ``before``; how many."""
        with self._lock:
            db = self._connect()
            with db:
                return db.execute("DELETE FROM verdicts WHERE domain = ? AND status = ? AND "
                                  "verified_at < ?", (domain, status, before)).rowcount

    def checks(self) -> Dict[str, DomainCheck]:
        with self._lock:
            rows = self._connect().execute(
                "SELECT domain, accept_all, checked_at, reply FROM domains").fetchall()
        return {row[0]: DomainCheck(row[0], bool(row[1]), row[2], row[3]) for row in rows}

    def put_check(self, check: DomainCheck) -> None:
        with self._lock:
            db = self._connect()
            with db:
                db.execute("INSERT OR REPLACE INTO domains (domain, accept_all, checked_at, "
                           "reply) VALUES (?, ?, ?, ?)",
                           (check.domain, int(check.accept_all), check.checked_at, check.reply))

    def counts(self) -> Dict[Tuple[str, str], int]:
        """(domain, status) -> entries stored."""
        with self._lock:
            rows = self._connect().execute(
                "SELECT domain, status, count(*) FROM verdicts GROUP BY domain, status"
            ).fetchall()
        return {(row[0], row[1]): row[2] for row in rows}


def read_store(state_directory: str) -> Optional[CalloutStore]:
    """The store for reading (``backupmx query``, ``check``, ``recipients status``), or None
    when policyd never wrote one."""
    path = store_path(state_directory)
    if not os.path.exists(path):
        return None
    return CalloutStore(path, readonly=True)


class CalloutCache:
    """The in-memory cache policyd decides from (see the module docstring).

    ``lifetimes``: domain -> Lifetimes of the callout source speaking for it; ``clock`` gives
    Unix seconds (the reactor's ``seconds``)."""

    def __init__(self, lifetimes: Mapping[str, Lifetimes], clock: Callable[[], float],
                 maxsize: int = MAX_ENTRIES) -> None:
        self.lifetimes = dict(lifetimes)
        self.clock = clock
        self._entries: TLRUCache = TLRUCache(maxsize=maxsize, ttu=self._expires, timer=clock)

    def _lifetimes(self, domain: str) -> Lifetimes:
        return self.lifetimes.get(domain) or Lifetimes()

    def _expires(self, _key: str, entry: Entry, _now: float) -> float:
        return entry.expires_at(self._lifetimes(entry.domain))

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, address: str) -> Optional[Entry]:
        return self._entries.get(address)

    def verdict(self, address: str, domain: str, now: float) -> Verdict:
        """The verdict for ``address`` (lower-case) at ``now``."""
        entry = self._entries.get(address)
        if entry is None:
            return NO_ENTRY
        return verdict_of(entry, self._lifetimes(domain), now)

    def record(self, entry: Entry) -> Optional[Entry]:
        """Take a definite result; returns the entry kept (to persist), or None when an
        unexpired valid entry was kept instead (common.callout_rules.merged)."""
        kept = merged(self._entries.get(entry.address), entry, self._lifetimes(entry.domain))
        if kept is not None:
            self._entries[entry.address] = kept
        return kept

    def load(self, entries: Iterable[Entry]) -> int:
        """Take stored entries (at start); expired ones are skipped. How many were kept."""
        now = self.clock()
        kept = 0
        for entry in entries:
            if entry.expires_at(self._lifetimes(entry.domain)) > now:
                self._entries[entry.address] = entry
                kept += 1
        return kept

    def forget_domain(self, domain: str) -> None:
        for address in [a for a, e in self._entries.items() if e.domain == domain]:
            self._entries.pop(address, None)

    def counts(self) -> Dict[Tuple[str, str], int]:
        """(domain, status) -> entries in memory (expired ones dropped first)."""
        self._entries.expire()
        found: Dict[Tuple[str, str], int] = {}
        for entry in self._entries.values():
            key = (entry.domain, entry.status)
            found[key] = found.get(key, 0) + 1
        return found


class CalloutWriter:
    """Writes to a CalloutStore in one thread of its own, in the order asked.

    ``put``/``put_check`` return at once; ``flush`` (tests, shutdown) waits until everything
    asked so far is written. A failed write is told to ``on_error`` (one line; called in the
    writer thread) and the next ones still run."""

    def __init__(self, store: CalloutStore, on_error: Callable[[str], None]) -> None:
        self.store = store
        self.on_error = on_error
        self._queue: "queue.Queue[Optional[Callable[[], object]]]" = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="callout cache writer",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                job()
            except (sqlite3.Error, OSError) as error:
                self.on_error(f"callout cache {self.store.path}: write failed: {error}")
            finally:
                self._queue.task_done()

    def put(self, entries: List[Entry]) -> None:
        self._queue.put(lambda: self.store.put(entries))

    def put_check(self, check: DomainCheck) -> None:
        self._queue.put(lambda: self.store.put_check(check))

    def forget(self, domain: str) -> None:
        """Drop the domain's valid entries (its primary accepts every address)."""
        self._queue.put(lambda: self.store.delete_before(domain, VALID, float("inf")))

    def flush(self) -> None:
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self.store.close()


def describe(entry: Optional[Entry], verdict: Verdict) -> str:
    """A short text for people: ``valid (verified 3600 s ago)``, ``no callout result``."""
    if entry is None or verdict is NO_ENTRY:
        return "no callout result"
    word = "valid" if entry.status == VALID else "invalid"
    refresh = ", due for refresh" if verdict.refresh else ""
    return f"{word} (verified {int(verdict.age or 0)} s ago{refresh})"
