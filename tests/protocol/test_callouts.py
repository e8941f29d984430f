"""policyd.callouts against a real SMTP server on loopback (the aiosmtpd fake primary).

Trial TestCases: pytest runs them and trial spins the reactor; the fake primary listens on a
free port in a thread of its own; tests wait on the engine's Deferreds, never on sleeps.
"""
from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import tempfile
from typing import Any, List

from twisted.internet import defer, reactor
from twisted.trial import unittest

from backupmx.common.callout_cache import CalloutCache, DomainCheck
from backupmx.common.callout_rules import INVALID, NEGATIVE, POSITIVE, VALID, Entry
from backupmx.common.config import PrimarySpec
from backupmx.common.primary_state import PrimaryState
from backupmx.common.source_settings import CalloutSettings
from backupmx.policyd.callout_protocol import tls_context
from backupmx.policyd.callouts import CalloutDomain, CalloutEngine, lifetimes_of
from tests.harness.postfix import free_port
from tests.harness.primary import FakePrimary
from tests.harness.primary_states import States

DOMAIN = "example.test"
CLIENT = "203.0.113.9"


class Writer:
    def __init__(self) -> None:
        self.entries: List[Entry] = []
        self.checks: List[DomainCheck] = []
        self.forgotten: List[str] = []

    def put(self, entries: List[Entry]) -> None:
        self.entries.extend(entries)

    def put_check(self, check: DomainCheck) -> None:
        self.checks.append(check)

    def forget(self, domain: str) -> None:
        self.forgotten.append(domain)


class CalloutEngineTest(unittest.TestCase):
    timeout = 60

    def start_primary(self, **options: Any) -> FakePrimary:
        primary = FakePrimary(free_port(), users=options.pop("users", None))
        for key, value in options.items():
            setattr(primary, key, value)
        primary.start()
        self.addCleanup(primary.stop)
        return primary

    def engine(self, primary: FakePrimary, timeout: float = 10.0, **settings: Any) -> CalloutEngine:
        setup = {DOMAIN: CalloutDomain(DOMAIN, PrimarySpec("127.0.0.1", primary.port), "verify",
                                       CalloutSettings(**settings), timeout)}
        self.writer = Writer()
        cache = CalloutCache(lifetimes_of(setup), reactor.seconds)
        states = States({DOMAIN: PrimaryState("up", "127.0.0.1", reactor.seconds())})
        engine = CalloutEngine(reactor, setup, cache, self.writer, {}, states, "backup.test")
        self.addCleanup(engine.stop)
        return engine

    @defer.inlineCallbacks
    def test_learns_valid_and_invalid_after_an_accept_all_check(self) -> Any:
        primary = self.start_primary(users=["alice@example.test"])
        engine = self.engine(primary)
        now = reactor.seconds()
        assert engine.request(DOMAIN, "alice@example.test", CLIENT, now) is None
        assert engine.request(DOMAIN, "zz@example.test", CLIENT, now) is None
        assert engine.request(DOMAIN, "zz@example.test", CLIENT, now) == "pending"
        yield engine.when_idle()
        asked = [address for _, address, _ in primary.callouts()]
        assert asked[0].startswith("backupmx-verify-")  # the random address comes first
        assert asked[1:] == ["alice@example.test", "zz@example.test"]
        assert not primary.messages  # never DATA
        now = reactor.seconds()
        assert engine.verdict(DOMAIN, "alice@example.test", now).status == POSITIVE
        assert engine.verdict(DOMAIN, "zz@example.test", now).status == NEGATIVE
        assert {(e.address, e.status) for e in self.writer.entries} == {
            ("alice@example.test", VALID), ("zz@example.test", INVALID)}
        assert [c.accept_all for c in self.writer.checks] == [False]
        assert engine.results[(DOMAIN, "valid")] == 1
        assert engine.results[(DOMAIN, "invalid")] == 1
        assert engine.limits.open_sessions(DOMAIN) == 0

    @defer.inlineCallbacks
    def test_accept_all_primary_stops_callouts(self) -> Any:
        primary = self.start_primary()  # accepts every recipient
        engine = self.engine(primary)
        engine.request(DOMAIN, "anyone@example.test", CLIENT, reactor.seconds())
        yield engine.when_idle()
        assert engine.accept_all(DOMAIN)
        assert engine.verdict(DOMAIN, "anyone@example.test", reactor.seconds()) is None
        assert self.writer.entries == [] and self.writer.forgotten == [DOMAIN]
        assert [c.accept_all for c in self.writer.checks] == [True]
        before = len(primary.callouts())
        assert engine.request(DOMAIN, "other@example.test", CLIENT,
                              reactor.seconds()) == "accept_all"
        yield engine.when_idle()
        assert len(primary.callouts()) == before

    @defer.inlineCallbacks
    def test_greylisting_primary_caches_nothing_negative(self) -> Any:
        primary = self.start_primary(users=["alice@example.test"], greylist=True)
        engine = self.engine(primary)
        engine.request(DOMAIN, "alice@example.test", CLIENT, reactor.seconds())
        engine.request(DOMAIN, "zz@example.test", CLIENT, reactor.seconds())
        yield engine.when_idle()
        assert {code for _, _, code in primary.callouts()} == {450}
        assert self.writer.entries == [] and self.writer.checks == []
        assert engine.verdict(DOMAIN, "zz@example.test", reactor.seconds()).status != NEGATIVE
        assert engine.results[(DOMAIN, "temporary")] == 2
        # asked again only after RETRY_AFTER
        assert engine.request(DOMAIN, "zz@example.test", CLIENT,
                              reactor.seconds()) == "retry_later"
        # the check asks the same random address again until it passes the greylist, and
        # only then are valid answers trusted
        engine._probe_tried.clear()  # as after CHECK_INTERVAL and RETRY_AFTER
        engine._retry.clear()
        engine.request(DOMAIN, "alice@example.test", "198.51.100.2", reactor.seconds())
        yield engine.when_idle()
        probes = [a for _, a, _ in primary.callouts() if a.startswith("backupmx-verify-")]
        assert len(probes) == 2 and probes[0] == probes[1]
        assert [c.accept_all for c in self.writer.checks] == [False]
        assert engine.verdict(DOMAIN, "alice@example.test", reactor.seconds()).status == POSITIVE

    @defer.inlineCallbacks
    def test_hanging_primary_times_out_and_caches_nothing(self) -> Any:
        primary = self.start_primary(users=["alice@example.test"], hang=True)
        engine = self.engine(primary, timeout=1.0)
        engine.request(DOMAIN, "alice@example.test", CLIENT, reactor.seconds())
        yield engine.when_idle()
        assert self.writer.entries == []
        assert engine.results[(DOMAIN, "temporary")] == 1
        assert engine.limits.open_sessions(DOMAIN) == 0

    @defer.inlineCallbacks
    def test_stopped_primary_caches_nothing(self) -> Any:
        engine = self.engine(FakePrimary(free_port()), timeout=5.0)  # never started
        engine.request(DOMAIN, "alice@example.test", CLIENT, reactor.seconds())
        yield engine.when_idle()
        assert self.writer.entries == [] and engine.results[(DOMAIN, "temporary")] == 1

    @defer.inlineCallbacks
    def test_starttls_when_the_primary_offers_it(self) -> Any:
        # not trial's mktemp(): it makes its folders under the current directory
        folder = tempfile.mkdtemp(prefix="callout-tls-")
        self.addCleanup(shutil.rmtree, folder, True)
        key, cert = os.path.join(folder, "key.pem"), os.path.join(folder, "cert.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                        "1", "-subj", "/CN=primary.example.test", "-keyout", key, "-out", cert],
                       check=True, capture_output=True)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        primary = self.start_primary(users=["alice@example.test"], tls_context=context)
        engine = self.engine(primary)
        engine.tls = tls_context()
        assert engine.tls is not None
        engine.request(DOMAIN, "alice@example.test", CLIENT, reactor.seconds())
        yield engine.when_idle()
        # a self-signed certificate: opportunistic TLS encrypts without verifying it
        assert primary.encrypted and all(primary.encrypted)
        assert engine.verdict(DOMAIN, "alice@example.test", reactor.seconds()).status == POSITIVE

    @defer.inlineCallbacks
    def test_dictionary_burst_from_one_client_is_capped(self) -> Any:
        primary = self.start_primary(users=["alice@example.test"])
        engine = self.engine(primary, client_rate=10, max_unknown=5)
        reasons = [engine.request(DOMAIN, f"guess{i}@example.test", CLIENT, reactor.seconds())
                   for i in range(1000)]
        assert reasons.count(None) == 10 and reasons.count("client_rate") == 990
        # request() only queued: no session exists before the reactor turns
        assert engine.sessions[DOMAIN] == 0 and engine.limits.open_sessions(DOMAIN) == 0
        yield engine.when_idle()
        asked = [a for _, a, _ in primary.callouts() if not a.startswith("backupmx-verify-")]
        assert len(asked) == 10
        # at most 5 refusals per session: the 10 unknown ones took two sessions at least
        assert engine.sessions[DOMAIN] >= 2
        assert engine.skipped[(DOMAIN, "client_rate")] == 990
