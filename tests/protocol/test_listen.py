"""Listen addresses: parsing, and the forms handed to Twisted and to libmilter."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from backupmx.common import daemon as runtime
from backupmx.common.listen import (
    DEFAULT_UNIX_MODE,
    ListenAddress,
    optional_listen,
    parse_host_port,
    parse_listen,
)


@pytest.mark.parametrize("text,expected", [
    ("inet:127.0.0.1:10040", ListenAddress("inet", host="127.0.0.1", port=10040)),
    (" inet:localhost:25 ", ListenAddress("inet", host="localhost", port=25)),
    ("inet:0.0.0.0:0", ListenAddress("inet", host="0.0.0.0", port=0)),
    ("inet:[::1]:10040", ListenAddress("inet", host="::1", port=10040)),
    ("inet:[2001:db8::1]:65535", ListenAddress("inet", host="2001:db8::1", port=65535)),
    ("inet:[::ffff:127.0.0.1]:1", ListenAddress("inet", host="::ffff:127.0.0.1", port=1)),
    ("unix:/run/backupmx/policyd.sock",
     ListenAddress("unix", path="/run/backupmx/policyd.sock", mode=DEFAULT_UNIX_MODE)),
    ("unix:/run/p.sock:0660", ListenAddress("unix", path="/run/p.sock", mode=0o660)),
    ("unix:/run/p.sock:600", ListenAddress("unix", path="/run/p.sock", mode=0o600)),
    ("unix:/run/odd:name.sock", ListenAddress("unix", path="/run/odd:name.sock")),
    ("unix:/run/a:b:0666", ListenAddress("unix", path="/run/a:b", mode=0o666)),
])
def test_parse_listen(text: str, expected: ListenAddress) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text,words", [
    ("tcp:127.0.0.1:10040", "expected inet:HOST:PORT"),
    ("127.0.0.1:10040", "expected inet:HOST:PORT"),
    ("", "expected inet:HOST:PORT"),
    ("INET:127.0.0.1:1", "expected inet:HOST:PORT"),
    ("inet:127.0.0.1", "expected HOST:PORT"),
    ("inet:10040", "expected HOST:PORT"),
    ("inet::10040", "expected HOST:PORT"),
    ("inet:127.0.0.1:", "port must be"),
    ("inet:127.0.0.1:65536", "port must be"),
    ("inet:127.0.0.1:-1", "port must be"),
    ("inet:127.0.0.1:http", "port must be"),
    ("inet:::1:10040", "brackets"),
    ("inet:[::1]", "expected [HOST]:PORT"),
    ("inet:[::1]10040", "expected [HOST]:PORT"),
    ("inet:[localhost]:10040", "not an IP address"),
    ("unix:relative.sock", "absolute"),
    ("unix:", "absolute"),
    ("unix:/run/p.sock:1777", "not a file mode"),
])
def test_parse_listen_errors(text: str, words: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_listen(text)
    assert words in str(caught.value)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize("text", [
    "inet:127.0.0.1:10040", "inet:[::1]:10040", "unix:/run/p.sock:0660", "unix:/x:0600",
])
def test_str_round_trips(text: str) -> None:
    address = parse_listen(text)
    assert parse_listen(str(address)) == address


def test_str_shows_default_unix_mode() -> None:
    assert str(parse_listen("unix:/run/p.sock")) == "unix:/run/p.sock:0666"


@pytest.mark.parametrize("text,expected", [
    ("inet:127.0.0.1:8890", "inet:8890@127.0.0.1"),
    ("inet:localhost:8890", "inet:8890@localhost"),
    ("inet:[::1]:8890", "inet6:8890@::1"),
    ("unix:/run/m.sock:0660", "unix:/run/m.sock"),
])
def test_libmilter_socket(text: str, expected: str) -> None:
    assert parse_listen(text).libmilter_socket() == expected


def test_optional_listen() -> None:
    assert optional_listen("") is None
    assert optional_listen("  ") is None
    assert optional_listen("inet:127.0.0.1:9") == ListenAddress("inet", host="127.0.0.1", port=9)


@pytest.mark.parametrize("text,expected", [
    ("[127.0.0.1]:2526", ("127.0.0.1", 2526)),
    ("[mx.example.test]", ("mx.example.test", 25)),
    ("[2001:db8::1]:587", ("2001:db8::1", 587)),
])
def test_parse_host_port(text: str, expected: "tuple[str, int]") -> None:
    assert parse_host_port(text, 25) == expected


@pytest.mark.parametrize("text", ["127.0.0.1:25", "[]:25", "[host", "[host]25", "[host]:0",
                                  "[host]:x", "mx.example.test"])
def test_parse_host_port_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(text, 25)


class ListenForRealTests(unittest.TestCase):
    """runtime.listen binds what the address says: port, interface, unix socket and its mode."""

    def _listen(self, text: str) -> defer.Deferred:
        listening = defer.maybeDeferred(runtime.listen, reactor, parse_listen(text),
                                        Factory.forProtocol(Protocol))
        listening.addCallback(lambda port: self.addCleanup(port.stopListening) or port)
        return listening

    @defer.inlineCallbacks
    def test_inet_ipv4(self) -> defer.Deferred:
        port = yield self._listen("inet:127.0.0.1:0")
        host = port.getHost()
        self.assertEqual(host.host, "127.0.0.1")
        self.assertNotEqual(host.port, 0)

    @defer.inlineCallbacks
    def test_inet_ipv6(self) -> defer.Deferred:
        try:
            port = yield self._listen("inet:[::1]:0")
        except Exception as error:  # noqa: BLE001 - a host without IPv6 loopback
            raise unittest.SkipTest(f"no IPv6 loopback: {error}") from error
        self.assertEqual(port.getHost().host, "::1")

    @defer.inlineCallbacks
    def test_unix_with_mode_and_colon_in_path(self) -> defer.Deferred:
        folder = Path(tempfile.mkdtemp(prefix="listen-"))  # short: sun_path has 108 bytes
        self.addCleanup(shutil.rmtree, folder)
        path = folder / "odd:name.sock"
        port = yield self._listen(f"unix:{path}:0640")
        name = port.getHost().name
        self.assertEqual(name.decode() if isinstance(name, bytes) else name, str(path))
        self.assertEqual(path.stat().st_mode & 0o777, 0o640)
