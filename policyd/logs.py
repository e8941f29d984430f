"""policyd's log output: twisted.logger events as one line each on stderr.

Without timestamps when journald is reading (it adds its own) and with syslog ``<N>`` priority
prefixes so journald files them at the right level (common.daemon.SYSLOG_PRIORITY).
"""
from __future__ import annotations

import sys
from typing import Any, List, Optional, TextIO

from twisted.logger import LogLevel, eventAsText, formatTime, globalLogBeginner
from twisted.python.threadable import isInIOThread

from backupmx.common.daemon import journald_stream, syslog_prefix

#: the journald prefix of each level, computed once (a refusal's line is on the request path)
_PREFIX = {level: syslog_prefix(level.name) for level in LogLevel.iterconstants()}


class _SecondsStamp:
    """formatTime for eventAsText, computed once per second instead of once per line.

    Twisted's formatTime builds a datetime and its time zone for every event (about 6 us, a
    third of a refusal's log line); its output only changes when the whole second does.
    """

    def __init__(self) -> None:
        self._second: Optional[int] = None
        self._text = ""

    def __call__(self, when: Optional[float]) -> str:
        if when is None:
            return formatTime(when)
        second = int(when)
        if second != self._second:
            self._text = formatTime(second)
            self._second = second
        return self._text


def _plain_text(event: dict) -> Optional[str]:
    """The event's text by ``str.format_map``, or None when Twisted's formatter is needed.

    Twisted's formatEvent runs string.Formatter in Python (3.5 us for a one-field format);
    str.format_map renders the same PEP 3101 fields in C. Events with a failure (traceback),
    pre-flattened fields or Twisted's ``{callable()}`` syntax go the long way.
    """
    log_format = event.get("log_format")
    if type(log_format) is not str or "log_failure" in event or "log_flattened" in event:
        return None
    try:
        return log_format.format_map(event)
    except (KeyError, IndexError, AttributeError, ValueError, TypeError):
        return None  # e.g. "{callable()}" or a positional field: let Twisted render it


class LineObserver:
    """A twisted.logger observer writing each event at or above a level as one line.

    One plain observer instead of FilteringLogObserver(FileLogObserver(...)): refusals are
    logged on the request path, and this halves the cost of a line with the same output and the
    same filter (no level or no namespace: dropped). Given a running reactor, it collects the
    lines of one reactor pass and writes them with one system call at the end of the pass (under
    load a pass answers several requests); otherwise each line is written at once.
    """

    def __init__(self, stream: TextIO, level: LogLevel = LogLevel.info, journald: bool = False,
                 reactor: Any = None) -> None:
        self.stream = stream
        self.levels = frozenset(known for known in LogLevel.iterconstants() if known >= level)
        self.journald = journald
        self.reactor = reactor
        self.stamp = _SecondsStamp()
        self.pending: List[str] = []

    def __call__(self, event: dict) -> None:
        event_level = event.get("log_level")
        if event_level not in self.levels or not event.get("log_namespace"):
            return
        text = _plain_text(event)
        if text is None:
            text = eventAsText(event, includeTimestamp=not self.journald, includeSystem=False,
                               formatTime=self.stamp)
        elif text and not self.journald:
            text = f"{self.stamp(event.get('log_time'))} {text}"
        if not text:
            return
        if self.journald:
            text = f"{_PREFIX[event_level]}{text}"
        reactor = self.reactor
        if reactor is None or not reactor.running or not isInIOThread():
            self._write(text)  # not in a reactor pass: write it now
            return
        pending = self.pending
        pending.append(text)
        if len(pending) == 1:
            reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """Write the lines collected in this reactor pass."""
        if self.pending:
            self._write("\n".join(self.pending))
            self.pending.clear()

    def _write(self, lines: str) -> None:
        self.stream.write(f"{lines}\n")
        self.stream.flush()


def start_logging(stream: TextIO = sys.stderr, level: LogLevel = LogLevel.info,
                  reactor: Any = None) -> LineObserver:
    """Send twisted.logger events at or above level to stream, one line each (see LineObserver).

    With a reactor, lines are written at the end of each reactor pass, and at shutdown.
    """
    observer = LineObserver(stream, level, journald_stream(), reactor)
    if reactor is not None:
        reactor.addSystemEventTrigger("after", "shutdown", observer.flush)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    return observer
