"""Which [notify] events are due: held, reminder, all_clear, bounce_warning, each sent once.

The decision is pure: status rows, the state the ledger keeps, and ``now`` (an injected clock:
each test walks time forward by hand, the way successive `flush --auto` runs would see it).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from backupmx.admin.notify_events import (
    NotifyState,
    Thresholds,
    due_events,
    subject,
)
from backupmx.common.config import parse_config

MIN, HOUR, DAY = 60, 3600, 86400
LIFETIME = 5 * DAY
DEFAULTS = Thresholds(held_after=15 * MIN, repeat=DAY, bounce_warning=DAY)


def row(domain: str, held: int, oldest_at: Optional[float], now: float,
        primary: str = "down", held_bytes: int = 1000) -> Dict[str, Any]:
    oldest = None if oldest_at is None or not held else int(now - oldest_at)
    return {"domain": domain, "primary": primary, "held_messages": held,
            "held_bytes": held_bytes if held else 0, "oldest_held_seconds": oldest,
            "bounces_in_seconds": None if oldest is None else max(0, LIFETIME - oldest)}


class Runs:
    """Successive flush --auto runs: the state carried from one to the next, as the ledger
    would."""

    def __init__(self, limits: Thresholds = DEFAULTS) -> None:
        self.limits = limits
        self.states: Dict[str, NotifyState] = {}

    def run(self, now: float, *rows: Dict[str, Any]) -> List[Tuple[str, str]]:
        events, self.states = due_events(list(rows), self.states, now, self.limits, "mx2.test")
        return [(e["event"], e["domain"]) for e in events]


def test_held_after_the_threshold_then_reminders_then_all_clear() -> None:
    runs, since = Runs(), 1000.0
    for now in (since, since + 5 * MIN, since + 14 * MIN):   # not yet 15 minutes
        assert runs.run(now, row("a.test", 3, since, now)) == []
    now = since + 15 * MIN
    assert runs.run(now, row("a.test", 3, since, now)) == [("held", "a.test")]
    for later in (now + 5 * MIN, now + 10 * HOUR, now + DAY - 1):
        assert runs.run(later, row("a.test", 4, since, later)) == []      # sent once
    assert runs.run(now + DAY, row("a.test", 4, since, now + DAY)) == [("reminder", "a.test")]
    assert runs.run(now + DAY + 5 * MIN, row("a.test", 4, since, now)) == []
    assert runs.run(now + 2 * DAY, row("a.test", 4, since, now)) == [("reminder", "a.test")]
    assert runs.run(now + 2 * DAY + 5 * MIN, row("a.test", 0, None, now)) == \
        [("all_clear", "a.test")]
    assert runs.run(now + 2 * DAY + 10 * MIN, row("a.test", 0, None, now)) == []
    assert runs.states == {}


def test_held_after_zero_one_run_sends_held_and_the_next_empty_run_all_clear() -> None:
    runs = Runs(Thresholds(held_after=0, repeat=DAY, bounce_warning=DAY))
    assert runs.run(100.0, row("a.test", 1, 100.0, 100.0)) == [("held", "a.test")]
    assert runs.run(400.0, row("a.test", 0, None, 400.0)) == [("all_clear", "a.test")]


def test_short_episode_below_held_after_sends_nothing_at_all() -> None:
    runs = Runs()
    assert runs.run(1000.0, row("a.test", 2, 900.0, 1000.0)) == []
    assert runs.run(1300.0, row("a.test", 0, None, 1300.0)) == []   # no held: no all_clear


def test_flapping_primary_sends_no_storm() -> None:
    runs, since = Runs(), 0.0
    sent = []
    for step in range(1, 200):  # a run every 5 minutes for 16 hours, primary flapping
        now = since + 15 * MIN + step * 5 * MIN
        sent += runs.run(now, row("a.test", 3, since, now, primary="up" if step % 2 else "down"))
    assert sent == [("held", "a.test")]


def test_each_domain_on_its_own_and_a_vanished_domain_gets_its_all_clear() -> None:
    runs = Runs()
    now = 2 * HOUR
    assert runs.run(now, row("a.test", 1, 0.0, now), row("b.test", 1, now - 60, now)) == \
        [("held", "a.test")]
    now += HOUR
    # a.test is no longer configured and has nothing held: no row at all
    assert runs.run(now, row("b.test", 1, now - 2 * HOUR, now)) == \
        [("held", "b.test"), ("all_clear", "a.test")]


def test_bounce_warning_once_per_repeat_while_within_the_window() -> None:
    runs = Runs()
    since = 0.0
    now = LIFETIME - DAY - 1                        # a day and a second before bouncing
    assert runs.run(now, row("a.test", 1, since, now)) == [("held", "a.test")]
    now = LIFETIME - DAY                            # exactly a day: warn
    assert runs.run(now, row("a.test", 1, since, now)) == [("bounce_warning", "a.test")]
    for later in (now + HOUR, now + 12 * HOUR):
        assert runs.run(later, row("a.test", 1, since, later)) == []
    # the old message bounced; the next oldest is young: the warning may come again later
    now += 20 * HOUR
    assert runs.run(now, row("a.test", 1, now - HOUR, now)) == []
    assert runs.states["a.test"].bounce_warned_at is None
    now += DAY - 20 * HOUR + 1
    assert runs.run(now, row("a.test", 1, now - HOUR, now)) == [("reminder", "a.test")]


def test_event_json_has_the_documented_keys() -> None:
    events, _ = due_events([row("a.test", 12, 40.0, 1000.0, primary="up", held_bytes=34567)],
                           {}, 1000.0, Thresholds(0, DAY, DAY), "mx2.test")
    [event] = events
    assert {k: event[k] for k in ("event", "domain", "held_messages", "held_bytes",
                                  "oldest_held_seconds", "primary", "host")} == {
        "event": "held", "domain": "a.test", "held_messages": 12, "held_bytes": 34567,
        "oldest_held_seconds": 960, "primary": "up", "host": "mx2.test"}
    assert subject(event) == "backupmx mx2.test holds 12 messages for a.test (oldest 16 min, " \
                             "primary up)"
    clear, _ = due_events([], {"a.test": NotifyState(1.0, 1.0)}, 2000.0, DEFAULTS, "mx2.test")
    assert clear[0]["held_messages"] == 0 and clear[0]["oldest_held_seconds"] is None
    assert subject(clear[0]) == "backupmx mx2.test: all held mail of a.test has left"


def test_configuration_defaults_and_postfix_time_syntax() -> None:
    notify = parse_config("").notify
    assert not notify.enabled
    assert (notify.held_after, notify.repeat, notify.bounce_warning) == (900, 86400, 86400)
    notify = parse_config("[notify]\ncommand = /usr/local/bin/page\nheld_after = 0\n"
                          "repeat = 2d\nbounce_warning = 3600\n").notify
    assert notify.enabled and (notify.held_after, notify.repeat, notify.bounce_warning) == \
        (0, 2 * DAY, HOUR)
