"""policyd listens where Postfix can reach it: a unix socket with a mode, and IPv6."""
from __future__ import annotations

import socket
import stat
import sys
from pathlib import Path

import pytest

from tests.harness.daemons import policy_reply, start_notifying
from tests.harness.lab import BackupMxLab
from tests.harness.postfix import free_port
from tests.integration.conftest import require_postfix

REQUEST = (b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=::1\n"
           b"sender=a@sender.test\nrecipient=nobody@example.test\n\n")


def test_postfix_talks_to_policyd_over_a_unix_socket(tmp_path: Path) -> None:
    require_postfix()
    lab = BackupMxLab(tmp_path, policy_socket="unix").start()
    try:
        mode = stat.S_IMODE(lab.policy_socket_path.stat().st_mode)
        assert mode == 0o666
        assert lab.rcpt("alice@example.test")[0] == 250
        code, text = lab.rcpt("nobody@example.test")
        assert (code, "5.1.1") == (550, text[:5])
    finally:
        lab.close()


def test_policyd_answers_over_ipv6(tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.fail("this machine has no IPv6 loopback; policyd's IPv6 listener cannot be tested")
    port = free_port()
    (tmp_path / "rcpt").write_text("alice@example.test OK\n")
    config = tmp_path / "backupmx.conf"
    config.write_text(f"[policyd]\nlisten = inet:[::1]:{port}\nrecipients = {tmp_path}/rcpt\n"
                      "recipient_delimiter = +\n[domains]\nexample.test = [127.0.0.1]:1\n")
    daemon = start_notifying([sys.executable, "-m", "backupmx.policyd.main", "-c", str(config)],
                             tmp_path / "policyd.log")
    try:
        with socket.create_connection(("::1", port), timeout=10) as client:
            client.sendall(REQUEST)
            reply = policy_reply(client)
        assert reply == b"action=550 5.1.1 User unknown in relay recipient table\n\n"
    finally:
        daemon.stop()


def test_sigterm_stops_policyd_cleanly(tmp_path: Path) -> None:
    """systemd stops the daemon with SIGTERM: exit status 0, port closed, map untouched."""
    port = free_port()
    recipients = tmp_path / "rcpt"
    recipients.write_text("alice@example.test OK\n")
    config = tmp_path / "backupmx.conf"
    config.write_text(f"[policyd]\nlisten = inet:127.0.0.1:{port}\nrecipients = {recipients}\n"
                      "recipient_delimiter = +\n[domains]\nexample.test = [127.0.0.1]:1\n")
    daemon = start_notifying([sys.executable, "-m", "backupmx.policyd.main", "-c", str(config)],
                             tmp_path / "policyd.log")
    assert daemon.stop() == 0, daemon.log()
    assert recipients.read_text() == "alice@example.test OK\n"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
