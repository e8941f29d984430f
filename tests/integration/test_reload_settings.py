"""Every setting means what the file says: an edited configuration, behind a real Postfix.

A relay domain added to ``[domains]`` by editing the file (and ``systemctl reload``, i.e. SIGHUP
to policyd) is judged by policyd and recorded by the milter, which follows the file by itself
(libmilter takes SIGHUP as "stop"). The same reload gives new policy connections the new limits
and names the settings that need a restart.
"""
from __future__ import annotations

import signal
import socket
import sqlite3
from pathlib import Path
from typing import Iterator

import pytest

from tests.harness.lab import BackupMxLab, eventually
from tests.harness.postfix import free_port
from tests.integration.conftest import require_postfix

OLD, NEW = "example.test", "new.test"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackupMxLab]:
    """Postfix relays both domains; backupmx.conf names only OLD at start."""
    require_postfix()
    instance = BackupMxLab(tmp_path_factory.mktemp("reload"), domains=[OLD, NEW], milter=True)
    text = instance.config_path.read_text()
    instance.config_path.write_text("".join(line for line in text.splitlines(keepends=True)
                                            if not line.startswith(f"{NEW} =")))
    instance.start()
    yield instance
    instance.close()


def recorded(lab: BackupMxLab, queue_id: str) -> list:
    with sqlite3.connect(lab.ledger_path) as conn:
        return conn.execute("SELECT md.domain, m.client_addr, md.adopted_at FROM messages m"
                            " JOIN message_domains md ON md.message_id = m.id"
                            " WHERE m.queue_id = ?", (queue_id,)).fetchall()


def closed_by_server(sock: socket.socket, timeout: float = 10.0) -> bool:
    """True when the server closes the connection (no reply) within timeout."""
    sock.settimeout(timeout)
    try:
        return sock.recv(4096) == b""
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def test_domain_added_by_editing_the_file_is_judged_and_recorded(lab: BackupMxLab) -> None:
    assert lab.rcpt(f"nobody@{NEW}")[0] == 250  # not a backupmx domain yet: Postfix decides
    before = lab.send([f"alice@{NEW}"])
    assert recorded(lab, before) == []  # nor recorded

    metrics_port = free_port()
    lab.write_config({"idle_timeout": "1", "max_line_length": "100",
                      "metrics": f"inet:127.0.0.1:{metrics_port}"})  # now with NEW
    assert lab.policyd is not None and lab.milter is not None
    lab.policyd.signal(signal.SIGHUP)
    code, text = eventually(lambda: lab.rcpt(f"nobody@{NEW}"), lambda reply: reply[0] == 550)
    assert (code, text[:5]) == (550, "5.1.1"), text
    assert lab.rcpt(f"alice@{NEW}")[0] == 250  # primary down: accepted here
    assert "added new.test" in eventually(lab.milter.log, lambda log: "added new.test" in log)
    queue_id = lab.send([f"alice@{NEW}", f"bob@{OLD}"])
    assert sorted(recorded(lab, queue_id)) == [(OLD, "127.0.0.1", None),  # by the milter,
                                               (NEW, "127.0.0.1", None)]  # not adopted
    assert lab.milter.alive()

    # the same reload: new policy connections get the new limits ...
    with socket.create_connection(("127.0.0.1", lab.policy_port), timeout=10) as idle:
        assert closed_by_server(idle)  # idle_timeout 1 s, not the 600 s it started with
    with socket.create_connection(("127.0.0.1", lab.policy_port), timeout=10) as long_line:
        long_line.sendall(b"recipient=" + b"x" * 200 + b"\n")
        assert closed_by_server(long_line)  # longer than max_line_length 100: no reply
    # ... and the log names the one that needs a restart
    log = lab.policyd.log()
    assert "reload: [policyd] metrics changed; restart policyd to use the new value" in log


def test_a_callout_source_added_by_a_reload_starts_callouts(lab: BackupMxLab,
                                                            tmp_path: Path) -> None:
    """No restart needed: the reload that adds the first ``callout`` source starts callouts
    (its cache file read in a thread), so an unknown recipient is no longer refused on the
    list alone but deferred until the primary has been asked (primary down: 450 4.1.1)."""
    code, text = lab.rcpt(f"never@{OLD}")
    assert (code, text[:5]) == (550, "5.1.1"), text  # the list alone decides
    lab.extra_config = f"[recipients verify]\ntype = callout\ndomains = {OLD}\n"
    lab.write_config({"state_directory": str(tmp_path / "state")})
    assert lab.policyd is not None
    lab.policyd.signal(signal.SIGHUP)
    code, text = eventually(lambda: lab.rcpt(f"never@{OLD}"), lambda reply: reply[0] == 450)
    assert (code, text[:5]) == (450, "4.1.1"), text
    assert lab.rcpt(f"alice@{OLD}")[0] == 250  # listed: accepted as before
    assert f"recipient callouts for {OLD}" in lab.policyd.log()
    assert (tmp_path / "state" / "callouts.sqlite3").exists()
