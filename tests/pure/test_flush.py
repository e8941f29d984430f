"""backupmx flush: refusals, accounting, --auto choice, the lock."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from backupmx.admin.context import CommandContext
from backupmx.admin.flush import (
    EXIT_OK,
    EXIT_REFUSED,
    FlushRefused,
    choose_auto,
    fast_flush_fix,
    flush_command,
    flush_domain,
    flush_lock,
    lock_path,
)
from backupmx.admin.primaries import PrimaryState
from backupmx.milter.ledger import DomainSummary, Ledger
from tests.harness.command_fakes import FakeClock, FakePostfix, ScriptedProber, make_context, record


def test_fix_names_the_instance() -> None:
    assert "postconf -c /srv/pf -e 'fast_flush_domains = $relay_domains'" in \
        fast_flush_fix("a.test", "/srv/pf")


def test_auto_choice() -> None:
    summaries = {"a.test": DomainSummary("a.test", 3, 1, 1.0),
                 "b.test": DomainSummary("b.test", 2, 1, 1.0),
                 "c.test": DomainSummary("c.test", 1, 1, 1.0),
                 "gone.test": DomainSummary("gone.test", 1, 1, 1.0),
                 "z.test": DomainSummary("z.test", 0, 0, None)}
    reports = {"a.test": PrimaryState("up", ""), "b.test": PrimaryState("down", ""),
               "c.test": PrimaryState("unknown", ""), "gone.test": PrimaryState("up", ""),
               "z.test": PrimaryState("up", "")}
    configured = {"a.test": 1, "b.test": 1, "c.test": 1, "z.test": 1}
    assert choose_auto(summaries, reports, configured) == ["a.test"]


Setup = Tuple[CommandContext, FakePostfix, ScriptedProber, Ledger]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    postfix, prober, clock = FakePostfix(), ScriptedProber(), FakeClock(1000.0)
    ctx = make_context(tmp_path, postfix, prober, clock)
    ledger = Ledger(ctx.config.milter.ledger)
    for n in range(3):
        ledger.record(record(f"A{n}", received_at=990.0, size=100))
        postfix.add(f"A{n}", "alice@a.test")
    ledger.record(record("AB", received_at=990.0, size=100, a_test="x@a.test", b_test="y@b.test"))
    postfix.add("AB", "x@a.test", "y@b.test")
    ledger.record(record("B1", received_at=990.0, size=100, b_test="bob@b.test"))
    postfix.add("B1", "bob@b.test")
    yield ctx, postfix, prober, ledger
    ledger.close()
    ctx.close()


def held(ledger: Ledger) -> dict:
    return {d: s.held_messages for d, s in ledger.summaries().items()}


def test_flush_delivers_one_domain_and_accounts_for_it(setup: Setup) -> None:
    ctx, postfix, prober, ledger = setup
    prober.states["a.test"] = "up"
    postfix.deliver["a.test"] = True
    outcome = flush_domain(ctx, "a.test")
    assert (outcome.held_before, outcome.delivered, outcome.remaining, outcome.result) == \
        (4, 4, 0, "complete")
    assert postfix.flushed == ["a.test"]
    assert held(ledger) == {"b.test": 2}
    event = ledger.last_flushes()["a.test"]
    assert (event.trigger, event.primary_state, event.held_before, event.delivered,
            event.remaining, event.result) == ("manual", "up", 4, 4, 0, "complete")


def test_on_return_flushes_held_mail_with_its_own_trigger_and_skips_an_empty_domain(
        setup: Setup) -> None:
    ctx, postfix, prober, ledger = setup
    prober.states["a.test"] = "up"
    postfix.deliver["a.test"] = True
    assert flush_command(ctx, "a.test", auto=False, force=False, wait=1, on_return=True) == EXIT_OK
    assert ledger.last_flushes()["a.test"].trigger == "return"
    assert postfix.flushed == ["a.test"]
    # the primary flaps and is reported up again: nothing held now, nothing run or recorded
    assert flush_command(ctx, "a.test", auto=False, force=False, wait=1, on_return=True) == EXIT_OK
    assert "a.test: nothing held: nothing to flush" in ctx.out.getvalue()  # type: ignore
    assert postfix.flushed == ["a.test"]
    assert len([e for e in [ledger.flush_event(1), ledger.flush_event(2)] if e]) == 1


def test_flush_with_primary_down_is_refused_and_changes_nothing(setup: Setup) -> None:
    ctx, postfix, prober, ledger = setup
    before = ledger._connection().execute("SELECT * FROM message_domains").fetchall()
    assert flush_command(ctx, "b.test", auto=False, force=False, wait=1) == EXIT_REFUSED
    assert "primary of b.test" in ctx.err.getvalue()  # type: ignore[attr-defined]
    assert "--force" in ctx.err.getvalue()  # type: ignore[attr-defined]
    assert postfix.flushed == []
    assert ledger._connection().execute("SELECT * FROM message_domains").fetchall() == before
    assert ledger.last_flushes() == {}


def test_forced_flush_of_a_down_primary_waits_then_reports_remaining(setup: Setup) -> None:
    ctx, postfix, prober, ledger = setup
    outcome = flush_domain(ctx, "b.test", force=True, wait=2.0)
    assert (outcome.delivered, outcome.remaining, outcome.result) == (0, 2, "partial")
    event = ledger.last_flushes()["b.test"]
    assert event.forced and event.primary_state == "down" and event.result == "partial"
    assert ctx.clock() >= 1002.0  # it waited for --wait, polling


def test_not_in_fast_flush_domains_is_refused_with_the_fix(setup: Setup) -> None:
    ctx, postfix, prober, ledger = setup
    postfix.parameters["fast_flush_domains"] = "b.test"
    prober.states["a.test"] = "up"
    with pytest.raises(FlushRefused, match="fast_flush_domains = \\$relay_domains"):
        flush_domain(ctx, "a.test")
    assert postfix.flushed == [] and prober.calls == []


def test_postqueue_failure_is_recorded_as_failed(setup: Setup) -> None:
    ctx, postfix, prober, ledger = setup
    postfix.parameters["fast_flush_domains"] = "hash:/etc/postfix/flush"
    postfix.flush_returncode = 69
    prober.states["a.test"] = "up"
    assert flush_command(ctx, "a.test", auto=False, force=False, wait=1) == EXIT_REFUSED
    event = ledger.last_flushes()["a.test"]
    assert event.result == "failed" and "fast_flush_domains" in event.detail


def test_unknown_domain_is_refused(setup: Setup) -> None:
    ctx, postfix, prober, ledger = setup
    assert flush_command(ctx, "nope.test", auto=False, force=True, wait=1) == EXIT_REFUSED
    assert "not a relay domain" in ctx.err.getvalue()  # type: ignore[attr-defined]


def test_auto_flushes_only_domains_with_held_mail_and_primary_up(setup: Setup) -> None:
    ctx, postfix, prober, ledger = setup
    prober.states.update({"a.test": "up", "b.test": "down"})
    postfix.deliver.update({"a.test": True, "b.test": True})
    assert flush_command(ctx, None, auto=True, force=False, wait=1) == EXIT_OK
    assert postfix.flushed == ["a.test"]
    assert held(ledger) == {"b.test": 2}
    out = ctx.out.getvalue()  # type: ignore[attr-defined]
    assert "a.test: 4 messages left the queue, 0 still queued" in out
    assert "b.test: 2 held, primary down: not flushed" in out
    # Idempotent: nothing held for a.test any more, b.test still down.
    prober.calls.clear()
    assert flush_command(ctx, None, auto=True, force=False, wait=1) == EXIT_OK
    assert postfix.flushed == ["a.test"] and prober.calls == [["b.test"]]
    prober.states["b.test"] = "up"
    assert flush_command(ctx, None, auto=True, force=False, wait=1) == EXIT_OK
    assert postfix.flushed == ["a.test", "b.test"] and held(ledger) == {}
    assert ledger.last_flushes()["b.test"].trigger == "auto"


def test_auto_does_nothing_while_another_flush_holds_the_lock(setup: Setup) -> None:
    ctx, postfix, prober, ledger = setup
    prober.states["a.test"] = "up"
    with flush_lock(lock_path(ctx.config.milter.ledger), None, ctx) as locked:
        assert locked
        assert flush_command(ctx, None, auto=True, force=False, wait=1) == EXIT_OK
        assert "another flush is running" in ctx.out.getvalue()  # type: ignore[attr-defined]
    assert postfix.flushed == []


def test_manual_flush_waits_for_the_lock_then_gives_up(setup: Setup,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, postfix, prober, ledger = setup
    monkeypatch.setattr("backupmx.admin.flush.LOCK_WAIT", 1.0)
    prober.states["a.test"] = "up"
    with flush_lock(lock_path(ctx.config.milter.ledger), None, ctx):
        assert flush_command(ctx, "a.test", auto=False, force=False, wait=1) == EXIT_REFUSED
    assert postfix.flushed == []


@pytest.mark.skipif(os.geteuid() != 0,
                    reason="only root's flush can create a file for another user")
def test_root_creates_the_lock_for_the_folder_owner(tmp_path: Path) -> None:
    """The timer runs flush as the daemons' user: a lock created by root must stay usable."""
    folder = tmp_path / "lib"
    folder.mkdir()
    os.chown(folder, 65534, 65534)
    lock = folder / "ledger.sqlite3.flush.lock"
    with flush_lock(str(lock), None, None) as locked:  # type: ignore[arg-type]
        assert locked
    assert (lock.stat().st_uid, lock.stat().st_gid) == (65534, 65534)
    os.chown(lock, 0, 0)  # left by an older version: repaired by the next root run
    with flush_lock(str(lock), None, None):  # type: ignore[arg-type]
        pass
    assert lock.stat().st_uid == 65534
