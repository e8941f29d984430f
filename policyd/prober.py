"""Background probes of each relay domain's primary MX, results in a TTL cache.

A probe connects, waits for a ``220`` greeting, says QUIT and hangs up, all within probe_timeout.
``mx`` domains look up their lowest-preference MX host with twisted.names first. Nothing here is on
the request path: the decision only reads ``states``; a missing or expired entry means "unknown",
which the decision treats like "down" (accept).
"""
from __future__ import annotations

from collections import deque
from typing import Any, Deque, Dict, Mapping, Optional, Sequence

from cachetools import TTLCache
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from backupmx.policyd.config import PrimarySpec
from backupmx.policyd.decision import PrimaryState


class NoPrimaryHost(Exception):
    """DNS gave no usable MX host for a domain."""


class _GreetingProbe(LineOnlyReceiver):
    """Reads the first line of the SMTP greeting, answers QUIT, reports whether it was 220."""

    delimiter = b"\n"
    MAX_LENGTH = 4096

    def __init__(self) -> None:
        self.greeted: defer.Deferred = defer.Deferred()

    def lineReceived(self, line: bytes) -> None:
        if self.greeted.called:
            return
        self.greeted.callback(line[:3] == b"220")
        self.sendLine(b"QUIT\r")
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.greeted.called:
            self.greeted.callback(False)


def probe_smtp(reactor: Any, host: str, port: int, timeout: float) -> defer.Deferred:
    """Deferred firing True if host:port greets with 220 within timeout, else False."""
    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    factory = Factory.forProtocol(_GreetingProbe)
    factory.noisy = False
    connected = endpoint.connect(factory)

    def greeting(protocol: _GreetingProbe) -> defer.Deferred:
        def silent(failure: Any) -> bool:
            failure.trap(defer.TimeoutError)
            protocol.transport.abortConnection()
            return False
        return protocol.greeted.addTimeout(timeout, reactor).addErrback(silent)

    connected.addCallback(greeting)
    connected.addErrback(lambda failure: False)
    return connected


def lowest_mx(answers: Any) -> str:
    """The exchange with the lowest preference among MX answers (twisted.names records)."""
    best: Optional[Any] = None
    for record in answers:
        payload = getattr(record, "payload", None)
        if payload is None or not hasattr(payload, "preference"):
            continue
        if best is None or payload.preference < best.preference:
            best = payload
    if best is None:
        raise NoPrimaryHost("no MX record")
    return str(best.name).rstrip(".")


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


class PrimaryProber:
    """Probes every domain's primary on a timer; ``states`` is what the decision reads."""

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
    ) -> None:
        self.reactor = reactor
        self.up_after = up_after
        self.down_after = down_after
        # Per domain: recent raw probe results, the reported state and when it last changed.
        self._recent: Dict[str, Deque[bool]] = {}
        self.reported: Dict[str, bool] = {}
        self.changed_at: Dict[str, float] = {}
        self.domains: Dict[str, PrimarySpec] = dict(domains)
        self.interval = interval
        self.timeout = timeout
        self.resolver = resolver
        self.max_age = interval * 2 + timeout
        self.states: TTLCache = self._new_states()
        self._in_flight: Dict[str, defer.Deferred] = {}
        self._loop: Any = None

    def _new_states(self) -> TTLCache:
        """A cache sized for the configured domains, keeping states for max_age."""
        return TTLCache(maxsize=max(len(self.domains), 1) * 2 + 64, ttl=self.max_age,
                        timer=self.reactor.seconds)

    def start(self) -> None:
        from twisted.internet.task import LoopingCall
        self._loop = LoopingCall(self.probe_all)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def update(self, domains: Mapping[str, PrimarySpec], interval: float, timeout: float,
               up_after: Optional[int] = None, down_after: Optional[int] = None) -> None:
        """Adopt a reloaded configuration; forget domains no longer configured."""
        self.domains = dict(domains)
        self.up_after = up_after or self.up_after
        self.down_after = down_after or self.down_after
        for table in (self._recent, self.reported, self.changed_at):
            for gone in [d for d in table if d not in self.domains]:
                del table[gone]
        self.timeout = timeout
        self.max_age = interval * 2 + timeout
        # A new cache: TTLCache's ttl and maxsize are fixed, and both depend on the settings.
        states = self._new_states()
        for domain in list(self.states):
            state = self.states.get(domain)  # None if it expired meanwhile
            if state is not None and domain in self.domains:
                states[domain] = state
        self.states = states
        if interval != self.interval and self._loop is not None and self._loop.running:
            self._loop.stop()
            self.interval = interval
            self._loop.start(interval, now=False)
        self.interval = interval
        self.probe_all()

    def probe_all(self) -> None:
        for domain in list(self.domains):
            if domain not in self._in_flight:
                self.probe_domain(domain)

    def probe_domain(self, domain: str) -> defer.Deferred:
        """Probe one domain's primary now and record the result."""
        spec = self.domains[domain]
        started = defer.maybeDeferred(self._primary_host, domain, spec)

        def probe(host: str) -> defer.Deferred:
            return probe_smtp(self.reactor, host, spec.port, self.timeout).addCallback(
                lambda up: (host, up))

        def no_host(failure: Any) -> "tuple[str, bool]":
            self.log.warn("cannot find the primary MX of {domain}: {why}", domain=domain,
                          why=failure.getErrorMessage())
            return ("(no MX)", False)

        def record(result: "tuple[str, bool]") -> None:
            host, up = result
            self._record(domain, host, up)

        done = started.addCallbacks(probe, no_host).addCallback(record)
        self._in_flight[domain] = done
        done.addBoth(lambda result: self._in_flight.pop(domain, None) and None)
        return done

    def _primary_host(self, domain: str, spec: PrimarySpec) -> Any:
        if not spec.lookup_mx:
            return spec.host
        resolver = self.resolver
        if resolver is None:
            from twisted.names import client
            resolver = self.resolver = client.createResolver()
        lookup = resolver.lookupMailExchange(domain, timeout=(self.timeout,))
        return lookup.addCallback(lambda result: lowest_mx(result[0]))

    def _record(self, domain: str, host: str, up: bool) -> None:
        if domain not in self.domains:
            return
        recent = self._recent.get(domain)
        if recent is None:
            recent = self._recent[domain] = deque(maxlen=max(self.up_after, self.down_after))
        elif recent.maxlen != max(self.up_after, self.down_after):
            recent = self._recent[domain] = deque(recent, max(self.up_after, self.down_after))
        recent.append(up)
        previous = self.reported.get(domain)
        state = reported_state(previous, recent, self.up_after, self.down_after)
        now = self.reactor.seconds()
        self.states[domain] = PrimaryState(up=bool(state), host=host, checked_at=now)
        if state != previous:
            self.reported[domain] = bool(state)
            self.changed_at[domain] = now
            self.log.info("primary of {domain} ({host}) is {state}", domain=domain, host=host,
                          state="up" if state else "down")
        elif up != state:
            self.log.debug("primary of {domain} ({host}) probed {raw}, still reported {state}",
                           domain=domain, host=host, raw="up" if up else "down",
                           state="up" if state else "down")
