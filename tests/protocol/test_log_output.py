"""policyd's log output: one line per event, filtered by level, one write per reactor pass."""
from __future__ import annotations

import io
import threading
from typing import Any, List, Tuple

import pytest
from twisted.internet import task
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python import threadable

from backupmx.policyd import logs as runtime
from backupmx.policyd.logs import LineObserver


class CountingStream(io.StringIO):
    """A stream that remembers each write, to count system calls' worth of output."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: List[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


class FakeReactor(task.Clock):
    """A clock that says it is running and records system event triggers."""

    running = True

    def __init__(self) -> None:
        super().__init__()
        self.triggers: List[Tuple[str, str, Any]] = []

    def addSystemEventTrigger(self, phase: str, event: str, callable_: Any) -> None:
        self.triggers.append((phase, event, callable_))


@pytest.fixture(autouse=True)
def reactor_thread_is_this_one() -> None:
    threadable.registerAsIOThread()  # what reactor.run() does; tests run in the main thread


def logger_to(observer: LineObserver) -> Logger:
    return Logger(namespace="backupmx.policyd.test", observer=LogPublisher(observer))


def test_without_a_reactor_each_line_is_written_at_once() -> None:
    stream = CountingStream()
    log = logger_to(LineObserver(stream, journald=True))
    log.info("first {n}", n=1)
    assert stream.getvalue() == "<6>first 1\n"
    log.warn("second")
    assert stream.writes == ["<6>first 1\n", "<4>second\n"]


def test_lines_of_one_reactor_pass_are_written_together_in_order() -> None:
    stream, reactor = CountingStream(), FakeReactor()
    log = logger_to(LineObserver(stream, journald=True, reactor=reactor))
    for n in range(3):
        log.info("refused {n}", n=n)
    log.error("broken")
    assert stream.writes == []  # still in the reactor pass
    reactor.advance(0)  # the pass ends
    assert stream.writes == ["<6>refused 0\n<6>refused 1\n<6>refused 2\n<3>broken\n"]
    log.info("next pass")
    reactor.advance(0)
    assert stream.writes[1:] == ["<6>next pass\n"]


def test_timestamps_outside_journald() -> None:
    stream = CountingStream()
    log = logger_to(LineObserver(stream, journald=False))
    log.info("hello")
    assert stream.getvalue().endswith(" hello\n")
    assert stream.getvalue()[:4].isdigit()  # the year of an ISO 8601 time stamp


def test_lower_levels_and_events_without_namespace_are_dropped() -> None:
    stream = CountingStream()
    observer = LineObserver(stream, level=LogLevel.warn, journald=True)
    log = logger_to(observer)
    log.debug("noise")
    log.info("chatter")
    log.warn("kept")
    observer({"log_level": LogLevel.error, "log_format": "no namespace"})
    observer({"log_namespace": "x", "log_format": "no level"})
    assert stream.getvalue() == "<4>kept\n"


def test_a_line_from_another_thread_is_written_at_once() -> None:
    """Reloads run in worker threads: their lines must not touch the reactor's pending list."""
    stream, reactor = CountingStream(), FakeReactor()
    log = logger_to(LineObserver(stream, journald=True, reactor=reactor))
    worker = threading.Thread(target=log.info, args=("from a worker",))
    worker.start()
    worker.join()
    assert stream.getvalue() == "<6>from a worker\n"
    assert reactor.getDelayedCalls() == []


def test_a_stopped_reactor_writes_at_once_and_shutdown_flushes(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(runtime.globalLogBeginner, "beginLoggingTo", lambda *a, **k: None)
    stream, reactor = CountingStream(), FakeReactor()
    observer = runtime.start_logging(stream, reactor=reactor)
    log = logger_to(observer)
    log.info("during the last pass")
    assert [(phase, event) for phase, event, _ in reactor.triggers] == [("after", "shutdown")]
    reactor.triggers[0][2]()  # the reactor shuts down before the pass's flush ran
    reactor.running = False
    log.info("after the reactor stopped")
    assert stream.getvalue().count("\n") == 2
    assert "during the last pass" in stream.writes[0]
    assert "after the reactor stopped" in stream.writes[1]
