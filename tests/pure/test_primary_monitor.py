"""PrimaryMonitor: the one place a primary's state lives; hysteresis, freshness, timers.

Driven by task.Clock and scripted probe results: no network, no sleeps."""
from __future__ import annotations

from typing import List, Optional

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from backupmx.common.config import PrimarySpec, parse_config
from backupmx.common.smtp_probe import ProbeResult
from backupmx.policyd.primary_monitor import PrimaryMonitor, reported_state

U, D = True, False


@pytest.mark.parametrize("previous, recent, up_after, down_after, expected", [
    (None, [], 2, 1, None),            # nothing known yet
    (None, [U], 2, 2, U),              # the first result is taken at once
    (None, [D], 2, 2, D),
    (D, [D, U], 2, 1, D),              # one up is not enough
    (D, [U, U], 2, 1, U),              # two in a row are
    (D, [U, D, U], 2, 1, D),
    (U, [U, D], 2, 1, D),              # down_after = 1: at once
    (U, [U, D], 1, 3, U),
    (U, [D, D, D], 1, 3, D),
    (U, [D, U, D, D], 1, 3, U),
])
def test_reported_state(previous: Optional[bool], recent: List[bool], up_after: int,
                        down_after: int, expected: Optional[bool]) -> None:
    assert reported_state(previous, recent, up_after, down_after) is expected


class ScriptedProbe:
    """Stands in for common.smtp_probe.probe_primary: each call takes the next scripted result
    (a Deferred fired at once); the real probe has its own tests against real servers."""

    def __init__(self) -> None:
        self.results: List[ProbeResult] = []
        self.calls: List[str] = []

    def __call__(self, reactor, domain, spec, timeout, resolver, local_names) -> Deferred:
        self.calls.append(domain)
        result = self.results.pop(0) if self.results else ProbeResult(True, "[192.0.2.1]:25")
        return succeed(result)


def monitor(up_after: int = 1, down_after: int = 1, interval: float = 30,
            interval_down: Optional[float] = None) -> "tuple[PrimaryMonitor, Clock, ScriptedProbe]":
    clock, probe = Clock(), ScriptedProbe()
    m = PrimaryMonitor(clock, {"a.test": PrimarySpec("192.0.2.1", 25)}, interval, 5,
                       up_after=up_after, down_after=down_after, interval_down=interval_down,
                       probe=probe)
    return m, clock, probe


def feed(m: PrimaryMonitor, results: List[bool]) -> List[bool]:
    """Record probe results 30 s apart; return the state the decision saw after each."""
    seen = []
    for up in results:
        m.reactor.advance(30)
        m.record("a.test", ProbeResult(up, "[192.0.2.1]:25"))
        seen.append(m.state("a.test", m.reactor.seconds()).up)
    return seen


def test_flapping_primary_causes_no_decision_storm() -> None:
    m, _, _ = monitor(up_after=2, down_after=2)
    seen = feed(m, [U, D, U, D, U, D, U, D, U, D])
    assert seen == [U] * 10  # never two agreeing probes against the reported state
    assert m.state("a.test", 300).changed_at == 30  # the one change: the first result


def test_state_changes_after_agreeing_probes_and_records_when() -> None:
    m, _, _ = monitor(up_after=2, down_after=1)
    assert feed(m, [D, U, U, D, U, U]) == [D, D, U, D, D, U]
    assert m.state("a.test", 180).changed_at == 180
    assert m.state("a.test", 180).status == "up"


def test_defaults_from_configuration() -> None:
    settings = parse_config("[policyd]\n").policyd
    assert (settings.primary_up_after, settings.primary_down_after) == (2, 1)
    m, _, _ = monitor(settings.primary_up_after, settings.primary_down_after)
    assert feed(m, [U, D, U, D]) == [U, D, D, D]  # fail safe: accept while it flaps


def test_reload_adopts_new_thresholds_and_forgets_removed_domains() -> None:
    m, _, _ = monitor(up_after=1, down_after=1)
    feed(m, [U])
    m.configure({"a.test": PrimarySpec("192.0.2.1", 25)}, 30, 5, up_after=3, down_after=3)
    assert feed(m, [D, D]) == [U, U]
    assert feed(m, [D]) == [D]
    m.configure({}, 30, 5)
    assert m.state("a.test", m.reactor.seconds()).status == "unknown"


@pytest.mark.parametrize("age, expected", [
    (0.0, "up"), (65.0, "up"), (65.001, "unknown"), (3600.0, "unknown"),
])
def test_a_result_older_than_two_intervals_and_a_timeout_is_unknown(age: float,
                                                                    expected: str) -> None:
    m, clock, _ = monitor()
    m.record("a.test", ProbeResult(True, "[192.0.2.1]:25"))
    assert m.max_age == 65
    assert m.state("a.test", clock.seconds() + age).status == expected


def test_never_probed_and_unconfigured_domains_are_unknown() -> None:
    m, _, _ = monitor()
    assert m.state("a.test", 0).status == "unknown"
    assert m.state("other.test", 0).status == "unknown"


def test_timer_probes_every_interval_and_faster_while_down() -> None:
    m, clock, probe = monitor(interval=30, interval_down=10)
    probe.results = [ProbeResult(True, "h")]
    m.start()
    assert probe.calls == ["a.test"]
    clock.advance(29)
    assert len(probe.calls) == 1
    probe.results = [ProbeResult(False, "h")]
    clock.advance(1)
    assert len(probe.calls) == 2 and m.state("a.test", clock.seconds()).status == "down"
    clock.advance(10)  # while down: probe_interval_down
    assert len(probe.calls) == 3
    m.stop()
    clock.advance(100)
    assert len(probe.calls) == 3


def test_configuration_errors_are_unknown_and_logged_once() -> None:
    m, clock, _ = monitor()
    m.record("a.test", ProbeResult(True, "h"))
    m.record("a.test", ProbeResult(False, "", "null MX"))
    state = m.state("a.test", clock.seconds())
    assert (state.status, state.error) == ("unknown", "null MX")


def test_listeners_hear_each_change_once() -> None:
    m, _, _ = monitor(up_after=2, down_after=1)
    heard: List[str] = []
    m.listeners.append(lambda domain, state: heard.append(f"{domain} {state.status}"))
    feed(m, [D, U, D, U, U, U])
    assert heard == ["a.test down", "a.test up"]
