"""PolicyService: the request path, map polling and SIGHUP reloads, on a fake reactor."""
from __future__ import annotations

from pathlib import Path
from typing import List

import pytest
from twisted.internet import defer
from twisted.logger import LogLevel

from tests.harness.service_setup import (
    ManualThreads,
    Setup,
    make_service,
    messages,
    rcpt,
    rewrite,
    settle,
)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def test_respond_uses_the_policy_primary_states_and_reactor_time(setup: Setup) -> None:
    service, prober, clock = make_service(setup)
    assert service.respond(rcpt("alice@example.test")) == "DUNNO"  # primary unknown
    assert service.respond(rcpt("bob@example.test")).startswith("550 5.1.1 ")
    prober.up("example.test", "127.0.0.1")
    assert service.respond(rcpt("alice+tag@example.test")).startswith("DEFER_IF_PERMIT 4.7.1 ")
    assert service.respond(rcpt("alice@example.test", "a@partner.test", "192.0.2.3")) == "DUNNO"
    clock.advance(prober.max_age + 1)
    assert service.respond(rcpt("alice@example.test")) == "DUNNO"  # state too old


def test_refusals_are_logged_accepts_only_when_asked(setup: Setup, events: List[dict]) -> None:
    service, _, _ = make_service(setup)
    service.respond(rcpt("bob@example.test"))
    service.respond(rcpt("alice@example.test"))
    logged = messages(events, LogLevel.info)
    assert len(logged) == 1
    assert "unknown_user" in logged[0] and "recipient=<bob@example.test>" in logged[0]
    events.clear()
    setup.write_config("log_accepts = yes\n")
    service.reload()
    events.clear()
    service.respond(rcpt("alice@example.test"))
    assert len(messages(events, LogLevel.info)) == 1


def test_observers_see_every_decision(setup: Setup) -> None:
    service, _, _ = make_service(setup)
    seen: List[str] = []
    service.observers.append(lambda request, decision: seen.append(decision.outcome))
    service.respond(rcpt("alice@example.test"))
    service.respond(rcpt("bob@example.test"))
    service.respond(rcpt("bob@not-ours.test"))
    assert seen == ["primary_unknown", "unknown_user", "not_ours"]


def test_unmapped_domain_is_warned_once(setup: Setup, events: List[dict]) -> None:
    setup.write_config(domains="example.test = mx\nunmapped.test = mx\n")
    service, _, _ = make_service(setup)
    for _ in range(3):
        assert service.respond(rcpt("anyone@unmapped.test")) == "DUNNO"
    warnings = messages(events, LogLevel.warn)
    assert len(warnings) == 1 and "unmapped.test" in warnings[0]


def test_edited_map_is_swapped_in_by_check_maps(setup: Setup, events: List[dict]) -> None:
    service, _, _ = make_service(setup)
    before = service.policy
    service.check_maps()
    assert service.policy is before  # nothing changed, nothing reloaded
    rewrite(setup.recipients, "alice@example.test OK\nbob@example.test OK\n")
    service.check_maps()
    assert service.policy is before  # changed: used once it has stopped changing
    service.check_maps()
    assert service.policy is not before
    assert service.respond(rcpt("bob@example.test")) == "DUNNO"
    assert any("recipient maps reloaded: 2 keys" in m for m in messages(events, LogLevel.info))


def test_edited_sender_networks_are_swapped_in(setup: Setup) -> None:
    service, prober, clock = make_service(setup)
    prober.up("example.test", "h")
    request = rcpt("alice@example.test", "a@partner.test", "198.51.100.9")
    assert service.respond(request).startswith("DEFER_IF_PERMIT")
    rewrite(setup.networks, "@partner.test 198.51.100.0/24\n")
    settle(service)
    assert service.respond(request) == "DUNNO"


def test_broken_map_keeps_last_good_and_logs_once(setup: Setup, events: List[dict]) -> None:
    service, _, _ = make_service(setup)
    good = service.policy
    rewrite(setup.recipients, "alice@example.test OK\nbroken-line\n")
    for _ in range(3):
        service.check_maps()
    assert service.policy is good
    assert service.respond(rcpt("alice@example.test")) == "DUNNO"
    errors = messages(events, LogLevel.error)
    assert len(errors) == 1
    assert f"{setup.recipients}:line 2" in errors[0]
    rewrite(setup.recipients, "alice@example.test OK\ncarol@example.test OK\n")
    settle(service)
    assert service.policy is not good
    assert service.respond(rcpt("carol@example.test")) == "DUNNO"


def test_removed_map_keeps_last_good(setup: Setup, events: List[dict]) -> None:
    service, _, _ = make_service(setup)
    good = service.policy
    setup.recipients.unlink()
    for _ in range(3):
        service.check_maps()
    assert service.policy.recipients is good.recipients
    assert len(messages(events, LogLevel.error)) == 1


def test_map_check_runs_on_the_clock(setup: Setup) -> None:
    service, prober, clock = make_service(setup)
    service.start()
    assert prober.running
    rewrite(setup.recipients, "alice@example.test OK\nbob@example.test OK\n")
    clock.advance(5.1)  # first check: changed
    assert service.respond(rcpt("bob@example.test")).startswith("550")
    clock.advance(4.8)
    assert service.respond(rcpt("bob@example.test")).startswith("550")
    clock.advance(0.2)  # second check: the same as the first, so loaded
    assert service.respond(rcpt("bob@example.test")) == "DUNNO"
    service.stop()
    assert not prober.running
    assert clock.getDelayedCalls() == []


def test_reload_applies_new_config_and_updates_the_prober(setup: Setup) -> None:
    service, prober, _ = make_service(setup)
    setup.write_config("probe_interval = 10\nprobe_timeout = 2\nprobe_interval_down = 4\n",
                       domains="example.test = [127.0.0.1]:2526\nnew.test = mx\n")
    reloading = service.reload()
    assert isinstance(reloading, defer.Deferred)
    assert service.policy.domains == frozenset({"example.test", "new.test"})
    assert prober.updates[-1][1:] == (10.0, 2.0)
    assert set(prober.updates[-1][0]) == {"example.test", "new.test"}
    assert prober.max_age == 22.0
    assert prober.interval_down == 4.0


def test_reload_with_broken_config_keeps_the_old_one(setup: Setup, events: List[dict]) -> None:
    service, prober, _ = make_service(setup)
    config, snapshot = service.config, service.policy
    setup.conf.write_text("[policyd]\nprimary_up_action = bounce\n", encoding="utf-8")
    service.reload()
    assert service.config is config and service.policy is snapshot
    assert prober.updates == []
    errors = messages(events, LogLevel.error)
    assert len(errors) == 1
    assert f"{setup.conf}:2: [policyd] primary_up_action" in errors[0]
    assert service._reloading is None  # the next reload may run


def test_reload_with_broken_map_keeps_the_old_one(setup: Setup, events: List[dict]) -> None:
    service, _, _ = make_service(setup)
    snapshot = service.policy
    rewrite(setup.recipients, "nope\n")
    service.reload()
    assert service.policy is snapshot
    assert len(messages(events, LogLevel.error)) == 1


def test_overlapping_reloads_merge_into_one_more_run(setup: Setup) -> None:
    threads = ManualThreads()
    service, prober, _ = make_service(setup, threads)
    first = service.reload()
    assert len(threads.jobs) == 1
    assert service.reload() is first
    assert service.reload() is first
    assert len(threads.jobs) == 1  # nothing more starts while one runs
    setup.write_config(domains="example.test = mx\nlater.test = mx\n")
    threads.run_next()
    assert first.called
    assert len(threads.jobs) == 1  # the merged follow-up
    threads.run_next()
    assert threads.jobs == []
    assert len(prober.updates) == 2
    assert "later.test" in service.policy.domains


def test_check_maps_waits_for_a_running_reload(setup: Setup) -> None:
    threads = ManualThreads()
    service, _, _ = make_service(setup, threads)
    service.reload()
    rewrite(setup.recipients, "alice@example.test OK\nbob@example.test OK\n")
    service.check_maps()
    assert len(threads.jobs) == 1  # only the reload
    threads.run_next()
    assert threads.jobs == []
    assert service.respond(rcpt("bob@example.test")) == "DUNNO"


def test_sighup_during_map_reload_runs_after_it(setup: Setup) -> None:
    threads = ManualThreads()
    service, prober, _ = make_service(setup, threads)
    rewrite(setup.recipients, "alice@example.test OK\nbob@example.test OK\n")
    for _ in range(2):
        service.check_maps()
        threads.run_next()  # the signature check
    assert len(threads.jobs) == 1  # the map load
    service.reload()
    assert len(threads.jobs) == 1
    threads.run_next()
    assert service.respond(rcpt("bob@example.test")) == "DUNNO"
    assert len(threads.jobs) == 1  # now the full reload
    threads.run_next()
    assert len(prober.updates) == 1


def test_reload_and_report_tells_whether_the_reload_applied(setup: Setup) -> None:
    service, _, _ = make_service(setup)
    setup.write_config(domains="example.test = mx\nnew.test = mx\n")
    outcomes: List[bool] = []
    service.reload_and_report().addCallback(outcomes.append)
    assert outcomes == [True]
    assert "new.test" in service.policy.domains
    setup.conf.write_text("[policyd]\nprimary_up_action = bounce\n", encoding="utf-8")
    service.reload_and_report().addCallback(outcomes.append)
    assert outcomes == [True, False]
    assert "new.test" in service.policy.domains  # the running configuration kept


def test_reload_and_report_waits_for_the_run_after_a_busy_one(setup: Setup) -> None:
    """A SIGHUP during a reload is answered by the next run, which reads the files anew."""
    threads = ManualThreads()
    service, _, _ = make_service(setup, threads)
    service.reload()  # under way: it reads the files before they change
    outcomes: List[bool] = []
    service.reload_and_report().addCallback(outcomes.append)
    setup.conf.write_text("[policyd]\nprimary_up_action = bounce\n", encoding="utf-8")
    threads.run_next()  # the busy run fails on the broken file, but it is not ours
    assert outcomes == []
    setup.write_config(domains="example.test = mx\nlater.test = mx\n")
    threads.run_next()  # the run queued for our request
    assert outcomes == [True]
    assert "later.test" in service.policy.domains
