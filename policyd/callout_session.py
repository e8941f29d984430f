"""One recipient callout session as a pure state machine: SMTP replies in, commands out.

The dialogue (RFC 5321; what Postfix's verify(8) probes and Exim's callouts say): wait for the
``220`` greeting, ``EHLO`` (``HELO`` when EHLO is refused), ``STARTTLS`` when the server offers
it and the caller can (RFC 3207: then ``EHLO`` again), ``MAIL FROM:<>``, one ``RCPT TO:<...>``
per address, then ``RSET`` and ``QUIT``; never ``DATA``. Each RCPT reply decides its address:
2xx valid; 550, 551 and 553 (RFC 5321 section 4.2.2: mailbox unavailable, not local, name not
allowed) invalid; anything else temporary: 4xx (greylisting, a full mailbox, a busy server),
and the 5xx replies that say nothing about the mailbox (500-504 syntax or sequence, 521, 554
policy, 555), and 552, which RFC 5321 section 4.5.3.1.10 makes "too many recipients". After
``max_unknown`` invalid replies the session ends (Postfix primaries slow a client after 10
errors); the addresses not asked yet are left in ``unasked`` for another session. Any failure
before RCPT (a non-220 greeting, MAIL FROM refused, 421, the connection lost or timed out)
leaves every open address temporary: only a definite answer to RCPT ever says "invalid".

``CalloutMachine`` does no I/O: the Twisted protocol (policyd.callout_protocol) feeds it whole
replies and sends what it returns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from backupmx.common.callout_rules import INVALID, TEMPORARY, rcpt_verdict
from backupmx.common.recipient_map import quote_local


def smtp_path(address: str) -> str:
    """The address as RFC 5321 writes it in a path, from Postfix's internal form: the local
    part quoted when it is no dot-string (``odd user@example.test`` ->
    ``"odd user"@example.test``), as Postfix's quote_822_local (common.recipient_map)."""
    local, _, domain = address.rpartition("@")
    return f"{quote_local(local)}@{domain}"


GREETING, EHLO, HELO, STARTTLS, MAIL, RCPT, RSET, QUIT, DONE = (
    "greeting", "ehlo", "helo", "starttls", "mail", "rcpt", "rset", "quit", "done")


@dataclass(frozen=True)
class Step:
    """What to do after a reply: send ``command`` (a line without CRLF) when not None; begin
    TLS first when ``starttls`` (the STARTTLS command was accepted); close when ``close``."""

    command: Optional[str] = None
    starttls: bool = False
    close: bool = False


@dataclass
class Outcome:
    """One address's result: ``status`` valid / invalid / temporary and the reply (one line)."""

    status: str
    reply: str


@dataclass
class CalloutMachine:
    """See the module docstring. ``addresses``: the addresses to verify, in order (already
    lower-case, without angle brackets); ``tls``: the caller can begin TLS."""

    helo_name: str
    addresses: Sequence[str]
    max_unknown: int = 5
    tls: bool = False
    state: str = GREETING
    results: Dict[str, Outcome] = field(default_factory=dict)
    tls_active: bool = False
    #: addresses not asked because the session ended after max_unknown refusals
    unasked: List[str] = field(default_factory=list)
    unknown: int = 0
    _next: int = 0
    _offered_tls: bool = False

    # ---- inputs ------------------------------------------------------------------------------

    def reply(self, code: int, lines: List[str]) -> Step:
        """A whole reply (``code``, its text lines without the code) to what was sent last."""
        text = f"{code} {lines[-1] if lines else ''}".strip()
        state = self.state
        if code == 421:
            return self._give_up(text, polite=False)
        if state == GREETING:
            if code != 220:
                return self._give_up(text)
            return self._send(EHLO, f"EHLO {self.helo_name}")
        if state == EHLO:
            if code // 100 != 2:
                return self._send(HELO, f"HELO {self.helo_name}")
            offered = any(line.upper().split()[:1] == ["STARTTLS"] for line in lines[1:])
            if offered and self.tls and not self.tls_active:
                self._offered_tls = True
                return self._send(STARTTLS, "STARTTLS")
            return self._send(MAIL, "MAIL FROM:<>")
        if state == HELO:
            if code // 100 != 2:
                return self._give_up(text)
            return self._send(MAIL, "MAIL FROM:<>")
        if state == STARTTLS:
            if code == 220:
                self.state = EHLO
                return Step(starttls=True)
            return self._send(MAIL, "MAIL FROM:<>")  # refused: go on in clear text
        if state == MAIL:
            if code // 100 != 2:
                return self._give_up(text)
            return self._ask_next()
        if state == RCPT:
            address = self.addresses[self._next - 1]
            verdict = rcpt_verdict(code, lines[-1] if lines else "")
            self.results[address] = Outcome(verdict, text)
            if verdict == INVALID:
                self.unknown += 1
            if self.unknown >= self.max_unknown:
                self.unasked = list(self.addresses[self._next:])
                return self._send(RSET, "RSET")
            return self._ask_next()
        if state == RSET:
            return self._send(QUIT, "QUIT")
        if state == QUIT:
            self.state = DONE
            return Step(close=True)
        return Step(close=True)

    def tls_started(self) -> Step:
        """TLS is up after STARTTLS: say EHLO again (RFC 3207 section 4.2)."""
        self.tls_active = True
        return self._send(EHLO, f"EHLO {self.helo_name}")

    def tls_failed(self, why: str) -> Step:
        """The TLS handshake failed: the connection is unusable; every open address is
        temporary."""
        return self._give_up(f"TLS handshake failed: {why}", polite=False)

    def connection_lost(self, why: str) -> None:
        """The connection ended (or timed out): every open address is temporary."""
        self._mark_open(why)
        self.state = DONE

    # ---- helpers -----------------------------------------------------------------------------

    def _send(self, state: str, command: str) -> Step:
        self.state = state
        return Step(command=command)

    def _ask_next(self) -> Step:
        if self._next >= len(self.addresses):
            return self._send(RSET, "RSET")
        address = self.addresses[self._next]
        self._next += 1
        return self._send(RCPT, f"RCPT TO:<{smtp_path(address)}>")

    def _give_up(self, why: str, polite: bool = True) -> Step:
        self._mark_open(why)
        if polite:
            return self._send(QUIT, "QUIT")
        self.state = DONE
        return Step(close=True)

    def _mark_open(self, why: str) -> None:
        for address in self.addresses:
            if address not in self.results and address not in self.unasked:
                self.results[address] = Outcome(TEMPORARY, why)

    @property
    def done(self) -> bool:
        return self.state == DONE
