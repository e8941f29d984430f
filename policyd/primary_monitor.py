"""Background probes of each relay domain's primary MX, and the one place their state lives.

Probes run on a timer (``probe_interval``; ``probe_interval_down`` while a primary is down so its
return is noticed quickly), never on the request path. ``state(domain, now)`` is what the
decision, the metrics and the logs ask: a result older than ``max_age`` (two intervals plus a
timeout) is "unknown", which the decision treats like "down" (accept: a backup MX exists for the
day the checks cannot be made). Hysteresis keeps a flapping primary from flipping decisions.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Deque, Dict, List, Mapping, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger

from backupmx.common.config import PrimarySpec
from backupmx.common.primary_state import DOWN, UNKNOWN, UP, PrimaryState
from backupmx.common.smtp_probe import ProbeResult, probe_primary

_UNKNOWN = PrimaryState(UNKNOWN)

#: listeners called on the reactor thread with (domain, new state) after the reported state
#: of a domain's primary changed
StateListener = Callable[[str, PrimaryState], None]


def reported_state(previous: Optional[bool], recent: Sequence[bool], up_after: int,
                   down_after: int) -> Optional[bool]:
    """The state to report from the latest probe results (oldest first): hysteresis.

    The first result is taken at once (nothing is known before it). After that, the reported
    state changes only when the last ``up_after`` (or ``down_after``) results all agree on the
    other state, so a flapping primary does not flip every decision back and forth.
    """
    if not recent:
        return previous
    if previous is None:
        return recent[-1]
    needed = down_after if previous else up_after
    tail = list(recent)[-needed:]
    if len(tail) == needed and all(result != previous for result in tail):
        return not previous
    return previous


@dataclass
class _Track:
    """Everything known of one domain's primary; only this module writes it."""

    recent: Deque[bool]
    reported: Optional[bool] = None
    host: str = ""
    checked_at: Optional[float] = None
    changed_at: Optional[float] = None
    error: Optional[str] = None
    state: PrimaryState = field(default=_UNKNOWN)


class PrimaryMonitor:
    """Probes every domain's primary on a timer and answers ``state(domain, now)``."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        domains: Mapping[str, PrimarySpec],
        interval: float,
        timeout: float,
        resolver: Any = None,
        up_after: int = 1,
        down_after: int = 1,
        interval_down: Optional[float] = None,
        local_names: Collection[str] = (),
        probe: Callable[..., defer.Deferred] = probe_primary,
    ) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.local_names = frozenset(local_names)
        self.probe = probe
        self.listeners: List[StateListener] = []
        self._tracks: Dict[str, _Track] = {}
        self._in_flight: Dict[str, defer.Deferred] = {}
        self._next: Dict[str, Any] = {}  # domain -> IDelayedCall of its next probe
        self._running = False
        self.configure(domains, interval, timeout, up_after, down_after, interval_down)

    # ---- settings ----------------------------------------------------------------------------

    def configure(self, domains: Mapping[str, PrimarySpec], interval: float, timeout: float,
                  up_after: int = 1, down_after: int = 1,
                  interval_down: Optional[float] = None) -> None:
        """Adopt (new) settings: forget removed domains, keep what is known of the others."""
        self.domains: Dict[str, PrimarySpec] = dict(domains)
        self.interval = interval
        self.interval_down = min(interval_down or interval, interval)
        self.timeout = timeout
        self.up_after = up_after
        self.down_after = down_after
        # a result older than this is "unknown": two missed probes plus one timeout
        self.max_age = interval * 2 + timeout
        window = max(up_after, down_after)
        for domain in [d for d in self._tracks if d not in self.domains]:
            del self._tracks[domain]
            self._cancel(domain)
        for track in self._tracks.values():
            if track.recent.maxlen != window:
                track.recent = deque(track.recent, window)

    # ---- the one place state is read ---------------------------------------------------------

    def state(self, domain: str, now: float) -> PrimaryState:
        """The reported state of a domain's primary at ``now`` (Unix seconds).

        ``unknown`` when never probed, not configured, or the last result is older than
        ``max_age`` seconds.
        """
        track = self._tracks.get(domain)
        if track is None:
            return _UNKNOWN
        checked_at = track.checked_at
        if checked_at is None or now - checked_at > self.max_age:
            if track.state.status == UNKNOWN:
                return track.state
            return PrimaryState(UNKNOWN, track.host, checked_at, track.changed_at, track.error)
        return track.state

    # ---- the timer ---------------------------------------------------------------------------

    def start(self) -> None:
        """Probe every domain now, then each on its own timer."""
        self._running = True
        self.probe_all()

    def stop(self) -> None:
        self._running = False
        for domain in list(self._next):
            self._cancel(domain)

    def probe_all(self) -> None:
        """Probe every domain not already being probed (also after a reload)."""
        for domain in list(self.domains):
            if domain not in self._in_flight:
                self._cancel(domain)
                self.probe_domain(domain)

    def _cancel(self, domain: str) -> None:
        call = self._next.pop(domain, None)
        if call is not None and call.active():
            call.cancel()

    def _schedule(self, domain: str) -> None:
        if not self._running or domain not in self.domains:
            return
        track = self._tracks.get(domain)
        delay = self.interval_down if track is not None and track.reported is False \
            else self.interval
        self._cancel(domain)
        self._next[domain] = self.reactor.callLater(delay, self._timer, domain)

    def _timer(self, domain: str) -> None:
        self._next.pop(domain, None)
        if domain in self.domains and domain not in self._in_flight:
            self.probe_domain(domain)

    def probe_domain(self, domain: str) -> defer.Deferred:
        """Probe one domain's primary now and record the result; fires when recorded."""
        spec = self.domains[domain]
        done = self.probe(self.reactor, domain, spec, self.timeout, self.resolver,
                          self.local_names)
        self._in_flight[domain] = done

        def record(result: ProbeResult) -> None:
            self._in_flight.pop(domain, None)
            if domain in self.domains and self.domains[domain] == spec:
                self.record(domain, result)
            self._schedule(domain)

        return done.addCallback(record)

    # ---- results -----------------------------------------------------------------------------

    def record(self, domain: str, result: ProbeResult) -> None:
        """Take one probe result (public for tests that feed results without a network)."""
        if domain not in self.domains:
            return
        now = self.reactor.seconds()
        track = self._tracks.get(domain)
        if track is None:
            window = max(self.up_after, self.down_after)
            track = self._tracks[domain] = _Track(deque(maxlen=window))
        if result.error is not None:
            if result.error != track.error:
                self.log.error("primary of {domain}: {error}", domain=domain, error=result.error)
            track.error = result.error
            track.checked_at = now
            track.recent.clear()
            changed = track.reported is not None or track.state.status != UNKNOWN
            track.reported = None
            track.state = PrimaryState(UNKNOWN, result.host, now, now if changed else
                                       track.changed_at, result.error)
            if changed:
                track.changed_at = now
                self._tell(domain, track.state)
            return
        track.error = None
        track.recent.append(result.up)
        previous = track.reported
        reported = reported_state(previous, track.recent, self.up_after, self.down_after)
        track.checked_at = now
        if reported != previous or result.up == reported:
            # the host that says what is reported, or why there was none to ask
            track.host = result.host or result.detail
        if reported != previous:
            track.reported = reported
            track.changed_at = now
        track.state = PrimaryState(UP if reported else DOWN, track.host, now, track.changed_at)
        if reported != previous:
            self.log.info("primary of {domain} ({host}) is {state}", domain=domain,
                          host=track.host, state=track.state.status)
            self._tell(domain, track.state)
        elif result.up != reported:
            self.log.debug("primary of {domain} ({host}) probed {raw}, still reported {state}",
                           domain=domain, host=result.host, raw=UP if result.up else DOWN,
                           state=track.state.status)

    def _tell(self, domain: str, state: PrimaryState) -> None:
        for listener in list(self.listeners):
            listener(domain, state)
