"""The pure policy wire codec: the stream table at every read size, and the reply encoding."""
from __future__ import annotations

from typing import Dict, List

import pytest

from backupmx.policyd.codec import ProtocolError, RequestDecoder, encode_reply
from tests.unit.policy_streams import READ_SIZES, ROWS, Row, chunks, small


def replay(row: Row, size: int) -> "tuple[List[Dict[str, str]], bool, RequestDecoder]":
    """Feed the stream in reads of `size` bytes until it ends or breaks."""
    decoder = RequestDecoder(row.max_line_length, row.max_attributes)
    requests: List[Dict[str, str]] = []
    for data in chunks(row.stream, size):
        try:
            requests.extend(decoder.feed(data))
        except ProtocolError as error:
            requests.extend(getattr(error, "requests", []))
            return requests, True, decoder
    return requests, False, decoder


@pytest.mark.parametrize("size", READ_SIZES)
@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_stream_table(row: Row, size: int) -> None:
    requests, broken, _ = replay(row, size)
    assert requests == list(row.requests)
    assert broken is row.broken


def test_pending_tracks_partial_requests() -> None:
    decoder = RequestDecoder()
    assert not decoder.pending
    assert decoder.feed(b"request=smtpd_access_policy\n") == []
    assert decoder.pending
    assert decoder.feed(b"\n") == [{"request": "smtpd_access_policy"}]
    assert not decoder.pending


def test_empty_read_yields_nothing() -> None:
    decoder = RequestDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(small(1)) == [{"request": "smtpd_access_policy", "n": "1"}]


def test_protocol_error_says_why() -> None:
    with pytest.raises(ProtocolError, match="without '='"):
        RequestDecoder().feed(b"nonsense\n\n")
    with pytest.raises(ProtocolError, match="line longer than 10 bytes"):
        RequestDecoder(max_line_length=10).feed(b"a=" + b"b" * 20)
    with pytest.raises(ProtocolError, match="more than 2 attributes"):
        RequestDecoder(max_attributes=2).feed(b"a=1\nb=2\nc=3\n\n")
    with pytest.raises(ProtocolError, match="empty request"):
        RequestDecoder().feed(b"\n")


def test_many_requests_keep_their_order() -> None:
    decoder = RequestDecoder()
    stream = b"".join(small(i) for i in range(1000))
    got = [r["n"] for data in chunks(stream, 333) for r in decoder.feed(data)]
    assert got == [str(i) for i in range(1000)]


@pytest.mark.parametrize("action,wire", [
    ("DUNNO", b"action=DUNNO\n\n"),
    ("550 5.1.1 User unknown in relay recipient table",
     b"action=550 5.1.1 User unknown in relay recipient table\n\n"),
    ("DEFER_IF_PERMIT 4.7.1 Primary MX h\u00e9 is up",
     b"action=DEFER_IF_PERMIT 4.7.1 Primary MX h\xc3\xa9 is up\n\n"),
])
def test_encode_reply(action: str, wire: bytes) -> None:
    assert encode_reply(action) == wire
