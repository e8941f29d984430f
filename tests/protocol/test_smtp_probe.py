"""common.smtp_probe: the MX set, and SMTP greeting probes against real local servers.

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

from backupmx.common.config import PrimarySpec
from backupmx.common.smtp_probe import (
    ConfigurationProblem,
    ProbeResult,
    mx_hosts,
    probe_primary,
    probe_smtp,
)


def mx(preference: int, name: str) -> dns.RRHeader:
    return dns.RRHeader(b"example.test", dns.MX, payload=dns.Record_MX(preference, name.encode()))


@pytest.mark.parametrize("answers,expected", [
    ([mx(10, "mx1.example.test")], ["mx1.example.test"]),
    ([mx(20, "b.example.test"), mx(5, "a.example.test"), mx(10, "c.example.test")],
     ["a.example.test"]),
    # RFC 5321 section 5.1: every host of the lowest preference is a primary
    ([mx(10, "first.test"), mx(10, "second.test"), mx(20, "backup.test")],
     ["first.test", "second.test"]),
    ([mx(10, "Same.test."), mx(10, "same.test")], ["same.test"]),
    ([mx(0, "Zero.Example.test.")], ["zero.example.test"]),
    ([dns.RRHeader(b"example.test", dns.CNAME, payload=dns.Record_CNAME(b"x.test")),
      mx(30, "only.example.test")], ["only.example.test"]),
    # no MX record: the domain itself is the implicit MX
    ([], ["example.test"]),
    ([dns.RRHeader(b"example.test", dns.A, payload=dns.Record_A("192.0.2.1"))], ["example.test"]),
])
def test_mx_hosts(answers: List[Any], expected: List[str]) -> None:
    assert mx_hosts("example.test", answers) == expected


def test_null_mx_is_a_configuration_problem() -> None:
    with pytest.raises(ConfigurationProblem, match="null MX"):
        mx_hosts("example.test", [mx(0, "")])


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
        up, factory = yield self.probe(None, timeout=0.3)
        self.assertIs(up, False)
        self.assertEqual(len(factory.connections), 1)

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


class ProbePrimaryTests(unittest.TestCase):
    """probe_primary: the MX set probed as a sender would, on loopback servers (127.0.0.x)."""

    def serve(self, greeting: Optional[bytes], host: str = "127.0.0.1",
              port: int = 0) -> "tuple[FakeSMTPFactory, int]":
        factory = FakeSMTPFactory(greeting, close_after_greeting=greeting is not None)
        listening = reactor.listenTCP(port, factory, interface=host)
        self.addCleanup(listening.stopListening)
        # a probe answers at the first 220 and lets the other connections finish on their own:
        # the test ends only once every connection of this server has closed (a clean reactor)
        self.addCleanup(lambda: defer.DeferredList([c.lost for c in factory.connections]))
        self.addCleanup(task.deferLater, reactor, 0, lambda: None)  # aborted probes close
        return factory, listening.getHost().port

    @defer.inlineCallbacks
    def test_fixed_host(self) -> Any:
        _, port = self.serve(b"220 up\r\n")
        result = yield probe_primary(reactor, "a.test", PrimarySpec("127.0.0.1", port), 5)
        self.assertEqual(result, ProbeResult(True, "127.0.0.1"))

    @defer.inlineCallbacks
    def test_equal_preference_hosts_first_down_second_up_is_up(self) -> Any:
        _, port = self.serve(b"554 no\r\n", "127.0.0.2")
        self.serve(b"220 yes\r\n", "127.0.0.3", port)
        resolver = FakeResolver({"set.test": [mx(10, "127.0.0.2"), mx(10, "127.0.0.3"),
                                              mx(20, "127.0.0.4")]})
        for _ in range(2):  # whatever the answer order, the state is the same
            result = yield probe_primary(reactor, "set.test", PrimarySpec(None, port), 5,
                                         resolver)
            self.assertEqual(result, ProbeResult(True, "127.0.0.3"))
            resolver.table["set.test"].reverse()

    @defer.inlineCallbacks
    def test_all_lowest_preference_hosts_down_is_down_naming_them(self) -> Any:
        _, port = self.serve(b"554 no\r\n", "127.0.0.2")
        self.serve(b"220 backup\r\n", "127.0.0.4", port)  # a higher preference: not primary
        resolver = FakeResolver({"set.test": [mx(10, "127.0.0.2"), mx(20, "127.0.0.4")]})
        result = yield probe_primary(reactor, "set.test", PrimarySpec(None, port), 5, resolver)
        self.assertEqual(result, ProbeResult(False, "127.0.0.2"))

    @defer.inlineCallbacks
    def test_null_mx_is_reported_as_an_error_not_as_down(self) -> Any:
        resolver = FakeResolver({"null.test": [mx(0, "")]})
        result = yield probe_primary(reactor, "null.test", PrimarySpec(None, 25), 5, resolver)
        self.assertFalse(result.up)
        self.assertIn("null MX", result.error or "")

    @defer.inlineCallbacks
    def test_this_host_as_mx_is_an_error(self) -> Any:
        resolver = FakeResolver({"self.test": [mx(10, "Backup.Example.test.")]})
        result = yield probe_primary(reactor, "self.test", PrimarySpec(None, 25), 5, resolver,
                                     local_names={"backup.example.test"})
        self.assertIn("is this host", result.error or "")

    @defer.inlineCallbacks
    def test_failed_mx_lookup_is_down(self) -> Any:
        result = yield probe_primary(reactor, "gone.test", PrimarySpec(None, 25), 5,
                                     FakeResolver({}))
        self.assertFalse(result.up)
        self.assertIsNone(result.error)
        self.assertEqual(result.host, "")
        self.assertIn("MX lookup failed", result.detail)
