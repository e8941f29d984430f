"""Primary state hysteresis: a flapping primary must not flip decisions back and forth."""
from __future__ import annotations

from typing import List, Optional

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from backupmx.policyd.config import PrimarySpec, parse_config
from backupmx.policyd.prober import PrimaryProber, reported_state

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


def prober(up_after: int, down_after: int) -> PrimaryProber:
    return PrimaryProber(Clock(), {"a.test": PrimarySpec("192.0.2.1", 25)}, 30, 5,
                         up_after=up_after, down_after=down_after)


def feed(p: PrimaryProber, results: List[bool]) -> List[bool]:
    """Record probe results 30 s apart; return the state the decision saw after each."""
    seen = []
    for up in results:
        p.reactor.advance(30)
        p._record("a.test", "192.0.2.1", up)
        seen.append(p.states["a.test"].up)
    return seen


def test_flapping_primary_causes_no_decision_storm() -> None:
    p = prober(up_after=2, down_after=2)
    seen = feed(p, [U, D, U, D, U, D, U, D, U, D])
    assert seen == [U] * 10  # never two agreeing probes against the reported state
    assert p.changed_at["a.test"] == 30  # the one change: the first result


def test_state_changes_after_agreeing_probes_and_records_when() -> None:
    p = prober(up_after=2, down_after=1)
    assert feed(p, [D, U, U, D, U, U]) == [D, D, U, D, D, U]
    assert p.changed_at["a.test"] == 180
    assert p.reported == {"a.test": U}


def test_defaults_from_configuration() -> None:
    settings = parse_config("[policyd]\n").policyd
    assert (settings.primary_up_after, settings.primary_down_after) == (2, 1)
    p = prober(settings.primary_up_after, settings.primary_down_after)
    assert feed(p, [U, D, U, D]) == [U, D, D, D]  # fail safe: accept while it flaps


def test_reload_adopts_new_thresholds_and_forgets_removed_domains() -> None:
    p = prober(up_after=1, down_after=1)
    feed(p, [U])
    p._in_flight["a.test"] = Deferred()  # update() probes at once: not on a Clock
    p.update({"a.test": PrimarySpec("192.0.2.1", 25)}, 30, 5, up_after=3, down_after=3)
    assert feed(p, [D, D]) == [U, U]
    assert feed(p, [D]) == [D]
    p.update({}, 30, 5)
    assert p.reported == {} and p.changed_at == {}
