"""The pure policy wire codec: the stream table at every read size, and the reply encoding."""
from __future__ import annotations

from typing import Dict, List

import pytest

from backupmx.policyd.codec import ProtocolError, RequestDecoder, encode_reply
from tests.harness.policy_streams import READ_SIZES, ROWS, Row, chunks, small


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


# ---- properties: the split of the stream never changes the outcome ---------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st

_names = st.text(st.characters(blacklist_characters="=\n\r", blacklist_categories=("Cs",)),
                 min_size=1, max_size=12)
_values = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)),
                  max_size=30)
_requests = st.lists(st.dictionaries(_names, _values, min_size=1, max_size=6), max_size=6)


def _decode_in_pieces(stream: bytes, cuts: "list[int]", max_line: int = 8192,
                      max_attributes: int = 200) -> "tuple[list, bool]":
    decoder = RequestDecoder(max_line, max_attributes)
    got: "list[dict]" = []
    edges = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    for start, end in zip(edges, edges[1:]):
        try:
            got.extend(decoder.feed(stream[start:end]))
        except ProtocolError as error:
            return got + list(error.requests), True
    return got, False


@settings(max_examples=300, deadline=None)
@given(_requests, st.lists(st.integers(min_value=0), max_size=8))
def test_any_split_of_valid_requests_decodes_them_all(requests: "list[dict]",
                                                      cuts: "list[int]") -> None:
    stream = b"".join(
        b"".join(f"{k}={v}\n".encode() for k, v in r.items()) + b"\n" for r in requests)
    assert _decode_in_pieces(stream, cuts) == (requests, False)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"ab", b"=", b"\n", b"\n", b"\r", b"\xc3\xa9", b"\xff", b"x"]),
                max_size=80).map(b"".join)
       | st.binary(max_size=120).map(lambda b: b.replace(b"\x00", b"\n")),
       st.lists(st.integers(min_value=0), max_size=8))
def test_any_split_of_any_bytes_gives_the_same_outcome(stream: bytes, cuts: "list[int]") -> None:
    whole = _decode_in_pieces(stream, [], max_line=16, max_attributes=3)
    assert _decode_in_pieces(stream, cuts, max_line=16, max_attributes=3) == whole
