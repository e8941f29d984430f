"""common.policy_client against policyd's own codec and a real socket pair."""
from __future__ import annotations

import socket

import pytest

from backupmx.common.policy_client import (
    PolicyReplyError,
    decode_reply,
    encode_request,
    read_reply,
    split_replies,
)
from backupmx.policyd.codec import RequestDecoder, encode_reply


def test_a_request_encoded_by_the_client_is_decoded_by_policyd() -> None:
    attributes = {"request": "smtpd_access_policy", "protocol_state": "RCPT",
                  "recipient": "odd user@example.test", "sender": ""}
    decoder = RequestDecoder()
    requests = decoder.feed(encode_request(attributes))
    assert [dict(r) for r in requests] == [attributes]


@pytest.mark.parametrize("size", [4096, 128, 16, 1])
def test_replies_split_at_any_read_size(size: int) -> None:
    stream = encode_reply("DUNNO") + encode_reply("550 5.1.1 User unknown") + b"action=OK"
    actions, rest = [], b""
    for start in range(0, len(stream), size):
        found, rest = split_replies(rest + stream[start:start + size])
        actions += found
    assert actions == ["DUNNO", "550 5.1.1 User unknown"]
    assert rest == b"action=OK"


def test_read_reply_from_a_socket_and_errors() -> None:
    left, right = socket.socketpair()
    with left, right:
        right.sendall(b"action=DEFER_IF_PERMIT 4.7.1 try later\n\n")
        assert read_reply(left) == "DEFER_IF_PERMIT 4.7.1 try later"
        right.sendall(b"action=DU")
        right.close()
        with pytest.raises(PolicyReplyError):
            read_reply(left)
    with pytest.raises(PolicyReplyError):
        decode_reply(b"nothing=here\n")
