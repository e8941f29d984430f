"""Recipient callouts: policyd asks the domain's primary MX about recipients it does not know,
in the background, and keeps the answers for the day the primary is down.

The decision (common.decision) reads ``verdict`` and, while the primary is known up, returns
``Decision.verify`` for an address worth asking about; the policy service then calls
``request`` after answering, which only queues (never waits). Queued addresses of a domain are
asked in sessions (policyd.callout_session; up to BATCH addresses each) to the domain's primary
MX hosts, the set the prober uses (a fixed ``[host]:port``, or the lowest-preference MX hosts,
tried in turn), within the limits of policyd.callout_limits. Definite answers go to the cache
(common.callout_cache: memory at once, SQLite through the writer thread); temporary ones are
retried no sooner than RETRY_AFTER seconds.

Accept-all primaries: before trusting a valid answer, and then once a day, a session first asks
for a random address (common.callout_rules.probe_address). When the primary accepts it, its
answers prove nothing: the domain's callouts stop, its valid entries are dropped, a warning is
logged and ``backupmx check`` shows it, and ``verdict`` gives None, so the decision judges the
domain as if it had no callout source, until a later daily check is refused.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Set, Tuple, cast

from cachetools import TTLCache
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from backupmx.common.callout_cache import CalloutCache, DomainCheck, trusts_valid
from backupmx.common.callout_rules import (
    ACCEPT_ALL_INTERVAL,
    INVALID,
    TEMPORARY,
    VALID,
    Entry,
    Lifetimes,
    Verdict,
    callout_sources,
    probe_address,
)
from backupmx.common.config import Config, PrimarySpec
from backupmx.common.primary_state import UP
from backupmx.common.smtp_probe import mx_hosts
from backupmx.common.source_settings import CalloutSettings
from backupmx.policyd.callout_limits import CalloutLimits, Limits
from backupmx.policyd.callout_protocol import CalloutProtocol
from backupmx.policyd.callout_session import CalloutMachine

#: most addresses asked in one session
BATCH = 10
#: seconds before an address whose callout failed temporarily is asked again
RETRY_AFTER = 60.0
#: seconds between looks for domains whose accept-all check is due
CHECK_INTERVAL = 300.0
#: most addresses waiting per domain (more are dropped: the rate limit would refuse them)
MAX_PENDING = 1000

#: why request() did not queue an address (also the ``reason`` label of the skipped metric)
SKIP_REASONS = ("domain_rate", "client_rate", "pending", "retry_later", "accept_all",
                "queue_full", "not_configured")


@dataclass(frozen=True)
class CalloutDomain:
    """A domain with callouts: where its primary is and its callout source's settings."""

    domain: str
    primary: PrimarySpec
    source: str  # the source's name
    settings: CalloutSettings
    timeout: float

    @property
    def limits(self) -> Limits:
        s = self.settings
        return Limits(s.max_connections, s.rate, s.client_rate)

    @property
    def lifetimes(self) -> Lifetimes:
        return self.settings.lifetimes


def callout_setup(config: Config) -> Dict[str, CalloutDomain]:
    """Domain -> CalloutDomain for every domain a ``callout`` source speaks for
    (common.callout_rules.callout_sources)."""
    return {domain: CalloutDomain(domain, config.domains[domain], source.name,
                                  cast(CalloutSettings, source.driver), source.timeout)
            for domain, source in callout_sources(config).items()}


def lifetimes_of(setup: Mapping[str, CalloutDomain]) -> Dict[str, Lifetimes]:
    return {domain: entry.lifetimes for domain, entry in setup.items()}


class CalloutEngine:
    """See the module docstring. Runs on the reactor thread only.

    ``primaries``: PrimaryMonitor (its ``state`` says when the daily check may run); ``writer``:
    common.callout_cache.CalloutWriter (or anything with put/put_check); ``checks``: the
    stored accept-all checks; ``connect(host, port, timeout, protocol)`` returns a Deferred
    firing when connected (default: HostnameEndpoint); ``resolver``: twisted.names resolver
    for ``mx`` primaries (default: the system's)."""

    log = Logger(namespace="backupmx.policyd")

    def __init__(self, reactor: Any, setup: Mapping[str, CalloutDomain], cache: CalloutCache,
                 writer: Any, checks: Mapping[str, DomainCheck], primaries: Any,
                 helo_name: str, tls: Any = None,
                 connect: Optional[Callable[..., defer.Deferred]] = None,
                 resolver: Any = None, token: Optional[Callable[[], str]] = None) -> None:
        self.reactor = reactor
        self.cache = cache
        self.writer = writer
        self.checks: Dict[str, DomainCheck] = dict(checks)
        self.primaries = primaries
        self.helo_name = helo_name
        self.tls = tls
        self.connect = connect or self._connect
        self.resolver = resolver
        self.token = token
        self.limits = CalloutLimits()
        self._queues: Dict[str, Deque[str]] = {}
        self._queued: Set[str] = set()
        self._in_flight: Set[str] = set()
        self._probing: Set[str] = set()  # domains whose accept-all check is under way
        self._probe_tried: Dict[str, float] = {}
        # the random address of each domain's check, kept until it gets a definite answer
        # (a greylisting primary answers 4xx to a new address, so a fresh one each time
        # would never get past the greylist)
        self._probe_addresses: Dict[str, str] = {}
        self._retry: TTLCache = TTLCache(maxsize=100_000, ttl=RETRY_AFTER,
                                         timer=reactor.seconds)
        self._kicks: Dict[str, Any] = {}
        self._idle_waiters: List[defer.Deferred] = []
        self._timer: Optional[LoopingCall] = None
        #: policyd.callout_follow.StoreFollower: takes results other processes stored
        self.follower: Optional[Any] = None
        #: (domain, result) -> callouts; result valid / invalid / temporary
        self.results: Counter = Counter()
        #: (domain, reason) -> addresses not asked (SKIP_REASONS)
        self.skipped: Counter = Counter()
        #: domain -> sessions opened
        self.sessions: Counter = Counter()
        self.configure(setup)

    # ---- settings and timer ----------------------------------------------------------------

    def configure(self, setup: Mapping[str, CalloutDomain]) -> None:
        """Adopt (new) settings; queued addresses of dropped domains are forgotten."""
        self.setup: Dict[str, CalloutDomain] = dict(setup)
        self.cache.lifetimes = lifetimes_of(self.setup)
        for domain in [d for d in self._queues if d not in self.setup]:
            for address in self._queues.pop(domain):
                self._queued.discard(address)

    def start(self) -> None:
        self._timer = LoopingCall(self.check_accept_all)
        self._timer.clock = self.reactor
        self._timer.start(CHECK_INTERVAL, now=False)
        if self.follower is not None:
            self.follower.start()

    def stop(self) -> None:
        if self._timer is not None and self._timer.running:
            self._timer.stop()
        if self.follower is not None:
            self.follower.stop()
        for call in self._kicks.values():
            if call.active():
                call.cancel()
        self._kicks.clear()

    # ---- what the decision reads -----------------------------------------------------------

    def accept_all(self, domain: str) -> bool:
        check = self.checks.get(domain)
        return check is not None and check.accept_all

    def verdict(self, domain: str, address: str, now: float) -> Optional[Verdict]:
        """common.decision.CalloutVerdicts: None for an accept-all domain (or one without
        callouts), else the cached verdict."""
        if domain not in self.setup or self.accept_all(domain):
            return None
        return self.cache.verdict(address, domain, now)

    # ---- asking ----------------------------------------------------------------------------

    def request(self, domain: str, address: str, client: str, now: float) -> Optional[str]:
        """Queue a callout of ``address`` (lower-case) for ``domain``, caused by ``client``
        (an IP address text): None when queued, else why not (one of SKIP_REASONS). Never
        blocks; the session starts from the reactor's next turn."""
        entry = self.setup.get(domain)
        reason = None
        if entry is None:
            reason = "not_configured"
        elif self.accept_all(domain):
            reason = "accept_all"
        elif address in self._queued or address in self._in_flight:
            reason = "pending"
        elif address in self._retry:
            reason = "retry_later"
        elif len(self._queues.get(domain, ())) >= MAX_PENDING:
            reason = "queue_full"
        else:
            reason = self.limits.admit(domain, client, entry.limits, now)
        if reason is not None:
            self.skipped[(domain, reason)] += 1
            return reason
        self._queues.setdefault(domain, deque()).append(address)
        self._queued.add(address)
        self._kick(domain)
        return None

    def _kick(self, domain: str) -> None:
        call = self._kicks.get(domain)
        if call is None or not call.active():
            self._kicks[domain] = self.reactor.callLater(0, self.pump, domain)

    def _check_due(self, domain: str, now: float) -> bool:
        if domain in self._probing:
            return False
        check = self.checks.get(domain)
        if check is not None and now - check.checked_at < ACCEPT_ALL_INTERVAL:
            return False
        tried = self._probe_tried.get(domain)
        return tried is None or now - tried >= CHECK_INTERVAL

    def pump(self, domain: str) -> None:
        """Open sessions for the domain's queued addresses while the limits allow."""
        self._kicks.pop(domain, None)
        entry = self.setup.get(domain)
        queue = self._queues.get(domain)
        if entry is None:
            return
        if domain in self._probing and domain not in self.checks:
            # the first check is under way: what it finds decides whether valid answers can
            # be trusted, so the queue waits for it (its end kicks the queue again)
            return
        while queue and self.limits.may_connect(domain, entry.limits):
            batch = [queue.popleft() for _ in range(min(BATCH, len(queue)))]
            for address in batch:
                self._queued.discard(address)
            self._open(entry, batch)

    def check_accept_all(self) -> None:
        """The timer: a session with only the random address for each domain whose check is
        due and whose primary is up (charged to the domain's rate, not to a client)."""
        now = self.reactor.seconds()
        for domain, entry in self.setup.items():
            if (self._check_due(domain, now)
                    and self.primaries.state(domain, now).status == UP
                    and self.limits.may_connect(domain, entry.limits)
                    and self.limits.admit(domain, "", entry.limits, now,
                                          charge_client=False) is None):
                self._open(entry, [])

    def _open(self, entry: CalloutDomain, batch: List[str]) -> None:
        domain = entry.domain
        now = self.reactor.seconds()
        probe: Optional[str] = None
        if self._check_due(domain, now):
            probe = self._probe_addresses.get(domain)
            if probe is None:
                probe = probe_address(domain, self.token() if self.token else None)
                self._probe_addresses[domain] = probe
            self._probing.add(domain)
            self._probe_tried[domain] = now
            batch = [probe, *batch]
        if not batch:
            return
        self._in_flight.update(batch)
        self.limits.opened(domain)
        self.sessions[domain] += 1
        machine = CalloutMachine(entry.settings.helo_name or self.helo_name, batch,
                                 entry.settings.max_unknown, tls=self.tls is not None)
        protocol = CalloutProtocol(machine, self.tls)
        session = self._run(entry, protocol)
        session.addCallback(lambda _: self._finished(entry, machine, probe))
        session.addErrback(lambda failure: self.log.failure(
            "callout session of {domain}", failure, domain=domain))

    # ---- one session -----------------------------------------------------------------------

    def _connect(self, host: str, port: int, timeout: float,
                 protocol: CalloutProtocol) -> defer.Deferred:
        return connectProtocol(HostnameEndpoint(self.reactor, host, port, timeout=timeout),
                               protocol)

    def _hosts(self, entry: CalloutDomain) -> defer.Deferred:
        if not entry.primary.lookup_mx:
            return defer.succeed([entry.primary.host])
        if self.resolver is None:
            from twisted.names import client
            self.resolver = client.createResolver()
        lookup = self.resolver.lookupMailExchange(entry.domain, timeout=(entry.timeout,))
        return lookup.addCallback(lambda result: mx_hosts(entry.domain, result[0]))

    @defer.inlineCallbacks
    def _run(self, entry: CalloutDomain, protocol: CalloutProtocol) -> Any:
        """Connect to the first primary host that answers and let the protocol talk; the
        whole session is bounded by the source's ``timeout``."""
        timer = self.reactor.callLater(entry.timeout, self._expire, protocol)
        try:
            try:
                hosts = yield self._hosts(entry)
            except Exception as error:  # DNS failure, null MX: nobody to ask
                protocol.machine.connection_lost(f"MX lookup failed: {error}")
                return
            for host in hosts:
                if not timer.active():
                    break
                attempt = self.connect(host, entry.primary.port, entry.timeout, protocol)
                protocol.attempt = attempt  # for _expire
                try:
                    yield attempt
                except Exception as error:  # refused, unreachable, cancelled: next host
                    self.log.debug("callout to {host}: {error}", host=host, error=error)
                    continue
                yield protocol.done
                return
            protocol.machine.connection_lost(f"could not connect to {', '.join(hosts)}")
        finally:
            if timer.active():
                timer.cancel()

    @staticmethod
    def _expire(protocol: CalloutProtocol) -> None:
        if protocol.transport is not None:
            protocol.timed_out()
            return
        attempt = getattr(protocol, "attempt", None)
        if attempt is not None and not attempt.called:
            attempt.cancel()

    def _finished(self, entry: CalloutDomain, machine: CalloutMachine,
                  probe: Optional[str]) -> None:
        domain = entry.domain
        self.limits.closed(domain)
        self._in_flight.difference_update(machine.addresses)
        if machine.unasked:  # the session ended after max_unknown refusals: next session
            queue = self._queues.setdefault(domain, deque())
            queue.extendleft(reversed(machine.unasked))
            self._queued.update(machine.unasked)
        now = self.reactor.seconds()
        results = dict(machine.results)
        if probe is not None:
            self._probing.discard(domain)
            outcome = results.pop(probe)
            self.results[(domain, "accept_all_check")] += 1
            if outcome.status != TEMPORARY:
                self._probe_addresses.pop(domain, None)  # the next check asks a new one
            if outcome.status == VALID:
                self._found_accept_all(domain, now, outcome.reply)
                return
            if outcome.status == INVALID:
                was = self.accept_all(domain)
                refused = DomainCheck(domain, False, now, outcome.reply)
                self.checks[domain] = refused
                self.writer.put_check(refused)
                if was:
                    self.log.info("callouts for {domain}: the primary refuses unknown "
                                  "recipients again; callouts resume", domain=domain)
        trusted = trusts_valid(self.checks.get(domain))
        entries: List[Entry] = []
        for address, outcome in results.items():
            self.results[(domain, outcome.status)] += 1
            self.log.info("callout {address}: {status} ({reply})", address=address,
                          status=outcome.status, reply=outcome.reply)
            if outcome.status == TEMPORARY:
                self._retry[address] = True
                continue
            if outcome.status == VALID and not trusted:
                continue  # not known yet whether the primary accepts every address
            kept = self.cache.record(Entry(address, domain, outcome.status, now,
                                           outcome.reply[:200]))
            if kept is not None:
                entries.append(kept)
        if entries:
            self.writer.put(entries)
        if self._queues.get(domain):
            self._kick(domain)
        self._tell_idle()

    def busy(self) -> bool:
        """True while a session is open or an address waits."""
        return bool(self._in_flight or any(self._queues.values()) or
                    any(c.active() for c in self._kicks.values()))

    def when_idle(self) -> defer.Deferred:
        """A Deferred firing once no session is open and no address waits (tests, shutdown)."""
        if not self.busy():
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _tell_idle(self) -> None:
        if self._idle_waiters and not self.busy():
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _found_accept_all(self, domain: str, now: float, reply: str) -> None:
        was = self.accept_all(domain)
        check = DomainCheck(domain, True, now, reply)
        self.checks[domain] = check
        self.writer.put_check(check)
        self.cache.forget_domain(domain)
        self.writer.forget(domain)
        for address in self._queues.pop(domain, ()):
            self._queued.discard(address)
        self._tell_idle()
        if not was:
            self.log.warn("callouts for {domain} stop: its primary accepted the random address "
                          "(it accepts every recipient, so callouts prove nothing); the domain "
                          "is judged as if it had no callout source", domain=domain)

    # ---- for metrics -----------------------------------------------------------------------

    def cache_sizes(self) -> Dict[Tuple[str, str], int]:
        """(domain, status) -> cached entries."""
        return self.cache.counts()

    def pending(self) -> Dict[str, int]:
        return {domain: len(queue) for domain, queue in self._queues.items()}
