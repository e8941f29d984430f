"""The primary prober: MX choice, and SMTP greeting probes against real local servers.

Reactor-driven tests are trial TestCases (pytest runs them and trial spins the reactor); every
server listens on port 0 and the tests wait on Deferreds, never on sleeps.
"""
from __future__ import annotations

from typing import Any, List, Optional

import pytest
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.names import dns
from twisted.names.error import DNSNameError
from twisted.trial import unittest

from backupmx.policyd.config import PrimarySpec
from backupmx.policyd.prober import NoPrimaryHost, PrimaryProber, lowest_mx, probe_smtp


def mx(preference: int, name: str) -> dns.RRHeader:
    return dns.RRHeader(b"example.test", dns.MX, payload=dns.Record_MX(preference, name.encode()))


@pytest.mark.parametrize("answers,expected", [
    ([mx(10, "mx1.example.test")], "mx1.example.test"),
    ([mx(20, "b.example.test"), mx(5, "a.example.test"), mx(10, "c.example.test")],
     "a.example.test"),
    ([mx(10, "first.test"), mx(10, "second.test")], "first.test"),
    ([mx(0, "Zero.Example.test.")], "Zero.Example.test"),
    ([dns.RRHeader(b"example.test", dns.CNAME, payload=dns.Record_CNAME(b"x.test")),
      mx(30, "only.example.test")], "only.example.test"),
])
def test_lowest_mx(answers: List[Any], expected: str) -> None:
    assert lowest_mx(answers) == expected


@pytest.mark.parametrize("answers", [
    [], [dns.RRHeader(b"example.test", dns.A, payload=dns.Record_A("192.0.2.1"))],
])
def test_lowest_mx_without_mx_records(answers: List[Any]) -> None:
    with pytest.raises(NoPrimaryHost):
        lowest_mx(answers)


class FakeSMTP(Protocol):
    """Sends a fixed greeting (or nothing), keeps what the client said."""

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.received = b""
        self.lost: defer.Deferred = defer.Deferred()
        if self.factory.greeting is not None:
            self.transport.write(self.factory.greeting)
            if self.factory.close_after_greeting:
                self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class FakeSMTPFactory(Factory):
    protocol = FakeSMTP
    noisy = False

    def __init__(self, greeting: Optional[bytes], close_after_greeting: bool = False) -> None:
        self.greeting = greeting
        self.close_after_greeting = close_after_greeting
        self.connections: List[FakeSMTP] = []


class ProbeSMTPTests(unittest.TestCase):
    """probe_smtp against tiny real Twisted servers on 127.0.0.1, port 0."""

    def serve(self, greeting: Optional[bytes], close_after_greeting: bool = False
              ) -> "tuple[FakeSMTPFactory, int]":
        factory = FakeSMTPFactory(greeting, close_after_greeting)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return factory, port.getHost().port

    @defer.inlineCallbacks
    def probe(self, greeting: Optional[bytes], timeout: float = 5.0,
              close_after_greeting: bool = False) -> Any:
        """Probe, then wait until the server saw the connection end (a clean reactor)."""
        factory, port = self.serve(greeting, close_after_greeting)
        up = yield probe_smtp(reactor, "127.0.0.1", port, timeout)
        for connection in factory.connections:
            yield connection.lost
        return up, factory

    @defer.inlineCallbacks
    def test_220_greeting_is_up_and_says_quit(self) -> Any:
        up, factory = yield self.probe(b"220 primary.test ESMTP ready\r\n")
        self.assertIs(up, True)
        self.assertEqual(len(factory.connections), 1)
        self.assertEqual(factory.connections[0].received, b"QUIT\r\n")

    @defer.inlineCallbacks
    def test_multiline_220_greeting_is_up(self) -> Any:
        up, _ = yield self.probe(b"220-primary.test ESMTP\r\n220 welcome\r\n")
        self.assertIs(up, True)

    @defer.inlineCallbacks
    def test_bare_lf_greeting_is_up(self) -> Any:
        up, _ = yield self.probe(b"220 primary.test\n")
        self.assertIs(up, True)

    @defer.inlineCallbacks
    def test_554_greeting_is_down(self) -> Any:
        up, factory = yield self.probe(b"554 5.3.2 no service here\r\n")
        self.assertIs(up, False)
        self.assertEqual(factory.connections[0].received, b"QUIT\r\n")

    @defer.inlineCallbacks
    def test_421_greeting_is_down(self) -> Any:
        up, _ = yield self.probe(b"421 4.3.2 busy\r\n", close_after_greeting=True)
        self.assertIs(up, False)

    @defer.inlineCallbacks
    def test_closed_without_greeting_is_down(self) -> Any:
        up, _ = yield self.probe(b"", close_after_greeting=True)
        self.assertIs(up, False)

    @defer.inlineCallbacks
    def test_silent_server_is_down_after_the_timeout(self) -> Any:
        started = reactor.seconds()
        up, factory = yield self.probe(None, timeout=0.3)
        elapsed = reactor.seconds() - started
        self.assertIs(up, False)
        self.assertEqual(len(factory.connections), 1)
        self.assertGreaterEqual(elapsed, 0.25)
        self.assertLess(elapsed, 5.0)

    @defer.inlineCallbacks
    def test_partial_greeting_without_end_of_line_is_down(self) -> Any:
        up, _ = yield self.probe(b"220 never finished", timeout=0.3)
        self.assertIs(up, False)

    @defer.inlineCallbacks
    def test_endless_greeting_line_is_down(self) -> Any:
        up, _ = yield self.probe(b"220 " + b"x" * 10000, timeout=5.0)
        self.assertIs(up, False)

    @defer.inlineCallbacks
    def test_closed_port_is_down(self) -> Any:
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        number = port.getHost().port
        yield port.stopListening()
        up = yield probe_smtp(reactor, "127.0.0.1", number, 5.0)
        self.assertIs(up, False)


class FakeResolver:
    """lookupMailExchange answering from a table; a missing name is NXDOMAIN."""

    def __init__(self, table: "dict[str, List[Any]]") -> None:
        self.table = table
        self.lookups: List[str] = []

    def lookupMailExchange(self, name: str, timeout: Any = None) -> defer.Deferred:
        self.lookups.append(name)
        if name not in self.table:
            return defer.fail(DNSNameError(name))
        return defer.succeed((self.table[name], [], []))


class PrimaryProberTests(unittest.TestCase):
    """PrimaryProber with the real reactor for probes, a fake resolver for MX lookups."""

    def serve(self, greeting: bytes) -> "tuple[FakeSMTPFactory, int]":
        factory = FakeSMTPFactory(greeting)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return factory, port.getHost().port

    @defer.inlineCallbacks
    def settle(self, *factories: FakeSMTPFactory) -> Any:
        for factory in factories:
            for connection in factory.connections:
                yield connection.lost

    @defer.inlineCallbacks
    def test_fixed_primaries_up_and_down(self) -> Any:
        up_server, up_port = self.serve(b"220 up\r\n")
        down_server, down_port = self.serve(b"554 down\r\n")
        prober = PrimaryProber(reactor, {
            "up.test": PrimarySpec("127.0.0.1", up_port),
            "down.test": PrimarySpec("127.0.0.1", down_port),
        }, interval=30, timeout=5)
        before = reactor.seconds()
        yield defer.gatherResults([prober.probe_domain("up.test"),
                                   prober.probe_domain("down.test")])
        yield self.settle(up_server, down_server)
        self.assertTrue(prober.states["up.test"].up)
        self.assertEqual(prober.states["up.test"].host, "127.0.0.1")
        self.assertGreaterEqual(prober.states["up.test"].checked_at, before)
        self.assertFalse(prober.states["down.test"].up)
        self.assertEqual(prober.max_age, 65)

    @defer.inlineCallbacks
    def test_mx_domain_probes_its_lowest_mx(self) -> Any:
        server, port = self.serve(b"220 mx\r\n")
        resolver = FakeResolver({"mx.test": [mx(20, "backup.invalid"), mx(10, "127.0.0.1")]})
        prober = PrimaryProber(reactor, {"mx.test": PrimarySpec(None, port)}, 30, 5, resolver)
        yield prober.probe_domain("mx.test")
        yield self.settle(server)
        self.assertEqual(resolver.lookups, ["mx.test"])
        self.assertEqual((prober.states["mx.test"].up, prober.states["mx.test"].host),
                         (True, "127.0.0.1"))

    @defer.inlineCallbacks
    def test_mx_lookup_failure_counts_as_down(self) -> Any:
        prober = PrimaryProber(reactor, {"gone.test": PrimarySpec(None, 25),
                                         "nomx.test": PrimarySpec(None, 25)}, 30, 5,
                               FakeResolver({"nomx.test": []}))
        yield prober.probe_domain("gone.test")
        yield prober.probe_domain("nomx.test")
        self.assertEqual(prober.states["gone.test"].up, False)
        self.assertEqual(prober.states["nomx.test"].host, "(no MX)")
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_probe_all_skips_domains_in_flight(self) -> Any:
        resolver = FakeResolver({})
        pending: defer.Deferred = defer.Deferred()
        resolver.lookupMailExchange = lambda name, timeout=None: (  # type: ignore[assignment]
            resolver.lookups.append(name) or pending)
        prober = PrimaryProber(reactor, {"slow.test": PrimarySpec(None, 25)}, 30, 5, resolver)
        prober.probe_all()
        prober.probe_all()
        self.assertEqual(resolver.lookups, ["slow.test"])
        pending.callback(([], [], []))
        yield defer.succeed(None)
        self.assertFalse(prober.states["slow.test"].up)
        prober.probe_all()
        self.assertEqual(resolver.lookups, ["slow.test", "slow.test"])


class PrimaryProberClockTests(unittest.TestCase):
    """Timer-driven behaviour on a task.Clock: loop, expiry, reconfiguration."""

    def make(self, domains: "dict[str, PrimarySpec]") -> "tuple[PrimaryProber, task.Clock, list]":
        clock = task.Clock()
        clock.advance(1000)
        prober = PrimaryProber(clock, domains, interval=30, timeout=5)
        probed: List[str] = []
        prober.probe_domain = probed.append  # type: ignore[assignment,method-assign]
        return prober, clock, probed

    def test_loop_probes_every_interval_until_stopped(self) -> None:
        prober, clock, probed = self.make({"a.test": PrimarySpec("h", 25)})
        prober.start()
        self.assertEqual(probed, ["a.test"])
        clock.advance(29)
        self.assertEqual(len(probed), 1)
        clock.advance(1)
        self.assertEqual(len(probed), 2)
        prober.stop()
        clock.advance(300)
        self.assertEqual(len(probed), 2)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_states_expire_after_max_age(self) -> None:
        prober, clock, _ = self.make({"a.test": PrimarySpec("h", 25)})
        prober._record("a.test", "h", True)
        self.assertEqual(prober.states["a.test"].checked_at, clock.seconds())
        clock.advance(prober.max_age - 1)
        self.assertIn("a.test", prober.states)
        clock.advance(2)
        self.assertNotIn("a.test", prober.states)

    def test_results_for_unconfigured_domains_are_dropped(self) -> None:
        prober, _, _ = self.make({"a.test": PrimarySpec("h", 25)})
        prober._record("old.test", "h", True)
        self.assertNotIn("old.test", prober.states)

    def test_update_forgets_removed_domains_and_reprobes(self) -> None:
        prober, clock, probed = self.make({"a.test": PrimarySpec("h", 25),
                                           "b.test": PrimarySpec("h", 25)})
        prober.start()
        prober._record("a.test", "h", True)
        prober._record("b.test", "h", True)
        probed.clear()
        prober.update({"b.test": PrimarySpec("h", 25), "c.test": PrimarySpec(None)}, 10, 2)
        self.assertNotIn("a.test", prober.states)
        self.assertIn("b.test", prober.states)
        self.assertEqual(sorted(probed), ["b.test", "c.test"])
        self.assertEqual((prober.interval, prober.timeout, prober.max_age), (10, 2, 22))
        probed.clear()
        clock.advance(10)
        self.assertEqual(sorted(probed), ["b.test", "c.test"])
        prober.stop()

    def test_update_to_a_longer_interval_keeps_states_for_the_new_max_age(self) -> None:
        prober, clock, _ = self.make({"a.test": PrimarySpec("h", 25)})
        prober.update({"a.test": PrimarySpec("h", 25)}, 300, 5)
        self.assertEqual(prober.max_age, 605)
        prober._record("a.test", "h", True)
        clock.advance(300)  # the next probe is due only now
        self.assertIn("a.test", prober.states)
        clock.advance(306)
        self.assertNotIn("a.test", prober.states)

    def test_update_to_many_domains_keeps_every_state(self) -> None:
        prober, _, _ = self.make({"a.test": PrimarySpec("h", 25)})
        domains = {f"d{i}.test": PrimarySpec("h", 25) for i in range(500)}
        prober.update(domains, 30, 5)
        for domain in domains:
            prober._record(domain, "h", True)
        self.assertEqual(sorted(prober.states), sorted(domains))
