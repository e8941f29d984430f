"""Mail the milter never saw is still counted and flushed (real Postfix, real milter).

Two ways Postfix accepts relay mail without the milter recording it, both from the issue:
``XCLIENT ADDR=[UNAVAILABLE]`` (libmilter drops the milter session before ``connect``; Postfix
goes on with ``default_action=accept``) and a milter that is not running. ``backupmx status``
must show both messages (adopted from ``postqueue -j``) and ``backupmx flush`` hand them over.
"""
from __future__ import annotations

import json
import re
import smtplib
import sqlite3
import subprocess
from typing import Dict, Iterator

import pytest

from tests.harness.lab import BackupMxLab, eventually
from tests.integration.conftest import require_postfix

DOMAIN = "example.test"


def backupmx(lab: BackupMxLab, *args: str) -> subprocess.CompletedProcess:
    return lab.command(*args)


def ledger(lab: BackupMxLab) -> Dict[str, tuple]:
    """queue id -> (client address, adopted?, state) of the ledger's rows."""
    with sqlite3.connect(lab.ledger_path) as conn:
        rows = conn.execute("SELECT m.queue_id, m.client_addr, md.adopted_at IS NOT NULL,"
                            " md.state FROM messages m JOIN message_domains md"
                            " ON md.message_id = m.id").fetchall()
    return {row[0]: row[1:] for row in rows}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackupMxLab]:
    require_postfix()
    instance = BackupMxLab(tmp_path_factory.mktemp("adoption"), milter=True)
    instance.postfix.extra_main_cf["smtpd_authorized_xclient_hosts"] = "127.0.0.1"
    instance.start()
    yield instance
    instance.close()


def send_after_xclient_unavailable(lab: BackupMxLab) -> str:
    with lab.smtp() as client:
        code, _ = client.docmd("XCLIENT", "ADDR=[UNAVAILABLE] NAME=[UNAVAILABLE]")
        assert code == 220
        client.ehlo("client.test")
        client.mail("someone@sender.test")
        assert client.rcpt(f"alice@{DOMAIN}")[0] == 250
        code, text = client.data(b"Subject: unseen by the milter\r\n\r\nhello\r\n")
    assert code == 250, text
    match = re.search(rb"queued as ([0-9A-F]+)", text)
    assert match, text
    return match.group(1).decode()


def test_unrecorded_mail_is_adopted_shown_and_flushed(lab: BackupMxLab) -> None:
    assert lab.milter is not None
    recorded = lab.send([f"bob@{DOMAIN}"])
    xclient = send_after_xclient_unavailable(lab)
    lab.milter.stop()
    try:
        milter_down = lab.send([f"postmaster@{DOMAIN}"], sender="")
    except smtplib.SMTPException as error:
        pytest.fail(f"with default_action=accept Postfix must accept: {error}")
    queued = eventually(lab.postfix.queue, lambda q: len(q) == 3)
    assert {m["queue_id"] for m in queued} == {recorded, xclient, milter_down}
    before = ledger(lab)
    assert set(before) == {recorded}  # what the milter saw
    assert "queue id unknown: a milter session ended before its connect event" \
        in lab.milter.log()

    result = backupmx(lab, "status", "--json", "--no-probe")
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)["domains"]
    assert (row["held_messages"], row["adopted_messages"]) == (3, 2)
    assert row["held_bytes"] >= sum(m["message_size"] for m in queued
                                    if m["queue_id"] != recorded)
    after = ledger(lab)
    assert after[xclient] == ("", True, "held") and after[milter_down] == ("", True, "held")
    assert after[recorded] == (before[recorded][0], False, "held")

    lab.primary(DOMAIN).start()
    result = backupmx(lab, "flush", DOMAIN, "--wait", "30")
    assert result.returncode == 0, result.stderr
    assert f"{DOMAIN}: 3 messages left the queue, 0 still queued" in result.stdout
    assert lab.primary(DOMAIN).wait_for(3)
    assert {state for _, _, state in ledger(lab).values()} == {"flushed"}
    result = backupmx(lab, "status", "--json", "--no-probe")
    [row] = json.loads(result.stdout)["domains"]
    assert row["held_messages"] == 0 and row["last_flush"]["delivered"] == 3
