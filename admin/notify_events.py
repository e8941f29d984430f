"""Which notifications are due: a pure function of each domain's status, what was sent, and now.

Events (``[notify]``, evaluated by every ``backupmx flush --auto`` run):

- ``held``: the domain has held mail and its oldest held message is at least ``held_after``
  seconds old; sent once per episode of held mail;
- ``reminder``: every ``repeat`` seconds after the last ``held``/``reminder`` while it lasts;
- ``all_clear``: the first run that finds nothing held after a ``held`` was sent;
- ``bounce_warning``: the oldest held message is within ``bounce_warning`` seconds of
  Postfix's ``maximal_queue_lifetime``; at most once per ``repeat`` while that lasts.

Nothing here depends on the primary's state, so a flapping primary sends nothing; an event is
decided once and its state advanced whether or not sending it succeeded (a failing channel is
logged, never retried into a storm).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

HELD, REMINDER, ALL_CLEAR, BOUNCE_WARNING = "held", "reminder", "all_clear", "bounce_warning"
EVENTS = (HELD, REMINDER, ALL_CLEAR, BOUNCE_WARNING)


@dataclass(frozen=True)
class NotifyState:
    """What was last sent for one domain (Unix seconds; None: never in this episode)."""

    held_sent_at: Optional[float] = None      # the episode's ``held`` event
    last_sent_at: Optional[float] = None      # the last ``held`` or ``reminder``
    bounce_warned_at: Optional[float] = None  # the last ``bounce_warning``


@dataclass(frozen=True)
class Thresholds:
    """``[notify]`` durations in seconds."""

    held_after: int
    repeat: int
    bounce_warning: int


Event = Dict[str, Any]


def due_events(rows: Sequence[Mapping[str, Any]], states: Mapping[str, NotifyState], now: float,
               limits: Thresholds, host: str) -> Tuple[List[Event], Dict[str, NotifyState]]:
    """The events to send now and every domain's new state (pure).

    ``rows`` are status rows (admin/status.py ``domain_status`` shape: domain, primary,
    held_messages, held_bytes, oldest_held_seconds, bounces_in_seconds); a domain with a state
    but no row counts as holding nothing. Returns (events in row order, new states; a domain
    whose state is all None is left out).
    """
    events: List[Event] = []
    new_states: Dict[str, NotifyState] = {}
    by_domain = {row["domain"]: row for row in rows}
    for domain in [*by_domain, *sorted(set(states) - set(by_domain))]:
        row = by_domain.get(domain, {"domain": domain, "held_messages": 0})
        state = states.get(domain, NotifyState())
        kinds, state = _decide(row, state, now, limits)
        events.extend(event(kind, row, host, now) for kind in kinds)
        if state != NotifyState():
            new_states[domain] = state
    return events, new_states


def _decide(row: Mapping[str, Any], state: NotifyState, now: float,
            limits: Thresholds) -> Tuple[List[str], NotifyState]:
    held = int(row.get("held_messages") or 0) > 0
    kinds: List[str] = []
    if not held:
        if state.held_sent_at is not None:
            kinds.append(ALL_CLEAR)
        return kinds, NotifyState()
    oldest = row.get("oldest_held_seconds")
    if state.held_sent_at is None:
        if oldest is not None and oldest >= limits.held_after:
            kinds.append(HELD)
            state = replace(state, held_sent_at=now, last_sent_at=now)
    elif state.last_sent_at is None or now - state.last_sent_at >= limits.repeat:
        kinds.append(REMINDER)
        state = replace(state, last_sent_at=now)
    bounces_in = row.get("bounces_in_seconds")
    if bounces_in is not None and bounces_in <= limits.bounce_warning and (
            state.bounce_warned_at is None or now - state.bounce_warned_at >= limits.repeat):
        kinds.append(BOUNCE_WARNING)
        state = replace(state, bounce_warned_at=now)
    elif bounces_in is not None and bounces_in > limits.bounce_warning:
        state = replace(state, bounce_warned_at=None)  # that message left: warn anew later
    return kinds, state


def event(kind: str, row: Mapping[str, Any], host: str, now: float) -> Event:
    """The event as JSON-ready data: what a ``command`` reads on standard input."""
    held = int(row.get("held_messages") or 0)
    return {
        "event": kind,
        "domain": row["domain"],
        "held_messages": held,
        "held_bytes": int(row.get("held_bytes") or 0) if held else 0,
        "oldest_held_seconds": row.get("oldest_held_seconds") if held else None,
        "bounces_in_seconds": row.get("bounces_in_seconds") if held else None,
        "primary": row.get("primary", "unknown"),
        "host": host,
        "time": now,
    }


def subject(item: Mapping[str, Any]) -> str:
    """A one-line mail subject for an event."""
    domain, count = item["domain"], item["held_messages"]
    noun = "message" if count == 1 else "messages"
    if item["event"] == ALL_CLEAR:
        return f"backupmx {item['host']}: all held mail of {domain} has left"
    if item["event"] == BOUNCE_WARNING:
        return (f"backupmx {item['host']}: held mail of {domain} bounces in "
                f"{_hours(item['bounces_in_seconds'])}")
    what = "still holds" if item["event"] == REMINDER else "holds"
    return (f"backupmx {item['host']} {what} {count} {noun} for {domain} "
            f"(oldest {_hours(item['oldest_held_seconds'])}, primary {item['primary']})")


def _hours(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{int(seconds) // 60} min"
