"""Prometheus metrics of policyd: what it decided, what it knows, how fast it answers.

The request path only bumps plain counters (one dict update per decision, one bisect per latency
sample): prometheus_client's own Counter and Histogram take a lock per call, which the policy
benchmark would notice. A custom collector turns those counters, and the service's state read at
scrape time, into metric families. ``MetricsResource`` serves them from a worker thread, so the
collector copies the reactor-owned state on the reactor thread first.

Label values are bounded: ``domain`` is a configured relay domain or ``-`` (a request for any
other domain must not create a time series).
"""
from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from backupmx.common.decision import Decision
from backupmx.policyd.codec import Request

# Seconds; policyd answers in tens of microseconds, Postfix gives up after its timeout.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)
NO_DOMAIN = "-"
_NOT_OURS = frozenset(("not_ours", "other_state"))


class DecisionCounts:
    """The hot-path half: decisions per (domain, outcome) and a latency histogram, as plain data."""

    def __init__(self, buckets: Tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.decisions: Dict[Tuple[str, str], int] = {}
        self.buckets = buckets
        self.latency_counts: List[int] = [0] * (len(buckets) + 1)  # last: above every bucket
        self.latency_sum = 0.0

    def observe(self, request: Request, decision: Decision) -> None:
        """A PolicyService observer: count one decision."""
        outcome = decision.outcome
        # Every outcome but these two is only reached for a configured domain.
        key = (NO_DOMAIN if outcome in _NOT_OURS else decision.domain or NO_DOMAIN, outcome)
        decisions = self.decisions
        decisions[key] = decisions.get(key, 0) + 1

    def timed(self, respond: Callable[[Request], str],
              clock: Callable[[], float] = time.perf_counter) -> Callable[[Request], str]:
        """Wrap a responder so each call's duration lands in the latency histogram."""
        counts, buckets = self.latency_counts, self.buckets

        def respond_timed(request: Request) -> str:
            started = clock()
            action = respond(request)
            elapsed = clock() - started
            counts[bisect_left(buckets, elapsed)] += 1
            self.latency_sum += elapsed
            return action
        return respond_timed


def _state_of(service: Any, factory: Any, counts: DecisionCounts, now: float) -> Dict[str, Any]:
    """Copy everything a scrape reports (runs on the reactor thread)."""
    states = {domain: service.primaries.state(domain, now) for domain in service.config.domains}
    return {
        "decisions": dict(counts.decisions),
        "latency": (list(counts.latency_counts), counts.latency_sum),
        "connections": factory.connections if factory is not None else 0,
        "states": {domain: state.status for domain, state in states.items()},
        "changed_at": {domain: state.changed_at for domain, state in states.items()
                       if state.changed_at is not None},
        "map_keys": len(service.maps.recipients),
        "last_reload": service.last_reload,
        "held_back": len(service.held_back),
        "sources": dict(getattr(service, "source_states", {})),
        "fresh_until": dict(service.policy.fresh_until),
        "callouts": _callout_state(getattr(service, "callouts", None)),
    }


def _callout_state(engine: Any) -> Optional[Dict[str, Any]]:
    """The callout engine's counts (policyd.callouts.CalloutEngine), or None without one."""
    if engine is None:
        return None
    return {
        "results": dict(engine.results),
        "skipped": dict(engine.skipped),
        "sessions": dict(engine.sessions),
        "cache": engine.cache_sizes(),
        "accept_all": {domain: engine.accept_all(domain) for domain in engine.setup},
    }


def _family(kind: Any, name: str, documentation: str, labels: List[str],
            samples: Mapping[Any, float]) -> Any:
    """A metric family of ``kind`` (CounterMetricFamily, GaugeMetricFamily) with one sample
    per key of ``samples`` (a label value, or a tuple of them), in key order."""
    family = kind(name, documentation, labels=labels)
    for key, value in sorted(samples.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], float(value))
    return family


def _callout_families(data: Dict[str, Any]) -> Iterator[Any]:
    yield _family(CounterMetricFamily, "backupmx_callouts", "Recipient callouts by relay "
                  "domain and result (valid, invalid, temporary, accept_all_check)",
                  ["domain", "result"], data["results"])
    yield _family(CounterMetricFamily, "backupmx_callouts_skipped", "Recipients not verified "
                  "with a callout, by relay domain and reason (domain_rate, client_rate, "
                  "pending, retry_later, accept_all, queue_full)", ["domain", "reason"],
                  data["skipped"])
    yield _family(CounterMetricFamily, "backupmx_callout_sessions", "Callout sessions opened "
                  "to the primary MX", ["domain"], data["sessions"])
    yield _family(GaugeMetricFamily, "backupmx_callout_cache_entries", "Cached callout results "
                  "by relay domain and status (valid, invalid)", ["domain", "status"],
                  data["cache"])
    yield _family(GaugeMetricFamily, "backupmx_callout_accept_all", "1 while callouts for the "
                  "domain are off because its primary accepted a random address, else 0",
                  ["domain"], {d: 1.0 if on else 0.0 for d, on in data["accept_all"].items()})


class PolicydCollector:
    """Builds the metric families at scrape time."""

    def __init__(self, service: Any, factory: Any, counts: DecisionCounts,
                 call_in_reactor: Optional[Callable[..., Any]] = None) -> None:
        self.service = service
        self.factory = factory
        self.counts = counts
        self.call_in_reactor = call_in_reactor or (lambda f, *a: f(*a))

    def collect(self) -> Iterator[Any]:
        now = self.service.reactor.seconds()
        data = self.call_in_reactor(_state_of, self.service, self.factory, self.counts, now)
        yield _family(CounterMetricFamily, "backupmx_policy_decisions",
                      "Policy decisions by relay domain and outcome", ["domain", "outcome"],
                      data["decisions"])
        counts, total = data["latency"]
        cumulative, buckets = 0, []
        for bound, count in zip(self.counts.buckets, counts):
            cumulative += count
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", cumulative + counts[-1]))
        yield HistogramMetricFamily("backupmx_policy_request_seconds",
                                    "Time to answer one policy request", buckets=buckets,
                                    sum_value=total)
        yield GaugeMetricFamily("backupmx_policy_connections",
                                "Policy connections open (Postfix smtpd processes)",
                                value=data["connections"])
        up = GaugeMetricFamily("backupmx_primary_up", "1 when the domain's primary MX is "
                               "reported up (mail deferred to it), else 0", labels=["domain"])
        state = GaugeMetricFamily("backupmx_primary_state", "Reported primary MX state, one "
                                  "series per state, 1 for the current one",
                                  labels=["domain", "state"])
        changed = GaugeMetricFamily("backupmx_primary_last_change_timestamp_seconds",
                                    "When the reported primary state last changed",
                                    labels=["domain"])
        for domain, current in sorted(data["states"].items()):
            up.add_metric([domain], 1.0 if current == "up" else 0.0)
            for name in ("up", "down", "unknown"):
                state.add_metric([domain, name], 1.0 if current == name else 0.0)
            if domain in data["changed_at"]:
                changed.add_metric([domain], data["changed_at"][domain])
        yield from (up, state, changed)
        yield GaugeMetricFamily("backupmx_recipient_map_keys",
                                "Recipient keys in the map in use", value=data["map_keys"])
        yield GaugeMetricFamily("backupmx_recipient_map_held_back",
                                "1 while a changed recipient map is not used because it would "
                                "cut a domain's keys by more than max_shrink, else 0",
                                value=1.0 if data["held_back"] else 0.0)
        succeeded, when = data["last_reload"]
        yield GaugeMetricFamily("backupmx_reload_success",
                                "1 if the last configuration or map reload succeeded",
                                value=1.0 if succeeded else 0.0)
        yield GaugeMetricFamily("backupmx_reload_timestamp_seconds",
                                "When the last reload was attempted", value=when)
        yield from source_families(data["sources"], data["fresh_until"], now)
        if data["callouts"] is not None:
            yield from _callout_families(data["callouts"])


def source_families(sources: Dict[str, Any], fresh_until: Dict[str, float],
                    now: float) -> Iterator[Any]:
    """Per recipient source (label ``source``, its configured name) and domain: the metric
    families of the sources' recorded states (backupmx.common.snapshots.SourceState)."""
    addresses = GaugeMetricFamily("backupmx_recipient_source_addresses",
                                  "Addresses in the recipient snapshot in use",
                                  labels=["source", "domain"])
    held = GaugeMetricFamily("backupmx_recipient_source_held_back",
                             "1 while a change of the domain's recipients is held back "
                             "(backupmx recipients accept SOURCE applies it)",
                             labels=["source", "domain"])
    success = GaugeMetricFamily("backupmx_recipient_source_last_success_timestamp_seconds",
                                "When the source was last read successfully",
                                labels=["source"])
    attempt = GaugeMetricFamily("backupmx_recipient_source_last_attempt_timestamp_seconds",
                                "When a sync of the source was last attempted",
                                labels=["source"])
    result = GaugeMetricFamily("backupmx_recipient_source_last_result",
                               "Result of the last sync, one series per result, 1 for the "
                               "current one", labels=["source", "result"])
    for name, state in sorted(sources.items()):
        for domain, domain_state in sorted(state.domains.items()):
            addresses.add_metric([name, domain], domain_state.addresses)
            held.add_metric([name, domain], 1.0 if domain_state.held_back else 0.0)
        if state.last_success is not None:
            success.add_metric([name], state.last_success)
        if state.last_attempt is not None:
            attempt.add_metric([name], state.last_attempt)
        for value in ("ok", "held_back", "error"):
            result.add_metric([name, value], 1.0 if state.last_result == value else 0.0)
    fresh = GaugeMetricFamily("backupmx_recipients_fresh",
                              "1 while the domain's recipients are fresh (a source synced them "
                              "within its stale_after), 0 when stale: unknown recipients get 450",
                              labels=["domain"])
    for domain, deadline in sorted(fresh_until.items()):
        fresh.add_metric([domain], 1.0 if deadline > now else 0.0)
    yield from (addresses, held, success, attempt, result, fresh)


class PolicydMetrics:
    """The registry plus the hot-path counts; ``attach`` hooks them to a running service."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.counts = DecisionCounts()

    def attach(self, service: Any, factory: Any,
               call_in_reactor: Optional[Callable[..., Any]] = None) -> None:
        """Count the service's decisions and time the factory's responder."""
        service.observers.append(self.counts.observe)
        factory.respond = self.counts.timed(factory.respond)
        self.registry.register(PolicydCollector(service, factory, self.counts, call_in_reactor))

    def text(self) -> bytes:
        from prometheus_client import generate_latest
        return generate_latest(self.registry)


def serve(reactor: Any, address: Any, metrics: PolicydMetrics) -> Any:
    """Listen for Prometheus scrapes on address with Twisted's web server."""
    from prometheus_client.twisted import MetricsResource
    from twisted.web.server import Site

    from backupmx.common.daemon import listen
    site = Site(MetricsResource(metrics.registry))
    site.noisy = False
    site.log = lambda request: None  # no access log per scrape
    return listen(reactor, address, site)


def reactor_caller(reactor: Any) -> Callable[..., Any]:
    """Run a function on the reactor thread, from a scrape's worker thread, and wait for it."""
    from twisted.internet.threads import blockingCallFromThread
    from twisted.python.threadable import isInIOThread

    def call(function: Callable[..., Any], *args: Any) -> Any:
        if isInIOThread():
            return function(*args)
        return blockingCallFromThread(reactor, function, *args)
    return call
