"""policyd.callout_limits: per-domain connections and rate, per-client cap, on task.Clock."""
from __future__ import annotations

from twisted.internet.task import Clock

from backupmx.policyd.callout_limits import (
    CLIENT_RATE,
    CLIENT_WINDOW,
    DOMAIN_RATE,
    DOMAIN_WINDOW,
    CalloutLimits,
    Limits,
)

LIMITS = Limits(max_connections=2, rate=30, client_rate=10)


def test_domain_rate_is_30_a_minute_sliding() -> None:
    clock, limits = Clock(), CalloutLimits()
    admitted = [limits.admit("x.test", f"192.0.2.{i}", LIMITS, clock.seconds()) for i in range(40)]
    assert admitted.count(None) == 30 and admitted[30:] == [DOMAIN_RATE] * 10
    assert limits.admit("other.test", "192.0.2.99", LIMITS, clock.seconds()) is None
    clock.advance(DOMAIN_WINDOW - 1)
    assert limits.admit("x.test", "192.0.2.200", LIMITS, clock.seconds()) == DOMAIN_RATE
    clock.advance(1)
    assert limits.admit("x.test", "192.0.2.200", LIMITS, clock.seconds()) is None


def test_one_client_causes_at_most_client_rate_callouts_an_hour() -> None:
    clock, limits = Clock(), CalloutLimits()
    results = []
    for _ in range(1000):
        results.append(limits.admit("x.test", "203.0.113.9", LIMITS, clock.seconds()))
        clock.advance(5)  # 1000 recipients over 83 minutes, never hitting the domain rate
    first_hour = results[:int(CLIENT_WINDOW / 5)]
    assert first_hour.count(None) == 10
    assert set(first_hour) == {None, CLIENT_RATE}
    assert results.count(None) == 20  # a second hour began
    assert limits.admit("x.test", "198.51.100.1", LIMITS, clock.seconds()) is None


def test_refused_callout_is_not_charged() -> None:
    clock, limits = Clock(), CalloutLimits()
    small = Limits(2, rate=1, client_rate=5)
    assert limits.admit("x.test", "a", small, clock.seconds()) is None
    for _ in range(10):
        assert limits.admit("x.test", "b", small, clock.seconds()) == DOMAIN_RATE
    clock.advance(DOMAIN_WINDOW)
    assert limits.admit("x.test", "b", small, clock.seconds()) is None


def test_own_checks_are_not_charged_to_a_client() -> None:
    limits = CalloutLimits()
    tiny = Limits(2, rate=30, client_rate=1)
    assert limits.admit("x.test", "", tiny, 0.0, charge_client=False) is None
    assert limits.admit("x.test", "", tiny, 0.0, charge_client=False) is None
    assert limits.admit("x.test", "c", tiny, 0.0) is None


def test_two_connections_per_domain() -> None:
    limits = CalloutLimits()
    assert limits.may_connect("x.test", LIMITS)
    limits.opened("x.test")
    limits.opened("x.test")
    assert not limits.may_connect("x.test", LIMITS)
    assert limits.may_connect("y.test", LIMITS)
    limits.closed("x.test")
    assert limits.may_connect("x.test", LIMITS) and limits.open_sessions("x.test") == 1
