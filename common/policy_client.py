"""The client side of Postfix's policy delegation protocol (SMTPD_POLICY_README).

A request is ``name=value`` lines ending with an empty line; the reply is ``action=...`` and an
empty line. Used by ``backupmx query`` and by the tests and benchmarks that play Postfix. No
Twisted: a plain blocking socket.
"""
from __future__ import annotations

import socket
from typing import Iterable, List, Mapping, Tuple, Union

from backupmx.common.listen import ListenAddress

END = b"\n\n"


class PolicyReplyError(ValueError):
    """The server's bytes are not a policy reply (no ``action=`` line) or the connection ended
    before one arrived."""


def encode_request(attributes: Union[Mapping[str, str], Iterable[Tuple[str, str]]]) -> bytes:
    """``{"request": "smtpd_access_policy", ...}`` -> ``b"request=smtpd_access_policy\\n\\n"``.

    Attribute names and values are sent as given (UTF-8); a value must not contain a newline.
    """
    pairs = attributes.items() if isinstance(attributes, Mapping) else attributes
    return "".join(f"{name}={value}\n" for name, value in pairs).encode() + b"\n"


def split_replies(data: bytes) -> Tuple[List[str], bytes]:
    """Complete replies in ``data`` as their action texts, and the incomplete rest.

    Raises PolicyReplyError for a reply without an ``action=`` attribute.
    """
    actions: List[str] = []
    while True:
        end = data.find(END)
        if end < 0:
            return actions, data
        reply, data = data[:end + 1], data[end + 2:]
        actions.append(decode_reply(reply))


def decode_reply(reply: bytes) -> str:
    """The action text of one reply (``action=DUNNO\\n`` -> ``DUNNO``)."""
    for line in reply.decode("utf-8", "replace").splitlines():
        name, sep, value = line.partition("=")
        if sep and name == "action":
            return value
    raise PolicyReplyError(f"not a policy reply: {reply[:200]!r}")


def read_reply(sock: socket.socket) -> str:
    """Read one reply from a connected socket; its action text. PolicyReplyError if the server
    closes first; OSError (socket.timeout) from the socket."""
    data = b""
    while END not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise PolicyReplyError("the policy server closed the connection without a reply")
        data += chunk
    return split_replies(data)[0][0]


def ask(address: ListenAddress, attributes: Mapping[str, str], timeout: float = 10.0) -> str:
    """Send one request to a policy server on a fresh connection; the action of its reply.

    ``timeout`` is seconds for connecting and for the reply. Raises OSError when the server
    cannot be reached or is too slow, PolicyReplyError for an unusable reply.
    """
    if address.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address.path)
        except OSError:
            sock.close()
            raise
    else:
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
    with sock:
        sock.sendall(encode_request(attributes))
        return read_reply(sock)
