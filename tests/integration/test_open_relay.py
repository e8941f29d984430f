"""Open-relay attempts through the real Postfix + policyd pair: every one refused, none queued.

Run twice: with the normal recipient map, and with a catch-all ``@example.test`` (then only the
policy's routing rule and Postfix's own relay rules stand in the way).
"""
from __future__ import annotations

import smtplib
from typing import Tuple

import pytest

from tests.harness.lab import BackupMxLab, eventually

ATTEMPTS = [
    "user@other.test",
    "user%other.test@example.test",
    "user@other.test@example.test",
    '"user@other.test"@example.test',
    "@example.test:user@other.test",
    "other.test!user@example.test",
    '"user%other.test"@example.test',
    '"other.test!user"@example.test',
    "user@[IPv6:::1]",
    "user@[IPv6:::1]@example.test",
    "user%[IPv6:::1]@example.test",
    '"user@[IPv6:::1]"@example.test',
    "[IPv6:::1]!user@example.test",
    "user@[IPv6:2001:db8::25]",
    "user%[IPv6:2001:db8::25]@example.test",
    "user@[192.0.2.25]",  # a foreign address literal (this host's own would be local mail)
    "user%[192.0.2.25]@example.test",
]


def attempt(lab: BackupMxLab, recipient: str) -> Tuple[int, str]:
    """RCPT TO, then DATA if it was accepted (so an accepted relay would really queue)."""
    try:
        with lab.smtp() as client:
            client.mail("spammer@sender.test")
            code, text = client.rcpt(f"<{recipient}>" if not recipient.startswith("<") else
                                     recipient)
            if code == 250:
                client.data(b"Subject: relay test\r\n\r\nrelay?\r\n")
            return code, text.decode(errors="replace")
    except smtplib.SMTPException as error:
        return 0, str(error)


def queued_for_others(lab: BackupMxLab) -> list:
    return [r["address"] for message in lab.postfix.queue() for r in message["recipients"]
            if not r["address"].lower().endswith("@example.test")
            or r["address"].count("@") > 1 or any(c in r["address"] for c in '%!"[')]


@pytest.mark.parametrize("catch_all", [False, True], ids=["recipient map", "catch-all map"])
def test_relay_attempts_are_refused(lab: BackupMxLab, catch_all: bool) -> None:
    if catch_all:
        lab.recipients_path.write_text("@example.test OK\n")
        assert eventually(lambda: lab.rcpt("anyone-at-all@example.test")[0],
                          lambda code: code == 250) == 250
    else:
        assert lab.rcpt("alice@example.test")[0] == 250  # the MX does work
    accepted = {}
    for recipient in ATTEMPTS:
        code, text = attempt(lab, recipient)
        if code == 250:
            accepted[recipient] = text
        else:
            assert 400 <= code < 600 or code == 0, (recipient, code, text)
    assert accepted == {}
    assert queued_for_others(lab) == []


ROUTED = [
    "user%other.test@example.test",
    "other.test!user@example.test",
    '"user@other.test"@example.test',
    "user@other.test@example.test",
]
# Postfix told to take such addresses literally and to let them past its own relay guard.
LOWERED_GUARD = {"allow_untrusted_routing": "yes", "swap_bangpath": "no",
                 "allow_percent_hack": "no", "resolve_dequoted_address": "no"}


def test_policy_refuses_routing_even_when_postfix_allows_untrusted_routing(
        lab: BackupMxLab) -> None:
    """With Postfix's own guard lowered and a catch-all map, policyd's routing rule stands."""
    lab.recipients_path.write_text("@example.test OK\n")
    assert eventually(lambda: lab.rcpt("anyone-at-all@example.test")[0],
                      lambda code: code == 250) == 250
    lab.postfix.extra_main_cf.update(LOWERED_GUARD)
    lab.postfix.reload()
    try:
        # smtpd processes started before the reload finish their turn with the old settings
        eventually(lambda: attempt(lab, ROUTED[0])[0], lambda code: code == 550)
        for recipient in ROUTED:
            code, text = attempt(lab, recipient)
            assert code == 550 and "5.7.1" in text and "not relayed" in text, (recipient, text)
        assert queued_for_others(lab) == []
    finally:
        for name in LOWERED_GUARD:
            del lab.postfix.extra_main_cf[name]
        lab.postfix.reload()
