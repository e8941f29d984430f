"""The Twisted policy protocol over a StringTransport: byte streams in, replies out."""
from __future__ import annotations

import socket
from typing import Any, Dict, List

import pytest
from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import ClientCreator, Protocol
from twisted.python.failure import Failure
from twisted.trial import unittest

try:
    from twisted.internet.testing import StringTransport
except ImportError:  # Twisted before 19.7 (not Debian 12's 22.4, but cheap to keep)
    from twisted.test.proto_helpers import StringTransport  # type: ignore[no-redef]

from backupmx.common.decision import Policy, decide
from backupmx.common.primary_state import PrimaryState
from backupmx.common.recipient_map import RecipientMap
from backupmx.policyd.protocol import PolicyFactory, PolicyProtocol
from tests.harness.policy_streams import (
    POSTFIX_RCPT,
    READ_SIZES,
    ROWS,
    Row,
    chunks,
    encode,
    small,
)
from tests.harness.primary_states import States


class Recorder:
    """A responder that numbers the requests it sees and keeps them."""

    def __init__(self) -> None:
        self.requests: List[Dict[str, str]] = []

    def __call__(self, request: Dict[str, str]) -> str:
        self.requests.append(dict(request))
        return f"DUNNO {len(self.requests)}"


def connect(factory: PolicyFactory, clock: "task.Clock | None" = None
            ) -> "tuple[PolicyProtocol, StringTransport]":
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    if clock is not None:
        protocol.callLater = clock.callLater  # TimeoutMixin's documented hook
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    return protocol, transport


def expected_replies(count: int) -> bytes:
    return b"".join(b"action=DUNNO %d\n\n" % n for n in range(1, count + 1))


@pytest.mark.parametrize("size", READ_SIZES)
@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_stream_table(row: Row, size: int) -> None:
    recorder = Recorder()
    factory = PolicyFactory(recorder, None, row.max_line_length, row.max_attributes)
    protocol, transport = connect(factory)
    for data in chunks(row.stream, size):
        protocol.dataReceived(data)  # keeps feeding after an error: it must be ignored
    assert recorder.requests == list(row.requests)
    assert transport.value() == expected_replies(len(row.requests))
    assert transport.disconnecting is row.broken
    protocol.connectionLost(Failure(ConnectionDone()))
    assert factory.connections == 0


def test_replies_come_one_per_request_as_they_complete() -> None:
    recorder = Recorder()
    protocol, transport = connect(PolicyFactory(recorder, None))
    stream = small(1)
    for byte in chunks(stream[:-1], 1):
        protocol.dataReceived(byte)
        assert transport.value() == b""
    protocol.dataReceived(stream[-1:])
    assert transport.value() == b"action=DUNNO 1\n\n"
    transport.clear()
    protocol.dataReceived(small(2))
    assert transport.value() == b"action=DUNNO 2\n\n"
    assert not transport.disconnecting


@pytest.mark.parametrize("size", READ_SIZES)
def test_unknown_attributes_do_not_change_the_decision(size: int) -> None:
    """The real decision as responder: a future attribute is ignored, the answer is the same."""
    snapshot = Policy(frozenset({"example.test"}),
                              RecipientMap({"example.test": frozenset({"alice"})}), None)
    primaries = States({"example.test": PrimaryState("up", "mx.example.test", 100.0)})
    factory = PolicyFactory(lambda request: decide(request, snapshot, primaries, 101.0).action,
                            None)
    known = [pair for pair in POSTFIX_RCPT if pair[0] != "some_future_attribute"]
    stream = encode(POSTFIX_RCPT) + encode(known) + encode(POSTFIX_RCPT + [("zzz", "1")])
    protocol, transport = connect(factory)
    for data in chunks(stream, size):
        protocol.dataReceived(data)
    reply = b"action=DEFER_IF_PERMIT 4.7.1 Primary MX mx.example.test is up; deliver there\n\n"
    assert transport.value() == reply * 3


@pytest.mark.parametrize("size", READ_SIZES)
def test_disconnect_mid_request_does_not_crash(size: int) -> None:
    recorder = Recorder()
    factory = PolicyFactory(recorder, None)
    protocol, transport = connect(factory)
    for data in chunks(small(1) + small(2)[:-3], size):
        protocol.dataReceived(data)
    assert protocol.decoder.pending
    protocol.connectionLost(Failure(ConnectionLost()))
    assert len(recorder.requests) == 1
    assert factory.connections == 0


def test_connection_count() -> None:
    factory = PolicyFactory(Recorder(), None)
    first, _ = connect(factory)
    second, _ = connect(factory)
    assert factory.connections == 2
    first.connectionLost(Failure(ConnectionDone()))
    second.connectionLost(Failure(ConnectionDone()))
    assert factory.connections == 0


def test_idle_timeout_closes_and_activity_resets_it() -> None:
    clock = task.Clock()
    protocol, transport = connect(PolicyFactory(Recorder(), idle_timeout=300.0), clock)
    clock.advance(299)
    assert not transport.disconnecting
    protocol.dataReceived(b"request=smtpd_access_policy\n")  # any bytes count as activity
    clock.advance(299)
    assert not transport.disconnecting
    protocol.dataReceived(b"\n")
    clock.advance(299.5)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting
    assert transport.value() == b"action=DUNNO 1\n\n"


def test_connection_lost_cancels_the_idle_timer() -> None:
    clock = task.Clock()
    protocol, _ = connect(PolicyFactory(Recorder(), idle_timeout=10.0), clock)
    assert len(clock.getDelayedCalls()) == 1
    protocol.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []


def test_no_idle_timeout_when_none() -> None:
    clock = task.Clock()
    _, transport = connect(PolicyFactory(Recorder(), idle_timeout=None), clock)
    assert clock.getDelayedCalls() == []
    assert not transport.disconnecting


def test_protocol_error_is_logged_with_the_peer() -> None:
    from twisted.logger import globalLogPublisher
    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        protocol, transport = connect(PolicyFactory(Recorder(), None))
        protocol.dataReceived(b"garbage\n\n")
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [e for e in events if "protocol error" in e.get("log_format", "")]
    assert len(warnings) == 1
    assert warnings[0]["peer"] == "127.0.0.1:40000"
    assert transport.value() == b"" and transport.disconnecting


class OverRealTCPTests(unittest.TestCase):
    """The same protocol on a real loopback socket (port 0): replies, and close on garbage."""

    def setUp(self) -> None:
        self.recorder = Recorder()
        self.factory = PolicyFactory(self.recorder, 30.0)
        self.server_lost: List[defer.Deferred] = []
        self.server_queued: defer.Deferred = defer.Deferred()  # fires when replies had to wait
        self.server_send_buffer = 0  # SO_SNDBUF for accepted connections; 0: the system's
        build = self.factory.buildProtocol

        def build_and_watch(addr: Any) -> PolicyProtocol:
            protocol = build(addr)
            lost: defer.Deferred = defer.Deferred()
            self.server_lost.append(lost)
            connection_lost = protocol.connectionLost
            protocol.connectionLost = lambda reason=None: (  # type: ignore[method-assign]
                connection_lost(reason), lost.callback(None))
            connection_made = protocol.connectionMade
            data_received = protocol.dataReceived

            def connection_made_with_buffer() -> None:
                if self.server_send_buffer:
                    protocol.transport.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_SNDBUF, self.server_send_buffer)
                connection_made()

            def data_received_and_watch(data: bytes) -> None:
                data_received(data)
                if protocol.transport in reactor.getWriters() and not self.server_queued.called:
                    self.server_queued.callback(None)

            protocol.connectionMade = connection_made_with_buffer  # type: ignore[method-assign]
            protocol.dataReceived = data_received_and_watch  # type: ignore[method-assign]
            return protocol

        self.factory.buildProtocol = build_and_watch  # type: ignore[method-assign]
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    @defer.inlineCallbacks
    def exchange(self, stream: bytes) -> Any:
        """Send the stream, return everything received until the server closes or we do."""
        client = yield ClientCreator(reactor, Client).connectTCP(
            "127.0.0.1", self.port.getHost().port)
        client.transport.write(stream)
        received = yield client.done
        yield defer.gatherResults(self.server_lost)  # the server side is closed too
        self.assertEqual(self.factory.connections, 0)
        return received

    @defer.inlineCallbacks
    def test_requests_answered_in_order(self) -> Any:
        received = yield self.exchange(small(1) + small(2) + small(3) + b"x=")
        self.assertEqual(received, expected_replies(3))
        self.assertEqual([r["n"] for r in self.recorder.requests], ["1", "2", "3"])

    @defer.inlineCallbacks
    def test_a_slow_reader_gets_every_reply_in_order(self) -> Any:
        """Replies go straight to the socket until it is full, then through Twisted's queue;
        requests keep coming while the queue drains, and no reply overtakes another."""
        count = 4000
        self.server_send_buffer = 4096
        client = yield ClientCreator(reactor, Client, count).connectTCP(
            "127.0.0.1", self.port.getHost().port)
        client.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.transport.pauseProducing()  # stop reading: the server's replies pile up
        client.transport.write(b"".join(small(n) for n in range(1, count + 1)))
        yield self.server_queued  # the socket was full and Twisted had to queue
        client.transport.resumeProducing()
        received = yield client.done
        yield defer.gatherResults(self.server_lost)
        self.assertEqual(received, expected_replies(count))

    @defer.inlineCallbacks
    def test_garbage_closes_without_reply(self) -> Any:
        received = yield self.exchange(b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(received, b"")
        self.assertEqual(self.recorder.requests, [])


class Client(Protocol):
    """Collects replies; hangs up itself once `expected` replies came, else waits for the server."""

    def __init__(self, expected: int = 3) -> None:
        self.expected = expected
        self.received = b""
        self.done: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.received.count(b"\n\n") >= self.expected:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.received)
