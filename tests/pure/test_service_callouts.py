"""PolicyService with recipient callouts, on task.Clock: the answer comes first, the callout is
only queued; limits, timeouts and metrics without a network (connections never complete)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Tuple

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer

from backupmx.common.callout_cache import CalloutCache
from backupmx.common.callout_rules import INVALID, VALID, Entry
from backupmx.common.smtp_probe import ProbeResult
from backupmx.policyd.callouts import CalloutEngine, callout_setup, lifetimes_of
from backupmx.policyd.metrics import PolicydMetrics
from backupmx.policyd.protocol import PolicyFactory
from tests.harness.service_setup import Setup, make_service, rcpt

CALLOUT = ("example.test = [127.0.0.1]:2526\n\n"
           "[recipients verify]\ntype = callout\ndomains = example.test\ntimeout = 20\n")


class Writer:
    def __init__(self) -> None:
        self.entries: List[Entry] = []

    def put(self, entries: List[Entry]) -> None:
        self.entries.extend(entries)

    def put_check(self, check: Any) -> None:
        pass

    def forget(self, domain: str) -> None:
        pass


def service_with_callouts(tmp_path: Path) -> Tuple[Any, Any, Any, List[tuple]]:
    setup = Setup(tmp_path)
    setup.write_config(domains=CALLOUT)
    service, prober, clock = make_service(setup)
    attempts: List[tuple] = []

    def connect(host: str, port: int, timeout: float, protocol: Any) -> defer.Deferred:
        attempts.append((host, port))
        return defer.Deferred()  # never connects: the session's timeout ends it

    engine_setup = callout_setup(service.config)
    service.callouts = CalloutEngine(clock, engine_setup, CalloutCache(
        lifetimes_of(engine_setup), clock.seconds), Writer(), {}, prober, "backup.test",
        connect=connect)
    return service, prober, clock, attempts


def test_unknown_recipient_deferred_at_once_and_callout_only_queued(tmp_path: Path) -> None:
    service, prober, clock, attempts = service_with_callouts(tmp_path)
    prober.up("example.test")
    action = service.respond(rcpt("New@example.test"))
    assert action.startswith("DEFER_IF_PERMIT 4.7.1 Primary MX 127.0.0.1 is up")
    assert attempts == []  # nothing was even started while answering
    clock.advance(0)
    assert attempts == [("127.0.0.1", 2526)]
    clock.advance(20)  # the source's timeout: the attempt is cancelled, nothing cached
    engine = service.callouts
    assert engine.results[("example.test", "temporary")] == 1
    assert engine.results[("example.test", "accept_all_check")] == 1
    assert engine.limits.open_sessions("example.test") == 0
    assert not engine.busy()


def test_burst_from_one_client_makes_at_most_client_rate_callouts(tmp_path: Path) -> None:
    service, prober, clock, attempts = service_with_callouts(tmp_path)
    prober.up("example.test")
    answers = {service.respond(rcpt(f"guess{i}@example.test", client="203.0.113.9"))
               for i in range(1000)}
    assert len(answers) == 1 and answers.pop().startswith("DEFER_IF_PERMIT 4.7.1")
    engine = service.callouts
    assert engine.skipped[("example.test", "client_rate")] == 990
    # other clients still get theirs, within the domain's 30 a minute
    for client in range(3):
        for i in range(10):
            service.respond(rcpt(f"other{client}.{i}@example.test",
                                 client=f"198.51.100.{client}"))
    assert engine.skipped[("example.test", "client_rate")] == 990
    assert engine.skipped[("example.test", "domain_rate")] == 10
    clock.advance(0)
    assert len(attempts) == 2  # two connections per domain at most
    clock.advance(20)
    assert len(attempts) == 3  # the third batch once one of them ended
    clock.advance(20)
    assert engine.results[("example.test", "temporary")] == 30
    assert not engine.busy()


def test_primary_down_uses_the_cache(tmp_path: Path) -> None:
    service, prober, clock, attempts = service_with_callouts(tmp_path)
    engine = service.callouts
    now = clock.seconds()
    engine.cache.record(Entry("good@example.test", "example.test", VALID, now))
    engine.cache.record(Entry("bad@example.test", "example.test", INVALID, now))
    prober.record("example.test", ProbeResult(False, "127.0.0.1"))
    assert service.respond(rcpt("good@example.test")) == "DUNNO"
    assert service.respond(rcpt("bad@example.test")).startswith("550 5.1.1")
    assert service.respond(rcpt("never@example.test")).startswith("450 4.1.1")
    assert service.respond(rcpt("alice@example.test")) == "DUNNO"  # from the map
    clock.advance(0)
    assert attempts == []  # no callout while the primary is down


def test_metrics_show_callouts_and_cache(tmp_path: Path) -> None:
    service, prober, clock, attempts = service_with_callouts(tmp_path)
    factory = PolicyFactory(service.respond)
    metrics = PolicydMetrics()
    metrics.attach(service, factory)
    engine = service.callouts
    engine.cache.record(Entry("good@example.test", "example.test", VALID, clock.seconds()))
    prober.up("example.test")
    factory.respond(rcpt("zz@example.test"))
    factory.respond(rcpt("zz@example.test"))
    clock.advance(0)
    clock.advance(20)
    text = metrics.text().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    domain = ("domain", "example.test")
    assert samples[("backupmx_callouts_total", (domain, ("result", "temporary")))] == 1
    assert samples[("backupmx_callouts_skipped_total", (domain, ("reason", "pending")))] == 1
    assert samples[("backupmx_callout_sessions_total", (domain,))] == 1
    assert samples[("backupmx_callout_cache_entries", (domain, ("status", "valid")))] == 1
    assert samples[("backupmx_callout_accept_all", (domain,))] == 0


def test_queue_waits_for_the_first_accept_all_check(tmp_path: Path) -> None:
    """Valid answers are only trusted once the random address was refused: while the first
    check runs, no second session starts (its valid answers would have to be thrown away)."""
    service, prober, clock, attempts = service_with_callouts(tmp_path)
    prober.up("example.test")
    service.respond(rcpt("first@example.test"))
    clock.advance(0)
    service.respond(rcpt("second@example.test", client="198.51.100.2"))
    clock.advance(0)
    assert len(attempts) == 1  # the session with the random address and first@
    clock.advance(20)  # it times out: the check is still unknown, the queue goes on
    assert len(attempts) == 2


def test_a_reload_adding_the_first_callout_source_starts_callouts(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    setup.write_config(extra=f"state_directory = {blocked}\n")
    service, _, _ = make_service(setup)
    assert service.callouts is None
    # the cache file cannot be made: one error line, policyd goes on without callouts
    setup.write_config(extra=f"state_directory = {blocked}\n", domains=CALLOUT)
    service.reload()
    assert service.callouts is None and not service.starting_callouts
    # fixed: the next reload starts them
    setup.write_config(extra=f"state_directory = {tmp_path / 'state'}\n", domains=CALLOUT)
    service.reload()
    assert service.callouts is not None and "example.test" in service.callouts.setup
    assert (tmp_path / "state" / "callouts.sqlite3").exists()
    engine = service.callouts
    service.reload()  # a later reload keeps the running engine
    assert service.callouts is engine
    service.stop()
    service.close_callouts()


def test_a_damaged_cache_file_is_moved_aside_and_policyd_starts_empty(tmp_path: Path) -> None:
    from backupmx.policyd import callout_start
    setup = Setup(tmp_path)
    setup.write_config(extra=f"state_directory = {tmp_path / 'state'}\n", domains=CALLOUT)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "callouts.sqlite3").write_bytes(b"garbage" * 1000)
    loaded = callout_start.load(setup.config())
    try:
        assert loaded.entries == [] and loaded.moved_aside is not None
        assert "damaged-" in loaded.moved_aside
        kept = [p.name for p in (tmp_path / "state").iterdir() if "damaged-" in p.name]
        assert len(kept) == 1 and (tmp_path / "state" / kept[0]).read_bytes().startswith(
            b"garbage")
        assert loaded.store.counts() == {}  # a new, working file
    finally:
        loaded.store.close()
