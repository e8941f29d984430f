"""The wire side of a recipient callout: frames SMTP replies, sends what the machine says.

All decisions are policyd.callout_session.CalloutMachine's; this protocol only joins the lines
of a multiline reply (RFC 5321 section 4.2.1: ``250-...`` continues, ``250 ...`` ends), writes
commands with CRLF, begins TLS when the machine asks (Twisted's ``startTLS``) and reports the end
of the connection. ``done`` fires with the machine when the connection is closed, whatever the
reason; it never fails.

TLS: opportunistic, as Postfix's ``smtp_tls_security_level = may``: the session is encrypted
when the primary offers STARTTLS, but its certificate is not verified (a callout asks a yes/no
question whose answer is only ever used to accept or defer; an attacker able to intercept the
connection could as well block it). Without pyOpenSSL callouts stay in clear text.
"""
from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet import defer
from twisted.protocols.basic import LineOnlyReceiver

from backupmx.policyd.callout_session import CalloutMachine, Step

#: most lines of one reply; a longer one ends the session
MAX_REPLY_LINES = 100


def tls_context() -> Optional[Any]:
    """A client TLS context without certificate verification, or None without pyOpenSSL."""
    try:
        from twisted.internet.ssl import CertificateOptions
        return CertificateOptions(verify=False)
    except ImportError:
        return None


class CalloutProtocol(LineOnlyReceiver):
    """See the module docstring."""

    delimiter = b"\n"
    MAX_LENGTH = 4096

    def __init__(self, machine: CalloutMachine, tls: Optional[Any] = None) -> None:
        self.machine = machine
        self.tls = tls
        self.done: defer.Deferred = defer.Deferred()
        self._lines: List[str] = []
        self._why = "connection closed by the primary"
        #: the connection attempt under way (the engine cancels it when time is up)
        self.attempt: Optional[defer.Deferred] = None

    def lineReceived(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        code = text[:3]
        if not code.isdigit() or len(text) > 3 and text[3] not in " -":
            self._abort(f"not an SMTP reply: {text[:80]!r}")
            return
        self._lines.append(text[4:])
        if len(self._lines) > MAX_REPLY_LINES:
            self._abort("reply of too many lines")
            return
        if text[3:4] == "-":
            return
        lines, self._lines = self._lines, []
        self.act(self.machine.reply(int(code), lines))

    def act(self, step: Step) -> None:
        if step.starttls:
            if self.tls is None:  # the machine only asks when told TLS is possible
                self._abort("STARTTLS without a TLS context")
                return
            self.transport.startTLS(self.tls)
            step = self.machine.tls_started()
        if step.command is not None:
            self.transport.write(step.command.encode("utf-8") + b"\r\n")
        if step.close:
            self._why = "closed"
            self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._abort("reply line too long")

    def _abort(self, why: str) -> None:
        self._why = why
        self.transport.abortConnection()

    def timed_out(self) -> None:
        """The session's time is up: drop the connection (open addresses are temporary)."""
        self._abort("timed out")

    def connectionLost(self, reason: Any = None) -> None:
        if not self.machine.done:
            self.machine.connection_lost(self._why)
        if not self.done.called:
            self.done.callback(self.machine)
