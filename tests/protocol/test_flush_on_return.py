"""Flush on return: which reported state changes start a flush child, and what is logged.

A real PrimaryMonitor on task.Clock is fed probe results (no network); the spawner is a recorder
standing in for reactor.spawnProcess (the real spawn: tests/integration/test_flush_on_return.py).
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from twisted.internet.task import Clock
from twisted.logger import Logger

from backupmx.common.config import PrimarySpec, parse_config
from backupmx.common.smtp_probe import ProbeResult
from backupmx.policyd.flush_on_return import FlushOnReturn, flush_argv, summarize
from backupmx.policyd.primary_monitor import PrimaryMonitor

U, D = True, False


class Spawned:
    """Records spawnProcess calls; ``end`` plays the child's exit."""

    def __init__(self) -> None:
        self.calls: List[Tuple[Any, List[str]]] = []

    def __call__(self, process_protocol: Any, executable: str, args: List[str],
                 env: Dict[str, str]) -> Any:
        self.calls.append((process_protocol, list(args)))
        return self

    pid = 4242

    def end(self, index: int, code: int, output: bytes) -> None:
        from twisted.internet.error import ProcessDone, ProcessTerminated
        from twisted.python.failure import Failure
        child = self.calls[index][0]
        child.outReceived(output)
        reason = ProcessDone(0) if code == 0 else ProcessTerminated(exitCode=code)
        child.processEnded(Failure(reason))


def setup(text: str = "", ledger: bool = True) -> Tuple[PrimaryMonitor, FlushOnReturn, Spawned,
                                                        List[dict]]:
    clock = Clock()
    config = parse_config("[policyd]\n" + text + "\n[domains]\na.test = [192.0.2.1]:25\n"
                          "b.test = [192.0.2.2]:25\n", "/etc/backupmx/backupmx.conf")
    monitor = PrimaryMonitor(clock, config.domains, 30, 5, up_after=2, down_after=1)
    spawned = Spawned()
    events: List[dict] = []
    flusher = FlushOnReturn(clock, lambda: config, spawn=spawned,
                            ledger_exists=lambda path: ledger, env={})
    flusher.log = Logger(observer=events.append)
    monitor.listeners.append(flusher)
    return monitor, flusher, spawned, events


def feed(monitor: PrimaryMonitor, domain: str, results: List[bool]) -> None:
    for up in results:
        monitor.reactor.advance(10)
        monitor.record(domain, ProbeResult(up, "[192.0.2.1]:25"))


def text(event: dict) -> str:
    from twisted.logger import formatEvent
    return formatEvent(event)


def test_flapping_primary_one_flush_per_up_transition() -> None:
    monitor, flusher, spawned, events = setup()
    feed(monitor, "a.test", [D, U, D, U, D, U, D])  # flaps: never two ups in a row
    assert spawned.calls == []
    feed(monitor, "a.test", [U, U])                  # reported up: one flush
    assert [args for _, args in spawned.calls] == [
        flush_argv("/etc/backupmx/backupmx.conf", "a.test")]
    feed(monitor, "a.test", [U, U, U, D, U])         # still up, then a dip not yet reported up
    assert len(spawned.calls) == 1
    feed(monitor, "a.test", [U])                     # second up transition, first flush runs
    assert len(spawned.calls) == 1
    assert "still runs: no second flush" in text(events[-1])
    spawned.end(0, 0, b"a.test: 3 messages left the queue, 0 still queued\n")
    assert flusher.running == {}
    feed(monitor, "a.test", [D, U, U])               # third transition: a new flush
    assert len(spawned.calls) == 2
    assert monitor.state("b.test", monitor.reactor.seconds()).status == "unknown"


def test_argv_runs_this_installation_and_names_the_domain() -> None:
    argv = flush_argv("/etc/b.conf", "a.test", python="/usr/bin/python3")
    assert argv == ["/usr/bin/python3", "-m", "backupmx.admin.main", "-c", "/etc/b.conf",
                    "flush", "a.test", "--on-return"]


def test_outcome_logged_in_one_line() -> None:
    monitor, _, spawned, events = setup()
    feed(monitor, "a.test", [D, U, U])
    feed(monitor, "b.test", [U])  # first result at start: up at once, flushed too
    assert [args[6] for _, args in spawned.calls] == ["a.test", "b.test"]
    spawned.end(0, 0, b"a.test: 2 messages left the queue, 0 still queued (held before: 2; "
                      b"flush #7, complete)\n")
    spawned.end(1, 1, b"backupmx: flush refused: the primary of b.test ([192.0.2.2]:25) is "
                      b"down: not flushing\n")
    done, failed = text(events[-2]), text(events[-1])
    assert done.startswith("flush on return of a.test done in ")
    assert done.endswith("a.test: 2 messages left the queue, 0 still queued (held before: 2; "
                         "flush #7, complete)")
    assert failed.startswith("flush on return of b.test failed (exit status 1) after ")
    assert "is down: not flushing" in failed and "\n" not in failed
    assert events[-1]["log_level"].name == "error"


def test_off_or_without_ledger_nothing_starts() -> None:
    for monitor, _, spawned, _ in (setup("flush_on_return = no"), setup(ledger=False)):
        feed(monitor, "a.test", [D, U, U])
        assert spawned.calls == []


def test_a_child_that_hangs_is_killed() -> None:
    monitor, flusher, spawned, events = setup()
    signals: List[str] = []
    spawned.signalProcess = signals.append  # type: ignore[attr-defined]
    feed(monitor, "a.test", [U])
    monitor.reactor.advance(flusher.timeout)
    assert signals == ["KILL"]
    assert "killed" in text(events[-1])


def test_summary_is_one_line_and_bounded() -> None:
    assert summarize(b"one\n\n two \n") == "one; two"
    assert summarize(b"") == "no output"
    assert len(summarize(b"x" * 1000)) == 300


def test_probe_interval_down_from_configuration() -> None:
    settings = parse_config("[policyd]\n").policyd
    assert (settings.probe_interval_down, settings.flush_on_return) == (10.0, True)
    monitor = PrimaryMonitor(Clock(), {"a.test": PrimarySpec("192.0.2.1", 25)},
                             settings.probe_interval, settings.probe_timeout,
                             interval_down=settings.probe_interval_down)
    assert monitor.interval_down == 10.0
