"""policyd's Prometheus metrics: what the collector reports for a service's decisions and state."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

from prometheus_client.parser import text_string_to_metric_families

from backupmx.policyd.metrics import PolicydMetrics
from backupmx.policyd.protocol import PolicyFactory
from tests.harness.service_setup import Setup, make_service, rcpt, rewrite, settle

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def scrape(metrics: PolicydMetrics) -> Samples:
    text = metrics.text().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_decisions_latency_primary_state_map_and_connections(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    service, prober, clock = make_service(setup)
    factory = PolicyFactory(service.respond)
    metrics = PolicydMetrics()
    metrics.attach(service, factory)
    for recipient in ("alice@example.test", "bob@example.test", "bob@example.test",
                      "x@elsewhere.test", "y@random-1.test"):
        factory.respond(rcpt(recipient))
    prober.up("example.test", "127.0.0.1")
    factory.respond(rcpt("alice@example.test"))
    factory.connections = 3
    samples = scrape(metrics)

    def decisions(domain: str, outcome: str) -> float:
        return samples[("backupmx_policy_decisions_total",
                        (("domain", domain), ("outcome", outcome)))]

    assert decisions("example.test", "primary_unknown") == 1
    assert decisions("example.test", "unknown_user") == 2
    assert decisions("example.test", "primary_up_defer") == 1
    assert decisions("-", "not_ours") == 2  # other domains share one series
    assert not any(("domain", "elsewhere.test") in labels for _, labels in samples)
    assert samples[("backupmx_policy_request_seconds_count", ())] == 6
    assert samples[("backupmx_policy_request_seconds_bucket", (("le", "+Inf"),))] == 6
    assert 0 < samples[("backupmx_policy_request_seconds_sum", ())] < 1
    assert samples[("backupmx_policy_connections", ())] == 3
    assert samples[("backupmx_primary_up", (("domain", "example.test"),))] == 1
    assert samples[("backupmx_primary_state", (("domain", "example.test"), ("state", "up")))] == 1
    assert samples[("backupmx_primary_last_change_timestamp_seconds",
                    (("domain", "example.test"),))] == 1000.0
    assert samples[("backupmx_recipient_map_keys", ())] == 1
    assert samples[("backupmx_reload_success", ())] == 1

    clock.advance(prober.max_age + 1)  # the probe result is too old: unknown
    rewrite(setup.recipients, "broken line\n")
    settle(service)
    samples = scrape(metrics)
    assert samples[("backupmx_primary_up", (("domain", "example.test"),))] == 0
    assert samples[("backupmx_primary_state",
                    (("domain", "example.test"), ("state", "unknown")))] == 1
    assert samples[("backupmx_reload_success", ())] == 0
    assert samples[("backupmx_reload_timestamp_seconds", ())] == clock.seconds()


def test_recipient_source_metrics() -> None:
    from prometheus_client.core import CollectorRegistry

    from backupmx.common.snapshots import DomainState, HeldBack, SourceState
    from backupmx.policyd.metrics import source_families

    states = {"ldap": SourceState("ldap", "ldap", last_attempt=990.0, last_success=900.0,
                                  last_result="held_back",
                                  domains={"a.test": DomainState(1234, 900.0,
                                                                 HeldBack(3, "x", 950, 990))})}

    class Collector:
        def collect(self):
            return source_families(states, {"a.test": 1500.0, "b.test": 800.0}, 1000.0)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    from prometheus_client import generate_latest
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(generate_latest(registry).decode())
               for s in f.samples}
    assert samples[("backupmx_recipient_source_addresses",
                    (("domain", "a.test"), ("source", "ldap")))] == 1234
    assert samples[("backupmx_recipient_source_held_back",
                    (("domain", "a.test"), ("source", "ldap")))] == 1
    assert samples[("backupmx_recipient_source_last_success_timestamp_seconds",
                    (("source", "ldap"),))] == 900.0
    assert samples[("backupmx_recipient_source_last_result",
                    (("result", "held_back"), ("source", "ldap")))] == 1
    assert samples[("backupmx_recipients_fresh", (("domain", "a.test"),))] == 1
    assert samples[("backupmx_recipients_fresh", (("domain", "b.test"),))] == 0
