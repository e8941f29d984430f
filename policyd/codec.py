"""The Postfix policy delegation wire format, as a pure incremental codec (no I/O, no Twisted).

A request is ``name=value`` lines, each ending in a bare LF, closed by an empty line; the reply is
``action=...`` and an empty line. Bytes arrive in any split; ``RequestDecoder.feed`` returns every
complete request and keeps the rest. Whole requests are cut out with one ``find`` and decoded
in one go rather than line by line, which keeps the per-request cost low.
"""
from __future__ import annotations

from itertools import repeat
from typing import Dict, List, Sequence

Request = Dict[str, str]

_END = b"\n\n"


class ProtocolError(ValueError):
    """The peer broke the protocol; the connection must be closed without a reply.

    ``requests`` holds the complete requests that came before the error in the same read: they
    are answered before closing, so the outcome does not depend on how the bytes were split.
    """

    requests: Sequence["Request"] = ()


class RequestDecoder:
    """Splits a byte stream into policy requests, enforcing line and attribute limits."""

    def __init__(self, max_line_length: int = 8192, max_attributes: int = 200) -> None:
        self.max_line_length = max_line_length
        self.max_attributes = max_attributes
        # the longest unfinished request that can still be valid: every line full, its LF, the
        # CR of a CRLF blank line
        self._max_request = (max_line_length + 1) * max_attributes + 1
        self._buffer = b""
        self._checked = 0  # complete lines before this offset of _buffer are within the limit

    @property
    def pending(self) -> bool:
        """True when part of a request has been received but not its end."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> List[Request]:
        """Add received bytes; return the requests they complete. Raises ProtocolError."""
        buffer = self._buffer + data if self._buffer else data
        requests: List[Request] = []
        start = 0
        crlf = b"\r" in buffer  # tolerate CRLF line ends: rare, so only then look for them
        try:
            while True:
                if buffer.startswith(b"\n", start) or crlf and buffer.startswith(b"\r\n", start):
                    raise ProtocolError("empty request (a blank line with no attributes)")
                end = buffer.find(_END, start)
                skip = 2
                if crlf:
                    crlf_end = buffer.find(b"\n\r\n", start)
                    if crlf_end >= 0 and (end < 0 or crlf_end < end):
                        end, skip = crlf_end, 3
                if end < 0:
                    break
                requests.append(self._decode(buffer[start:end]))
                start = end + skip
            self._buffer = buffer[start:]
            self._checked = max(0, self._checked - start)
            self._check_partial()
        except ProtocolError as error:
            error.requests = requests
            raise
        return requests

    def _check_partial(self) -> None:
        """Limits on an unfinished request: its size, its last line, and every line completed
        since the last check (each line is looked at once, so a slow sender costs no more)."""
        rest = self._buffer
        if not rest:
            self._checked = 0
            return
        if len(rest) > self._max_request:
            raise ProtocolError(f"request longer than {self._max_request} bytes")
        last_start = rest.rfind(b"\n") + 1
        if last_start - self._checked > self.max_line_length and any(
            len(line) > self.max_line_length
            for line in rest[self._checked:last_start - 1].split(b"\n")
        ):
            raise ProtocolError(f"line longer than {self.max_line_length} bytes")
        self._checked = last_start
        if len(rest) - last_start > self.max_line_length:
            raise ProtocolError(f"line longer than {self.max_line_length} bytes")

    def _decode(self, block: bytes) -> Request:
        text = block.decode("utf-8", "replace")
        if "\r" in text:
            text = text.replace("\r\n", "\n")
            if text.endswith("\r"):
                text = text[:-1]
        lines = text.split("\n")
        if len(lines) > self.max_attributes:
            raise ProtocolError(f"more than {self.max_attributes} attributes in one request")
        try:
            # str.split(line, "=", 1) mapped in C: no generator frame per attribute line
            request = dict(map(str.split, lines, repeat("="), repeat(1)))
        except ValueError:
            bad = next(line for line in lines if "=" not in line)
            raise ProtocolError(f"attribute line without '=': {bad[:80]!r}") from None
        if len(block) > self.max_line_length and any(  # in bytes, as _check_partial counts
            len(line) > self.max_line_length for line in block.split(b"\n")
        ):
            raise ProtocolError(f"line longer than {self.max_line_length} bytes")
        return request


def encode_reply(action: str) -> bytes:
    """The reply for one request: ``action=...`` then the empty line."""
    return b"action=" + action.encode("utf-8", "replace") + _END
