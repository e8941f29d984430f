"""A fake primary MX: an aiosmtpd server on loopback that tests start and stop at will.

By default it accepts every recipient (an accept-all primary). Given ``users`` (addresses, any
case) it refuses the others at RCPT with ``550 5.1.1``; with ``greylist`` the first RCPT of each
address gets ``450 4.7.1`` and later ones the normal answer; with ``hang`` it greets and then
never answers anything; with ``tls_context`` set it offers STARTTLS. Every RCPT it is asked
is remembered in ``rcpts`` (sender, address, reply code; ``encrypted`` says which were inside
TLS): a recipient callout is a RCPT with the null sender that is never followed by DATA.
"""
from __future__ import annotations

import asyncio
import ssl
import threading
from typing import Iterable, List, Optional, Set, Tuple

from aiosmtpd.controller import Controller

Message = Tuple[str, List[str], bytes]
Rcpt = Tuple[str, str, int]


class _Collector:
    def __init__(self, primary: "FakePrimary") -> None:
        self.primary = primary

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: ANN001
        if self.primary.hang:
            await asyncio.sleep(3600)
        session.host_name = hostname
        return responses

    async def handle_HELO(self, server, session, envelope, hostname):  # noqa: ANN001
        if self.primary.hang:
            await asyncio.sleep(3600)
        session.host_name = hostname
        return "250 {}".format(server.hostname)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: ANN001
        reply = self.primary.rcpt_reply(address)
        self.primary.asked(envelope.mail_from or "", address, int(reply[:3]),
                           session.ssl is not None)
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001 (aiosmtpd API)
        self.primary.received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
        return "250 2.0.0 Ok: delivered to the fake primary"


class FakePrimary:
    """Remembers what it received and was asked across restarts (see the module docstring)."""

    def __init__(self, port: int, host: str = "127.0.0.1",
                 users: Optional[Iterable[str]] = None) -> None:
        self.host = host
        self.port = port
        self.messages: List[Message] = []
        self.rcpts: List[Rcpt] = []
        #: per entry of rcpts: whether it was asked inside TLS (STARTTLS)
        self.encrypted: List[bool] = []
        #: an ssl.SSLContext: offer STARTTLS with it (set before start())
        self.tls_context: Optional[ssl.SSLContext] = None
        self.users: Optional[Set[str]] = None if users is None else {u.lower() for u in users}
        self.greylist = False
        self.hang = False
        self._greylisted: Set[str] = set()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._controller: Optional[Controller] = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def rcpt_reply(self, address: str) -> str:
        with self._lock:
            if self.greylist and address.lower() not in self._greylisted:
                self._greylisted.add(address.lower())
                return "450 4.7.1 <{}>: Recipient address rejected: greylisted".format(address)
        if self.users is not None and address.lower() not in self.users:
            return "550 5.1.1 <{}>: Recipient address rejected: User unknown".format(address)
        return "250 2.1.5 Ok"

    def asked(self, sender: str, address: str, code: int, encrypted: bool = False) -> None:
        with self._arrived:
            self.rcpts.append((sender, address, code))
            self.encrypted.append(encrypted)
            self._arrived.notify_all()

    def callouts(self) -> List[Rcpt]:
        """The RCPTs asked with the null sender (what a callout asks)."""
        with self._lock:
            return [r for r in self.rcpts if r[0] in ("", "<>")]

    def received(self, mail_from: str, rcpt_tos: List[str], content: bytes) -> None:
        with self._arrived:
            self.messages.append((mail_from, rcpt_tos, content))
            self._arrived.notify_all()

    def wait_for(self, count: int, timeout: float = 30.0) -> bool:
        """Wait until at least count messages arrived; False on timeout."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self.messages) >= count, timeout)

    def wait_for_callouts(self, count: int, timeout: float = 30.0) -> bool:
        """Wait until at least count null-sender RCPTs were asked; False on timeout."""
        with self._arrived:
            return self._arrived.wait_for(
                lambda: sum(1 for r in self.rcpts if r[0] in ("", "<>")) >= count, timeout)

    def start(self) -> None:
        if self._controller is None:
            controller = Controller(_Collector(self), hostname=self.host, port=self.port,
                                    ready_timeout=10, tls_context=self.tls_context)
            controller.start()
            self._controller = controller

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
