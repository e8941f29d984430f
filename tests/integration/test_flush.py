"""The milter, the ledger and per-domain flush on a real private Postfix with two relay domains.

Each relay domain has its own fake primary; both start down. The ``backupmx`` command runs as a
subprocess against the lab's configuration (its [postfix] config_directory is the instance).
"""
from __future__ import annotations

import json
import re
import smtplib
import sqlite3
import subprocess
import threading
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from tests.harness.lab import BackupMxLab, eventually
from tests.integration.conftest import require_postfix

A, B = "a.test", "b.test"


def backupmx(lab: BackupMxLab, *args: str) -> subprocess.CompletedProcess:
    return lab.command(*args)


def status(lab: BackupMxLab) -> Dict[str, dict]:
    result = backupmx(lab, "status", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["warnings"] == [], document["warnings"]
    return {row["domain"]: row for row in document["domains"]}


def ledger_rows(lab: BackupMxLab) -> List[tuple]:
    with sqlite3.connect(lab.ledger_path) as conn:
        return conn.execute("SELECT m.queue_id, md.domain, md.state, md.flush_id FROM messages m"
                            " JOIN message_domains md ON md.message_id = m.id"
                            " ORDER BY m.id, md.domain").fetchall()


def ledger_queue_ids(lab: BackupMxLab) -> Set[str]:
    with sqlite3.connect(lab.ledger_path) as conn:
        return {row[0] for row in conn.execute("SELECT queue_id FROM messages")}


def queued_bytes(queue: List[dict], domain: str) -> int:
    """Postfix's own message_size of the queued messages with a recipient in domain."""
    return sum(m["message_size"] for m in queue
               if any(r["address"].endswith("@" + domain) for r in m["recipients"]))


def assert_close_to_delivered(held_bytes: int, delivered: List[tuple]) -> None:
    wire = sum(len(content) for _, _, content in delivered)
    assert wire <= held_bytes <= wire + 64 * len(delivered), (held_bytes, wire)


def delivered_queue_id(content: bytes) -> str:
    match = re.search(rb"\(Postfix\) with ESMTP id ([0-9A-F]+)", content)
    assert match, content[:300]
    return match.group(1).decode()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackupMxLab]:
    require_postfix()
    # The admin's flush and the timer's flush --auto are what this module tests: no flush on
    # return (tests/integration/test_flush_on_return.py has it).
    instance = BackupMxLab(tmp_path_factory.mktemp("flush"), domains=[A, B], milter=True,
                           policyd_settings={"flush_on_return": "no"}).start()
    yield instance
    instance.close()


def test_status_and_per_domain_flush(lab: BackupMxLab) -> None:
    # 20 messages while both primaries are down: 8 for a.test, 7 for b.test, 5 for both.
    plan: List[List[str]] = ([[f"alice@{A}"]] * 8 + [[f"bob@{B}"]] * 7
                             + [[f"bob@{A}", f"alice@{B}"]] * 5)
    sent: Dict[str, List[str]] = {}
    for number, recipients in enumerate(plan):
        queue_id = lab.send(recipients, body=f"message {number}\n" + "x" * (37 * number) + "\n")
        sent[queue_id] = recipients
    queue = eventually(lab.postfix.queue,
                       lambda q: len(q) == 20 and all(m["queue_name"] == "deferred" for m in q))
    assert {m["queue_id"] for m in queue} == set(sent)
    for_a = {q for q, rcpts in sent.items() if any(r.endswith("@" + A) for r in rcpts)}
    for_b = {q for q, rcpts in sent.items() if any(r.endswith("@" + B) for r in rcpts)}

    rows = status(lab)
    assert (rows[A]["held_messages"], rows[B]["held_messages"]) == (13, 12)
    assert rows[A]["primary"] == rows[B]["primary"] == "down"
    assert rows[A]["bounces_in_seconds"] <= 30 * 86400 - rows[A]["oldest_held_seconds"]
    assert rows[A]["last_flush"] is None
    held_bytes_a, held_bytes_b = rows[A]["held_bytes"], rows[B]["held_bytes"]
    # The milter sees no content: the exact bytes are Postfix's own (postqueue -j message_size).
    assert (held_bytes_a, held_bytes_b) == (queued_bytes(queue, A), queued_bytes(queue, B))

    # a.test's primary comes back: flush a.test delivers all of a.test's mail and nothing else.
    lab.primary(A).start()
    result = backupmx(lab, "flush", A, "--wait", "30")
    assert result.returncode == 0, result.stderr
    assert f"{A}: 13 messages left the queue, 0 still queued" in result.stdout
    primary_a = lab.primary(A)
    assert primary_a.wait_for(13)
    assert {delivered_queue_id(c) for _, _, c in primary_a.messages} == for_a
    assert all(r.endswith("@" + A) for _, rcpts, _ in primary_a.messages for r in rcpts)
    # Those are the bytes of the messages as the primary got them, Postfix's Received: header
    # included, plus what Postfix's queue file counts beyond the wire form (measured: 37 bytes
    # per message with a milter attached, and 1 per line of 128 bytes or more).
    assert_close_to_delivered(held_bytes_a, primary_a.messages)

    rows = status(lab)
    assert (rows[A]["held_messages"], rows[A]["held_bytes"]) == (0, 0)
    assert (rows[B]["held_messages"], rows[B]["held_bytes"]) == (12, held_bytes_b)
    flush_a = rows[A]["last_flush"]
    assert (flush_a["trigger"], flush_a["held_before"], flush_a["delivered"],
            flush_a["remaining"], flush_a["result"]) == ("manual", 13, 13, 0, "complete")
    assert rows[B]["last_flush"] is None
    assert {m["queue_id"] for m in lab.postfix.queue()} == for_b

    # b.test's primary is still down: flush b.test refuses and changes nothing.
    before = ledger_rows(lab)
    result = backupmx(lab, "flush", B)
    assert result.returncode == 1
    assert "primary of b.test" in result.stderr and "down" in result.stderr
    assert ledger_rows(lab) == before
    assert {m["queue_id"] for m in lab.postfix.queue()} == for_b

    # b.test's primary returns: the timer's flush --auto flushes b.test (and only it).
    lab.primary(B).start()
    result = backupmx(lab, "flush", "--auto", "--wait", "30")
    assert result.returncode == 0, result.stderr
    assert f"{B}: 12 messages left the queue, 0 still queued" in result.stdout
    assert A not in result.stdout
    assert lab.primary(B).wait_for(12)
    assert {delivered_queue_id(c) for _, _, c in lab.primary(B).messages} == for_b
    assert_close_to_delivered(held_bytes_b, lab.primary(B).messages)
    assert len(primary_a.messages) == 13
    rows = status(lab)
    assert rows[B]["held_messages"] == 0
    assert (rows[B]["last_flush"]["trigger"], rows[B]["last_flush"]["delivered"]) == ("auto", 12)
    assert eventually(lab.postfix.queue, lambda q: q == []) == []

    # Idempotent: nothing held, nothing flushed.
    result = backupmx(lab, "flush", "--auto")
    assert result.returncode == 0 and "nothing held" in result.stdout

    table = backupmx(lab, "status", "--no-probe")
    assert table.returncode == 0 and table.stdout.splitlines()[0].startswith("DOMAIN")


def accepted_in_maillog(maillog: str) -> Set[str]:
    """Queue ids that entered the queue (qmgr picked them up): what Postfix accepted."""
    return set(re.findall(r"postfix/qmgr\[\d+\]: ([0-9A-F]+): from=", maillog))


def test_kill_milter_mid_burst_loses_no_accepted_record(lab: BackupMxLab) -> None:
    # Without a milter answer Postfix must not accept: then "accepted" means "the milter said
    # CONTINUE at end of message", and every such message must be in the ledger.
    lab.postfix.extra_main_cf["smtpd_milters"] = \
        f"{{ inet:127.0.0.1:{lab.milter_port}, default_action=tempfail }}"
    lab.postfix.reload()
    for domain in (A, B):
        lab.primary(domain).stop()  # else policyd sends the clients to the primary (450)
        eventually(lambda domain=domain: lab.rcpt(f"alice@{domain}")[0],
                   lambda code: code == 250)
    if lab.milter is None or not lab.milter.alive():
        lab.start_milter()
    accepted: List[str] = []
    refused: List[Tuple[int, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def sender(worker: int) -> None:
        for n in range(60):
            if stop.is_set():
                return
            try:
                queue_id = lab.send([f"alice@{A}" if n % 2 else f"bob@{B}"],
                                    body=f"burst {worker}/{n}\n")
                with lock:
                    accepted.append(queue_id)
            except smtplib.SMTPException as error:
                with lock:
                    refused.append((worker, str(error)))

    workers = [threading.Thread(target=sender, args=(w,)) for w in range(4)]
    for worker in workers:
        worker.start()
    eventually(lambda: len(accepted), lambda count: count >= 40, timeout=60, interval=0.01)
    lab.milter.kill()  # SIGKILL in the middle of the burst
    eventually(lambda: len(refused), lambda count: count >= 4, timeout=60, interval=0.05)
    stop.set()
    for worker in workers:
        worker.join(120)

    in_ledger = ledger_queue_ids(lab)
    logged = accepted_in_maillog(lab.postfix.maillog())
    assert len(accepted) >= 40 and refused, refused[:3]
    print(f"burst: {len(accepted)} accepted, {len(refused)} refused, "
          f"{len(in_ledger - logged)} recorded but not queued; first refusal: {refused[0]}")
    assert set(accepted) <= logged
    # Every message Postfix queued in this lab, before, during and after the kill, is recorded.
    assert not logged - in_ledger, f"accepted but not recorded: {sorted(logged - in_ledger)}"
    lab.start_milter()
