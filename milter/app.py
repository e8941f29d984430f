"""The pymilter layer: collect a message's envelope, record it at end-of-message.

Thin on purpose: callbacks feed ``envelope.Envelope``, ``eom`` asks ``envelope.build_record`` and
hands the result to the ledger. Every callback is ``@noreply`` where the protocol allows (Postfix
does not wait for us before the end of message). The message content is never asked for: the
milter negotiates SMFIP_NOHDRS, SMFIP_NOEOH and SMFIP_NOBODY (Postfix then sends no header and
no body chunk at all), and the size comes from MAIL FROM's ``SIZE=`` or, exactly, from the queue
at the next reconciliation. Callbacks we do not override (data, unknown) are not negotiated
either, no modification action is requested, and every answer is CONTINUE: the milter never
changes, delays or rejects mail.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Collection, FrozenSet, Optional

import Milter

from backupmx.milter.envelope import (
    Envelope,
    bare_address,
    build_record,
    clean_text,
    declared_size,
)

#: the content steps this milter never asks for (it overrides none of header, eoh, body)
NO_CONTENT = Milter.P_NOHDRS | Milter.P_NOEOH | Milter.P_NOBODY

log = logging.getLogger("backupmx.milter")


@dataclass
class MilterSettings:
    """What every connection's milter shares: the ledger (``record(MessageRecord)``), the
    relay domains (lower-case) and the clock (Unix seconds).

    ``domains`` is replaced whole (one assignment) when the configuration file changes
    (config_watch.ConfigWatcher); each message reads it once, at end of message.
    """

    ledger: Any
    domains: FrozenSet[str]
    clock: Callable[[], float] = time.time


class MilterFactory:
    """What ``Milter.factory`` must be: a callable making one LedgerMilter per connection,
    all sharing ``settings``."""

    def __init__(self, settings: MilterSettings) -> None:
        self.settings = settings

    def __call__(self) -> "LedgerMilter":
        return LedgerMilter(self.settings)


def milter_factory(ledger: Any, domains: Collection[str],
                   clock: Callable[[], float] = time.time) -> MilterFactory:
    """The factory for a ledger and relay domains (any case)."""
    return MilterFactory(MilterSettings(ledger, frozenset(d.lower() for d in domains), clock))


class LedgerMilter(Milter.Base):
    """One instance per SMTP connection (libmilter calls it from that connection's thread)."""

    def __init__(self, settings: MilterSettings) -> None:
        self.settings = settings
        self.client_addr = ""
        self.client_name = ""
        self.helo = ""
        self.envelope: Optional[Envelope] = None
        self.connected = False

    def negotiate(self, opts: list) -> int:
        """Standard negotiation of callbacks: pymilter sets the SMFIP_NO* bit of every callback
        not overridden here, so the content (NO_CONTENT) is never sent; and no modification
        actions at all."""
        result = super().negotiate(opts)
        opts[0] = self._actions = 0
        return result

    @Milter.noreply
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        # hostaddr is (ip, port[, flow, scope]) for TCP clients, a path for unix ones.
        address = hostaddr[0] if isinstance(hostaddr, tuple) and hostaddr else hostaddr
        self.client_addr = clean_text(address or "")
        self.client_name = clean_text(hostname or "")
        self.connected = True
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, hostname: str) -> int:
        self.helo = clean_text(hostname or "")
        return Milter.CONTINUE

    @Milter.noreply
    def envfrom(self, sender: str, *params: str) -> int:
        self.envelope = Envelope(sender=bare_address(sender), size=declared_size(params))
        return Milter.CONTINUE

    @Milter.noreply
    def envrcpt(self, recipient: str, *params: str) -> int:
        if self.envelope is not None:
            self.envelope.recipients.append(bare_address(recipient))
        return Milter.CONTINUE

    def eom(self) -> int:
        """Record before answering: once Postfix has our CONTINUE it may tell the client 250."""
        envelope, self.envelope = self.envelope, None
        if envelope is None:
            return Milter.CONTINUE
        queue_id: Optional[str] = None
        try:
            queue_id = self._queue_id()
            self._record(queue_id, envelope)
        except Exception as error:  # accounting must never stop mail: log it, go on
            log.error("queue id %s: cannot record the message (%s: %s); backupmx status and "
                      "flush adopt it from Postfix's queue", queue_id or "unknown",
                      type(error).__name__, error)
            log.debug("traceback of the failed record", exc_info=True)
        return Milter.CONTINUE

    def _queue_id(self) -> Optional[str]:
        value = self.getsymval("{i}")
        return clean_text(value) if value else None

    def _record(self, queue_id: Optional[str], envelope: Envelope) -> None:
        settings = self.settings
        record = build_record(queue_id, envelope, settings.domains, settings.clock(),
                              self.client_addr,
                              self.client_name, self.helo)
        if record is None:
            return
        if not queue_id:
            log.error("no queue id ({i} macro) at end of message from %s for %s: recorded "
                      "without one; check milter_end_of_data_macros", self.client_addr,
                      ", ".join(r for rcpts in record.recipients.values() for r in rcpts))
        settings.ledger.record(record)

    def abort(self) -> int:
        """The client gave up on this message (RSET, QUIT or a lost connection)."""
        self.envelope = None
        return Milter.CONTINUE

    def close(self) -> int:
        """End of the milter session. Without a connect event before it, libmilter has dropped
        the session (it does so when Postfix does not know the client's address, as after
        ``XCLIENT ADDR=[UNAVAILABLE]``): Postfix goes on with ``default_action`` and accepts the
        session's mail unseen. Say so, once per session (no queue id exists yet)."""
        if not self.connected:
            log.error("queue id unknown: a milter session ended before its connect event "
                      "(libmilter drops the session when Postfix does not know the client "
                      "address, e.g. XCLIENT ADDR=[UNAVAILABLE]); mail of that SMTP session is "
                      "not recorded by the milter: backupmx status and flush adopt it from "
                      "Postfix's queue")
        return Milter.CONTINUE

