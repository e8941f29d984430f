"""Recipient map faults while running: deleted, broken or truncated files keep the last good map.

Choice: an automatic (mtime) reload that would cut a configured domain's keys by more than
``max_shrink`` (20%), down to none at all, is refused and logged, because a file truncated to
nothing would otherwise turn recipient checking off for that domain in silence (and a half-written
one refuse valid users: tests/pure/test_map_flux.py). An explicit SIGHUP is the admin's word: it
is applied, with a warning.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List

from twisted.logger import LogLevel

from tests.harness.service_setup import Setup, make_service, messages, rcpt, rewrite, settle

UNKNOWN = "550 5.1.1 "


def test_deleted_map_keeps_the_last_good_one(tmp_path: Path, events: List[dict]) -> None:
    setup = Setup(tmp_path)
    service, _, _ = make_service(setup)
    setup.recipients.unlink()
    settle(service)
    # the last good map still knows alice; an unreadable file source is no longer fresh, so
    # an unknown recipient is deferred (450 4.1.1), not refused
    assert service.respond(rcpt("alice@example.test")) == "DUNNO"
    assert service.respond(rcpt("bob@example.test")).startswith("450 4.1.1")
    assert service.last_reload[0] is False
    assert any("keeping the last good maps" in m for m in messages(events, LogLevel.error))


def test_half_written_line_keeps_the_last_good_map(tmp_path: Path, events: List[dict]) -> None:
    setup = Setup(tmp_path)
    service, _, _ = make_service(setup)
    rewrite(setup.recipients, "alice@example.test OK\nbob@exam")
    settle(service)
    assert service.respond(rcpt("bob@example.test")).startswith(UNKNOWN)
    assert service.respond(rcpt("alice@example.test")) == "DUNNO"


def test_truncated_to_empty_is_refused_then_accepted_on_sighup(tmp_path: Path,
                                                               events: List[dict]) -> None:
    setup = Setup(tmp_path)
    service, _, clock = make_service(setup)
    rewrite(setup.recipients, "")
    settle(service)
    assert service.respond(rcpt("bob@example.test")).startswith(UNKNOWN)
    errors = messages(events, LogLevel.error)
    assert any("would cut example.test 1 -> 0 keys" in m for m in errors)
    assert service.last_reload == (False, clock.seconds())
    settle(service)  # the same refused file is not retried (nor logged) again
    assert len(messages(events, LogLevel.error)) == len(errors)
    service.reload()  # SIGHUP: the admin means it
    assert service.respond(rcpt("bob@example.test")) == "DUNNO"  # no map covers it: accept
    assert any("no recipient map lists example.test" in m
               for m in messages(events, LogLevel.warn))


def test_shrinking_map_that_still_covers_the_domain_is_applied(tmp_path: Path,
                                                               events: List[Any]) -> None:
    setup = Setup(tmp_path)
    service, _, clock = make_service(setup)
    rewrite(setup.recipients, "carol@example.test OK\n")
    clock.advance(1)
    settle(service)
    assert service.respond(rcpt("alice@example.test")).startswith(UNKNOWN)
    assert service.respond(rcpt("carol@example.test")) == "DUNNO"
    assert service.last_reload == (True, clock.seconds())
