"""Replies written at once when nothing is queued, and through Twisted's queue otherwise.

Each test builds Twisted's real ``tcp.Connection`` over one end of a socket pair, with a
MemoryReactor standing in for the reactor (so "registered for writing" is observable through
``getWriters``), and reads what really reached the other end.
"""
from __future__ import annotations

import socket
from typing import Iterator, Tuple

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol

try:
    from twisted.internet.testing import MemoryReactor, StringTransport
except ImportError:  # Twisted before 19.7
    from twisted.test.proto_helpers import MemoryReactor, StringTransport  # type: ignore

from backupmx.policyd.writethrough import writer_for

REPLY = b"action=DUNNO\n\n"


@pytest.fixture
def pair() -> Iterator[Tuple[tcp.Connection, socket.socket, MemoryReactor]]:
    server_end, client_end = socket.socketpair()
    client_end.setblocking(False)
    reactor = MemoryReactor()
    connection = tcp.Connection(server_end, Protocol(), reactor)
    connection.connected = True  # what tcp.Server sets for an accepted connection
    yield connection, client_end, reactor
    server_end.close()
    client_end.close()


def received(client_end: socket.socket) -> bytes:
    """Everything the peer can read right now, without waiting."""
    data = b""
    while True:
        try:
            chunk = client_end.recv(1 << 20)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def test_a_reply_is_on_the_wire_before_the_reactor_runs(pair) -> None:  # type: ignore[no-untyped-def]
    connection, client_end, reactor = pair
    writer_for(connection)(REPLY)
    assert received(client_end) == REPLY
    assert connection not in reactor.getWriters()  # no epoll registration, no reactor pass


def test_a_reply_behind_queued_bytes_waits_its_turn(pair) -> None:  # type: ignore[no-untyped-def]
    connection, client_end, reactor = pair
    connection.write(b"first ")  # queued by Twisted, not yet sent
    writer_for(connection)(b"second")
    assert received(client_end) == b""
    assert connection in reactor.getWriters()
    connection.doWrite()  # the reactor's next pass
    assert received(client_end) == b"first second"
    assert connection not in reactor.getWriters()


def test_what_the_kernel_does_not_take_is_queued_in_order(pair) -> None:  # type: ignore[no-untyped-def]
    connection, client_end, reactor = pair
    connection.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = bytes(range(256)) * 4096  # 1 MiB: more than the socket buffers hold
    write = writer_for(connection)
    write(big)
    write(REPLY)  # must not overtake the queued rest of `big`
    got = received(client_end)
    assert 0 < len(got) < len(big)
    assert connection in reactor.getWriters()
    while connection in reactor.getWriters():
        connection.doWrite()
        got += received(client_end)
    assert got == big + REPLY


def test_a_lost_peer_is_left_for_twisted_to_report(pair) -> None:  # type: ignore[no-untyped-def]
    connection, client_end, reactor = pair
    client_end.close()
    writer_for(connection)(REPLY)  # no exception on the request path
    assert connection in reactor.getWriters()
    assert isinstance(connection.doWrite(), Exception)  # the reactor then closes it


def test_a_closing_connection_goes_through_twisteds_queue(pair) -> None:  # type: ignore[no-untyped-def]
    connection, client_end, reactor = pair
    connection.disconnecting = True  # loseConnection() was called; Twisted flushes, then closes
    writer_for(connection)(REPLY)
    assert received(client_end) == b""
    connection.doWrite()
    assert received(client_end) == REPLY


def test_other_transports_get_their_plain_write() -> None:
    transport = StringTransport()
    write = writer_for(transport)
    write(REPLY)
    assert transport.value() == REPLY
    assert write == transport.write
