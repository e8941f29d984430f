"""Hostile policy protocol input, fuzzed with hypothesis: nothing escapes, memory stays bounded.

The decoder's buffer is the only memory a connection holds, so asserting its length after every
read proves the bound. Small limits keep the examples fast; the 1 MiB and 10,000-attribute cases
run against the default limits.
"""
from __future__ import annotations

from typing import List, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport

from backupmx.policyd.codec import ProtocolError, Request, RequestDecoder
from backupmx.policyd.protocol import PolicyFactory, PolicyProtocol

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LINE, ATTRS = 64, 8


def chunks(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


class Recorder:
    """A responder that remembers what it was asked."""

    def __init__(self) -> None:
        self.requests: List[Request] = []

    def __call__(self, request: Request) -> str:
        self.requests.append(request)
        return "DUNNO"


def connect(factory: PolicyFactory) -> Tuple[PolicyProtocol, StringTransport]:
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def feed(protocol: PolicyProtocol, parts: List[bytes]) -> None:
    decoder = protocol.decoder
    for part in parts:
        protocol.dataReceived(part)  # must never raise
        assert len(decoder._buffer) <= decoder._max_request


def well_formed(request: Request) -> bool:
    return all(isinstance(k, str) and isinstance(v, str) for k, v in request.items()) and \
        len(request) <= ATTRS


@FUZZ
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=20))
def test_decoder_raises_only_protocol_errors_and_stays_bounded(data: bytes,
                                                               cuts: List[int]) -> None:
    decoder = RequestDecoder(LINE, ATTRS)
    for part in chunks(data, cuts):
        try:
            for request in decoder.feed(part):
                assert well_formed(request)
        except ProtocolError:
            break
        assert len(decoder._buffer) <= decoder._max_request


_name = st.text(st.characters(blacklist_characters="=\n\r", blacklist_categories=("Cs",)),
                min_size=1, max_size=12)
_value = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" "))
_good = st.lists(st.tuples(_name, _value), min_size=1, max_size=ATTRS).map(
    lambda pairs: b"".join(n.encode()[:20] + b"=" + v[:40] + b"\n" for n, v in pairs) + b"\n")
_garbage = st.sampled_from([
    b"no equals sign\n\n", b"\n", b"a=" + b"x" * (LINE + 5) + b"\n\n",
    b"".join(b"k%d=v\n" % i for i in range(ATTRS + 1)) + b"\n", b"\x00\x00\n\n",
])


@FUZZ
@given(st.lists(_good, max_size=6), st.one_of(st.none(), _garbage), st.lists(_good, max_size=3),
       st.lists(st.integers(min_value=0), max_size=15))
def test_replies_only_for_well_formed_requests(before: List[bytes], bad: bytes,
                                               after: List[bytes], cuts: List[int]) -> None:
    responder = Recorder()
    factory = PolicyFactory(responder, idle_timeout=None, max_line_length=LINE,
                            max_attributes=ATTRS)
    protocol, transport = connect(factory)
    stream = b"".join(before) + (bad or b"") + b"".join(after)
    feed(protocol, chunks(stream, cuts))
    replies = transport.value().count(b"action=DUNNO\n\n")
    if bad is None:
        assert replies == len(before) + len(after)
        assert not transport.disconnecting
    else:
        assert replies == len(before)  # nothing for the bad request or anything after it
        assert transport.disconnecting
    assert replies == len(responder.requests)
    assert all(well_formed(r) for r in responder.requests)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_half_request_then_disconnect(data: bytes) -> None:
    factory = PolicyFactory(Recorder(), idle_timeout=None, max_line_length=LINE,
                            max_attributes=ATTRS)
    protocol, transport = connect(factory)
    feed(protocol, [data.replace(b"\n\n", b"\n") + b"half=a request"])
    protocol.connectionLost(None)
    assert factory.connections == 0


def test_one_mebibyte_line_closes_without_reply_and_without_buffering_it() -> None:
    factory = PolicyFactory(Recorder(), idle_timeout=None)  # no timer left on the global reactor
    protocol, transport = connect(factory)
    feed(protocol, [b"request=smtpd_access_policy\nsender="] + [b"x" * 65536] * 16 + [b"\n\n"])
    assert transport.disconnecting and transport.value() == b""
    assert len(protocol.decoder._buffer) <= protocol.factory.max_line_length + 64 * 1024


def test_ten_thousand_attributes_close_without_reply() -> None:
    factory = PolicyFactory(Recorder(), idle_timeout=None)  # no timer left on the global reactor
    protocol, transport = connect(factory)
    block = b"".join(b"attr%d=value\n" % i for i in range(10_000)) + b"\n"
    feed(protocol, [block[i:i + 4096] for i in range(0, len(block), 4096)])
    assert transport.disconnecting and transport.value() == b""


def test_nul_and_non_utf8_values_are_answered() -> None:
    responder = Recorder()
    protocol, transport = connect(PolicyFactory(responder, idle_timeout=None))
    feed(protocol, [b"request=smtpd_access_policy\nsender=a\x00b@x\nrecipient=\xff\xfe@y\n\n"])
    assert transport.value() == b"action=DUNNO\n\n"
    assert responder.requests[0]["sender"] == "a\x00b@x"
    assert responder.requests[0]["recipient"] == "\ufffd\ufffd@y"


def test_a_broken_connection_does_not_disturb_the_others() -> None:
    responder = Recorder()
    factory = PolicyFactory(responder, idle_timeout=None)
    bad, bad_transport = connect(factory)
    good, good_transport = connect(factory)
    feed(bad, [b"garbage without equals\n\n"])
    feed(good, [b"request=smtpd_access_policy\nprotocol_state=RCPT\n\n"])
    assert bad_transport.disconnecting and not good_transport.disconnecting
    assert good_transport.value() == b"action=DUNNO\n\n"
    assert factory.connections == 2
