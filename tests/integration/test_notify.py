"""[notify] on a real private Postfix: held and all-clear notices, by mail and by command.

``mail_to`` is an address at ``notify.test``, a domain this host does not relay: Postfix's own
``sendmail`` submits the notice and Postfix delivers it over SMTP to a sink (an aiosmtpd server,
like the fake primaries). ``command`` is a script appending its standard input to a file. The
timer is played by running ``backupmx flush --auto`` by hand.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Iterator, List

import pytest

from tests.harness.lab import BackupMxLab, eventually
from tests.harness.postfix import free_port
from tests.harness.primary import FakePrimary
from tests.integration.conftest import require_postfix

A, B = "a.test", "b.test"
MAIL_TO = "hostmaster@notify.test"


def backupmx(lab: BackupMxLab, *args: str) -> subprocess.CompletedProcess:
    return lab.command(*args)


POLICYD = {"flush_on_return": "no"}  # the timer's flush --auto is what is played here


def write_notify(lab: BackupMxLab, command: Path) -> None:
    lab.extra_config = f"[notify]\nmail_to = {MAIL_TO}\ncommand = {command}\nheld_after = 0\n"
    lab.write_config(POLICYD)


def script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def sink() -> Iterator[FakePrimary]:
    server = FakePrimary(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def lab(tmp_path: Path, sink: FakePrimary) -> Iterator[BackupMxLab]:
    require_postfix()
    instance = BackupMxLab(tmp_path / "lab", domains=[A, B], milter=True,
                           policyd_settings=POLICYD)
    transport = tmp_path / "transport"
    transport.write_text("".join(f"{d} relay:[127.0.0.1]:{instance.primary(d).port}\n"
                                 for d in (A, B)) + f"notify.test smtp:[127.0.0.1]:{sink.port}\n")
    instance.postfix.extra_main_cf["transport_maps"] = f"texthash:{transport}"
    instance.start()
    yield instance
    instance.close()


def events(path: Path) -> List[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_held_and_all_clear_by_mail_and_command(lab: BackupMxLab, sink: FakePrimary,
                                                tmp_path: Path) -> None:
    received = tmp_path / "events.jsonl"
    write_notify(lab, script(tmp_path / "hook", f"cat >> {received}"))
    lab.send([f"alice@{A}"], body="one\n")
    lab.send([f"bob@{A}"], body="two\n")
    lab.send([f"bob@{B}"], body="three\n")
    eventually(lab.postfix.queue, lambda q: len(q) == 3 and all(m["queue_name"] == "deferred"
                                                                for m in q))

    # First timer run, both primaries down: one `held` event per domain, by both channels.
    result = backupmx(lab, "flush", "--auto")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    held = events(received)
    assert [(e["event"], e["domain"], e["held_messages"]) for e in held] == \
        [("held", A, 2), ("held", B, 1)]
    queue = {m["queue_id"]: m for m in lab.postfix.queue()}
    assert held[0]["held_bytes"] == sum(m["message_size"] for m in queue.values()
                                        if m["recipients"][0]["address"].endswith("@" + A))
    assert held[0]["primary"] == "down" and held[0]["host"] == "backupmx.test"
    assert held[0]["oldest_held_seconds"] >= 0
    assert sink.wait_for(2, timeout=30)
    subjects = sorted(next(line for line in content.decode().splitlines()
                           if line.startswith("Subject:")) for _, _, content in sink.messages)
    assert subjects == [f"Subject: backupmx backupmx.test holds 1 message for {B} "
                        f"(oldest 0 min, primary down)",
                        f"Subject: backupmx backupmx.test holds 2 messages for {A} "
                        f"(oldest 0 min, primary down)"]
    assert all(rcpts == [MAIL_TO] for _, rcpts, _ in sink.messages)

    # The next run: nothing new to say.
    assert backupmx(lab, "flush", "--auto").returncode == 0
    assert len(events(received)) == 2

    # a.test's primary returns: the run flushes it and, its held mail gone, sends all_clear.
    lab.primary(A).start()
    result = backupmx(lab, "flush", "--auto", "--wait", "30")
    assert result.returncode == 0, result.stderr
    assert lab.primary(A).wait_for(2)
    assert [(e["event"], e["domain"], e["held_messages"]) for e in events(received)[2:]] == \
        [("all_clear", A, 0)]
    assert sink.wait_for(3, timeout=30)
    assert any(b"all held mail of a.test has left" in c for _, _, c in sink.messages)


def test_failing_command_is_logged_in_one_line_and_harmless(lab: BackupMxLab, sink: FakePrimary,
                                                            tmp_path: Path) -> None:
    write_notify(lab, script(tmp_path / "broken-hook", "echo 'pager unreachable' >&2; exit 3"))
    lab.send([f"alice@{A}"], body="one\n")
    eventually(lab.postfix.queue, lambda q: len(q) == 1 and q[0]["queue_name"] == "deferred")
    result = backupmx(lab, "flush", "--auto")
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        f"backupmx: notify: command {tmp_path / 'broken-hook'} for held of {A} failed "
        f"(exit status 3): pager unreachable"]
    # the mail channel still worked, and the held mail is untouched, then flushed as usual
    assert sink.wait_for(1, timeout=30)
    lab.primary(A).start()
    result = backupmx(lab, "flush", "--auto", "--wait", "30")
    assert result.returncode == 0 and f"{A}: 1 message left the queue" in result.stdout
    assert "for all_clear of a.test failed (exit status 3)" in result.stderr
    assert lab.primary(A).wait_for(1)
    # a missing command: one line too
    write_notify(lab, tmp_path / "no-such-hook")
    lab.primary(A).stop()
    eventually(lambda: lab.rcpt(f"alice@{A}")[0], lambda code: code == 250)
    lab.send([f"alice@{A}"], body="two\n")
    eventually(lab.postfix.queue, lambda q: len(q) == 1 and q[0]["queue_name"] == "deferred")
    result = backupmx(lab, "flush", "--auto")
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        f"backupmx: notify: cannot run command {tmp_path / 'no-such-hook'} for held of {A}: "
        "No such file or directory"]
