"""The Twisted adapter for the policy protocol: it frames, another object answers.

The protocol feeds bytes to the pure ``RequestDecoder`` and writes what the ``respond`` callable
returns. ``respond`` is synchronous on purpose: the decision never waits for I/O (probes and map
loads run in the background and update caches), so a Deferred per request would only add cost.
Replies go out through ``writethrough.writer_for``: sent at once when nothing is queued.
On a protocol error the connection is closed without a reply, as Postfix expects.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from backupmx.policyd.codec import ProtocolError, Request, RequestDecoder, encode_reply
from backupmx.policyd.writethrough import Write, writer_for

Responder = Callable[[Request], str]


class PolicyProtocol(Protocol, TimeoutMixin):
    """One Postfix smtpd process's connection: many requests, one reply each, in order."""

    log = Logger()

    def __init__(self, factory: "PolicyFactory") -> None:
        self.factory = factory
        self.decoder = RequestDecoder(factory.max_line_length, factory.max_attributes)
        self._broken = False
        self._write: Write  # set by connectionMade, before any data can arrive

    def connectionMade(self) -> None:
        self._write = writer_for(self.transport)
        self.factory.connections += 1
        self.setTimeout(self.factory.idle_timeout)

    def dataReceived(self, data: bytes) -> None:
        if self._broken:
            return
        self.resetTimeout()
        try:
            requests = self.decoder.feed(data)
        except ProtocolError as error:
            self._broken = True
            self.log.warn("policy protocol error from {peer}: {error}; closing without reply",
                          peer=self._peer(), error=str(error))
            self._answer(error.requests)  # those complete before the error, in the same read
            self.transport.loseConnection()
            return
        self._answer(requests)

    def _answer(self, requests: Sequence[Request]) -> None:
        respond = self.factory.respond
        if len(requests) == 1:
            self._write(encode_reply(respond(requests[0])))
        elif requests:
            self._write(b"".join(encode_reply(respond(r)) for r in requests))

    def timeoutConnection(self) -> None:
        self.log.debug("closing policy connection from {peer}: idle", peer=self._peer())
        self.transport.loseConnection()

    def connectionLost(self, reason: object = None) -> None:
        self.setTimeout(None)
        self.factory.connections -= 1
        if self.decoder.pending and not self._broken:
            self.log.info("policy client {peer} disconnected in the middle of a request",
                          peer=self._peer())

    def _peer(self) -> str:
        peer = self.transport.getPeer() if self.transport else None
        host = getattr(peer, "host", None)
        return f"{host}:{getattr(peer, 'port', '')}" if host else "unix socket"


class PolicyFactory(Factory):
    """Builds PolicyProtocols that share one responder and the connection limits."""

    noisy = False

    def __init__(
        self,
        respond: Responder,
        idle_timeout: Optional[float] = 600.0,
        max_line_length: int = 8192,
        max_attributes: int = 200,
    ) -> None:
        self.respond = respond
        self.idle_timeout = idle_timeout
        self.max_line_length = max_line_length
        self.max_attributes = max_attributes
        self.connections = 0

    @classmethod
    def from_settings(cls, respond: Responder, settings: Any) -> "PolicyFactory":
        """A factory with the limits of a ``PolicydConfig`` (idle_timeout, max_line_length,
        max_attributes)."""
        factory = cls(respond)
        factory.configure(settings)
        return factory

    def configure(self, settings: Any) -> None:
        """Take the limits of a ``PolicydConfig`` (after a reload): connections made from now
        on use them; open ones keep those they started with."""
        self.idle_timeout = settings.idle_timeout
        self.max_line_length = settings.max_line_length
        self.max_attributes = settings.max_attributes

    def buildProtocol(self, addr: object) -> PolicyProtocol:
        return PolicyProtocol(self)
