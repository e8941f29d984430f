"""policyd attached to a real Postfix: what an SMTP client sees at RCPT time."""
from __future__ import annotations

import smtplib

import pytest

from tests.harness.lab import BackupMxLab, eventually

DOMAIN = "example.test"


def set_primary(lab: BackupMxLab, up: bool) -> None:
    """Start or stop the fake primary and wait until policyd's prober has noticed."""
    primary = lab.primary(DOMAIN)
    primary.start() if up else primary.stop()
    expected = 450 if up else 250
    code, text = eventually(lambda: lab.rcpt(f"alice@{DOMAIN}"), lambda r: r[0] == expected)
    assert code == expected, f"policyd did not see the primary {'up' if up else 'down'}: {text}"


def test_valid_recipient_with_primary_down_is_accepted_and_queued(lab: BackupMxLab) -> None:
    set_primary(lab, up=False)
    queue_id = lab.send([f"alice@{DOMAIN}"])
    assert queue_id in {message["queue_id"] for message in lab.postfix.queue()}


def test_recipient_delimiter_extension_is_accepted(lab: BackupMxLab) -> None:
    set_primary(lab, up=False)
    assert lab.rcpt(f"Alice+Lists@{DOMAIN.upper()}")[0] == 250


def test_valid_recipient_with_primary_up_is_deferred_to_the_primary(lab: BackupMxLab) -> None:
    set_primary(lab, up=True)
    try:
        code, text = lab.rcpt(f"bob@{DOMAIN}")
        assert code == 450
        assert text.startswith("4.7.1 ") and "Primary MX 127.0.0.1 is up; deliver there" in text
    finally:
        set_primary(lab, up=False)


def test_unknown_recipient_is_rejected(lab: BackupMxLab) -> None:
    code, text = lab.rcpt(f"nobody@{DOMAIN}")
    assert code == 550
    assert "5.1.1" in text and "User unknown in relay recipient table" in text


def test_allowlisted_sender_network_is_accepted_with_primary_up(lab: BackupMxLab) -> None:
    set_primary(lab, up=True)
    try:
        assert lab.rcpt(f"bob@{DOMAIN}", sender="relay@partner.test")[0] == 250
        assert lab.rcpt(f"bob@{DOMAIN}", sender="relay@elsewhere.test")[0] == 450
    finally:
        set_primary(lab, up=False)


def test_non_relay_domain_is_denied(lab: BackupMxLab) -> None:
    code, text = lab.rcpt("user@other.test")
    assert code == 554
    assert "Relay access denied" in text


def test_edited_map_is_used_without_restart(lab: BackupMxLab) -> None:
    assert lab.rcpt(f"carol@{DOMAIN}")[0] == 550
    with lab.recipients_path.open("a") as recipients:
        recipients.write(f"carol@{DOMAIN} OK\n")
    code, _ = eventually(lambda: lab.rcpt(f"carol@{DOMAIN}"), lambda r: r[0] == 250)
    assert code == 250
    assert lab.policyd is not None and lab.policyd.alive()


def test_broken_map_keeps_the_last_good_one(lab: BackupMxLab) -> None:
    good = lab.recipients_path.read_text()
    try:
        lab.recipients_path.write_text(good + "this-line-has-no-value\n")
        eventually(lambda: lab.policyd.log(), lambda log: "map reload failed" in log)
        assert "map reload failed" in lab.policyd.log()
        assert lab.rcpt(f"alice@{DOMAIN}")[0] == 250
        assert lab.rcpt(f"nobody@{DOMAIN}")[0] == 550
    finally:
        lab.recipients_path.write_text(good)


def test_policyd_killed_gives_a_temporary_error_and_loses_no_mail(lab: BackupMxLab) -> None:
    set_primary(lab, up=False)
    queued = lab.send([f"alice@{DOMAIN}"])
    assert lab.policyd is not None
    lab.policyd.kill()
    try:
        code, text = lab.rcpt(f"bob@{DOMAIN}")
        assert 400 <= code < 500, (code, text)
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            lab.send([f"bob@{DOMAIN}"])
        assert queued in {message["queue_id"] for message in lab.postfix.queue()}
    finally:
        lab.start_policyd()
    assert eventually(lambda: lab.rcpt(f"bob@{DOMAIN}"), lambda r: r[0] == 250)[0] == 250
