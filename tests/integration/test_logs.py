"""One policyd log line per decision, greppable with the queue id Postfix logs."""
from __future__ import annotations

import re

from tests.harness.lab import BackupMxLab, eventually


def test_queue_id_greps_across_postfix_and_policyd_logs(lab: BackupMxLab) -> None:
    queue_id = lab.send(["alice@example.test", "bob@example.test"])  # primary down: accepted
    assert eventually(lab.postfix.maillog, lambda log: f"{queue_id}:" in log)
    lines = [line for line in lab.policyd.log().splitlines() if f"queue_id={queue_id} " in line]
    # the first RCPT comes before Postfix assigns the id; the second carries it
    assert len(lines) == 1 and "recipient=<bob@example.test>" in lines[0]
    # primary down, or not probed yet right after start: accepted either way
    assert re.search(r"primary_(down|unknown): queue_id=\S+ instance=\S+ client=\S+ sender=<[^>]*> "
                     r"recipient=<bob@example.test> action=\"DUNNO\"", lines[0])
    instance = re.search(r"instance=(\S+)", lines[0]).group(1)
    same_transaction = [line for line in lab.policyd.log().splitlines()
                        if f"instance={instance} " in line]
    assert len(same_transaction) == 2  # the instance ties the first RCPT to the queue id
