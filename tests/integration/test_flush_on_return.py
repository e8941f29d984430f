"""Flush on return on a real private Postfix: policyd hands a domain's held mail back as soon as
it sees the domain's primary up again, with no timer and no ``backupmx flush`` run by anyone.

Two relay domains, each with its own fake primary, both down while mail is sent; then one primary
starts. Its mail must arrive within a few probe intervals; the other domain's mail stays held.
"""
from __future__ import annotations

import sqlite3
import time
from typing import Iterator, List

import pytest

from tests.harness.lab import BackupMxLab, eventually
from tests.integration.conftest import require_postfix

A, B = "a.test", "b.test"
PROBE_INTERVAL = 0.5


@pytest.fixture
def lab(tmp_path) -> Iterator[BackupMxLab]:  # noqa: ANN001 (pytest's tmp_path)
    require_postfix()
    # probe_interval_down is left at its default (10 s) and capped by probe_interval (0.5 s)
    instance = BackupMxLab(tmp_path, domains=[A, B], milter=True,
                           policyd_settings={"probe_interval": str(PROBE_INTERVAL)}).start()
    yield instance
    instance.close()


def flush_events(lab: BackupMxLab) -> List[tuple]:
    with sqlite3.connect(lab.ledger_path) as conn:
        return conn.execute("SELECT domain, trigger, held_before, delivered, result"
                            " FROM flush_events ORDER BY id").fetchall()


def test_held_domain_flushed_when_its_primary_returns(lab: BackupMxLab) -> None:
    for number in range(6):
        lab.send([f"alice@{A}"], body=f"for a {number}\n")
    for number in range(4):
        lab.send([f"bob@{B}"], body=f"for b {number}\n")
    queue = eventually(lab.postfix.queue,
                       lambda q: len(q) == 10 and all(m["queue_name"] == "deferred" for m in q))
    assert len(queue) == 10
    for_b = {m["queue_id"] for m in queue
             if any(r["address"].endswith("@" + B) for r in m["recipients"])}

    started = time.monotonic()
    lab.primary(A).start()
    # primary_up_after = 2 probes 0.5 s apart, then the child flush: a few probe intervals.
    assert lab.primary(A).wait_for(6, timeout=20)
    took = time.monotonic() - started
    print(f"a.test's 6 held messages reached its primary {took:.2f} s after it started")
    assert took < 20 * PROBE_INTERVAL + 5
    log = eventually(lab.policyd.log if lab.policyd else str,
                     lambda text: "flush on return of a.test done" in text)
    line = next(x for x in log.splitlines() if "flush on return of a.test done" in x)
    assert "a.test: 6 messages left the queue, 0 still queued" in line
    assert flush_events(lab) == [(A, "return", 6, 6, "complete")]
    # b.test's primary is still down: nothing of it was sent anywhere, all of it still queued.
    assert lab.primary(B).messages == []
    assert {m["queue_id"] for m in lab.postfix.queue()} == for_b
    assert "flush on return of b.test" not in log

    # A flapping primary: stopped (reported down at the next probe), started again: one more
    # up transition, one more flush, which finds nothing held and records nothing.
    lab.primary(A).stop()
    eventually(lambda: lab.rcpt(f"alice@{A}")[0], lambda code: code == 250)
    lab.primary(A).start()
    eventually(lab.policyd.log if lab.policyd else str,
               lambda text: text.count("flush on return of a.test done") == 2)
    log = lab.policyd.log() if lab.policyd else ""
    assert log.count("primary of a.test is up: flushing") == 2
    assert "a.test: nothing held: nothing to flush" in log
    assert flush_events(lab) == [(A, "return", 6, 6, "complete")]
    assert len(lab.primary(A).messages) == 6
