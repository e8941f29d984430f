"""A recipient map rewritten slowly in place, behind a real Postfix: a valid user never gets 5xx.

The issue's case: truncating the map and writing it again (as ``cp``, editors and ``>`` do) made
policyd load the half-written file, and ``user399``, valid before and after, got ``550 5.1.1``
for seconds. Here the file is rewritten in chunks with pauses longer than two map checks, so
policyd does read the partial file (and says so in its log), while an SMTP client asks Postfix
about ``user399`` all the time.
"""
from __future__ import annotations

import threading
import time
from typing import List, Tuple

from tests.harness.lab import BackupMxLab, eventually

DOMAIN = "example.test"
USERS = [f"user{n}@{DOMAIN} OK\n" for n in range(400)]
CHUNK = 50
PAUSE = 0.7  # seconds: more than two checks at the lab's map_check_interval (0.2 s)


def test_slow_rewrite_in_place_never_refuses_a_valid_user(lab: BackupMxLab) -> None:
    lab.recipients_path.write_text("".join(USERS))
    assert eventually(lambda: lab.rcpt(f"user399@{DOMAIN}")[0], lambda c: c == 250) == 250
    replies: List[Tuple[int, str]] = []
    done = threading.Event()

    def ask() -> None:
        while not done.is_set():
            replies.append(lab.rcpt(f"user399@{DOMAIN}"))

    client = threading.Thread(target=ask)
    client.start()
    try:
        with lab.recipients_path.open("w") as handle:  # truncated here
            # three quarters in chunks, each left alone long enough to be read
            for start in range(0, 300, CHUNK):
                time.sleep(PAUSE)
                handle.write("".join(USERS[start:start + CHUNK]))
                handle.flush()
            time.sleep(PAUSE)
            handle.write("".join(USERS[300:]) + f"newcomer@{DOMAIN} OK\n")
        code = eventually(lambda: lab.rcpt(f"newcomer@{DOMAIN}")[0], lambda c: c == 250)
        assert code == 250
    finally:
        done.set()
        client.join(30)
    refused = [reply for reply in replies if reply[0] >= 500]
    assert len(replies) > 20 and not refused, refused[:3]
    assert lab.policyd is not None
    log = lab.policyd.log()
    assert "would cut example.test 400 -> 0 keys" in log  # the empty file was read and held back
    assert "max_shrink" in log
