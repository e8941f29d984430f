"""A fake primary MX: an aiosmtpd server on loopback that tests start and stop at will."""
from __future__ import annotations

import threading
from typing import List, Optional, Tuple

from aiosmtpd.controller import Controller

Message = Tuple[str, List[str], bytes]


class _Collector:
    def __init__(self, primary: "FakePrimary") -> None:
        self.primary = primary

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001 (aiosmtpd API)
        self.primary.received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
        return "250 2.0.0 Ok: delivered to the fake primary"


class FakePrimary:
    """Accepts every message for any recipient; remembers what it received across restarts."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.messages: List[Message] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._controller: Optional[Controller] = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def received(self, mail_from: str, rcpt_tos: List[str], content: bytes) -> None:
        with self._arrived:
            self.messages.append((mail_from, rcpt_tos, content))
            self._arrived.notify_all()

    def wait_for(self, count: int, timeout: float = 30.0) -> bool:
        """Wait until at least count messages arrived; False on timeout."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self.messages) >= count, timeout)

    def start(self) -> None:
        if self._controller is None:
            controller = Controller(_Collector(self), hostname=self.host, port=self.port,
                                    ready_timeout=10)
            controller.start()
            self._controller = controller

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
