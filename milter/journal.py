"""The fallback journal: ledger records that could not be written to SQLite yet.

When the ledger is locked, on a full disk, in a missing or read-only folder, the milter still
accepts the message (it never delays mail for accounting) and appends the record here as one JSON
line, fsync'ed. The next successful ledger write replays the journal in the same transaction and
then empties it. Every step holds an flock on the journal so the milter's threads and a command
replaying at the same time never lose or double a line (inserts are idempotent anyway).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
from typing import Callable, List, Tuple

from backupmx.milter.envelope import MessageRecord

log = logging.getLogger("backupmx.milter.journal")
JOURNAL_MODE = 0o640


class Journal:
    """Append-only JSON lines of MessageRecord, replayed into the ledger when it works again."""

    def __init__(self, path: str) -> None:
        self.path = path

    def append(self, record: MessageRecord) -> None:
        """Durably add one record; raises OSError when even this is impossible."""
        line = json.dumps(record.to_json(), separators=(",", ":"), sort_keys=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, JOURNAL_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock

    def pending(self) -> bool:
        """True when records wait for replay (a cheap stat, done before every ledger write)."""
        try:
            return os.stat(self.path).st_size > 0
        except OSError:
            return False

    def replay(self, apply: Callable[[List[MessageRecord]], None]) -> int:
        """Hand every journaled record to apply (one ledger transaction), then empty the journal.

        If apply raises, the journal is left as it was and the error propagates.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            apply([])
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with os.fdopen(os.dup(fd), "rb") as handle:
                records, skipped = parse_journal(handle.read())
            for number, reason in skipped:
                log.error("%s:%d: unreadable journal line skipped: %s", self.path, number, reason)
            apply(records)
            os.ftruncate(fd, 0)
            os.fsync(fd)
            return len(records)
        finally:
            os.close(fd)


def parse_journal(data: bytes) -> Tuple[List[MessageRecord], List[Tuple[int, str]]]:
    """Records of a journal, and (line number, reason) of lines that cannot be read.

    A crash in the middle of an append leaves a torn last line: it is reported and skipped.
    """
    records: List[MessageRecord] = []
    skipped: List[Tuple[int, str]] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            records.append(MessageRecord.from_json(json.loads(raw.decode("utf-8"))))
        except (ValueError, KeyError, TypeError) as error:
            skipped.append((number, str(error) or type(error).__name__))
    return records, skipped
