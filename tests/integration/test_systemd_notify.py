"""What the daemons tell systemd over $NOTIFY_SOCKET, as real processes (no Postfix needed).

policyd: READY=1 at start; on SIGHUP RELOADING=1, then READY=1 with ``STATUS=reload #N: ok`` or
``failed`` (what the unit's ExecReload helper waits for). The milter: READY=1 only once its
socket accepts connections (Type=notify, Postfix is ordered after it).
"""
from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from typing import Iterator, List

import pytest

from tests.harness.daemons import Daemon, spawn
from tests.harness.postfix import free_port

TIMEOUT = 30.0


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(TIMEOUT)
    yield sock
    sock.close()


def start(argv: List[str], tmp_path: Path, sock: socket.socket) -> Daemon:
    return spawn(argv, tmp_path / "daemon.log", dict(os.environ, NOTIFY_SOCKET=sock.getsockname()))


def receive(sock: socket.socket, daemon: Daemon) -> str:
    try:
        return sock.recv(4096).decode()
    except socket.timeout:
        pytest.fail(f"no notification within {TIMEOUT} s:\n{daemon.log()}")


def write_config(path: Path, extra: str = "") -> None:
    path.write_text(f"[policyd]\nlisten = inet:127.0.0.1:{free_port()}\nrecipients =\n"
                    f"recipient_delimiter = +\n{extra}[domains]\nexample.test = mx\n",
                    encoding="utf-8")


def test_policyd_reports_each_reload_and_its_outcome(tmp_path: Path,
                                                     notify_socket: socket.socket) -> None:
    config = tmp_path / "backupmx.conf"
    write_config(config)
    daemon = start([sys.executable, "-m", "backupmx.policyd.main", "-c", str(config)], tmp_path,
                   notify_socket)
    try:
        assert receive(notify_socket, daemon) == (
            "READY=1\nSTATUS=serving 1 domains, 0 recipient keys")
        write_config(config, "no_such_key = 1\n")
        daemon.signal(signal.SIGHUP)
        reloading = receive(notify_socket, daemon).split("\n")
        assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
        assert reloading[2] == "STATUS=reload #1: reloading"
        assert receive(notify_socket, daemon) == ("READY=1\nSTATUS=reload #1: failed, keeping the "
                                                  "running configuration (see the log)")
        write_config(config)
        daemon.signal(signal.SIGHUP)
        assert receive(notify_socket, daemon).startswith("RELOADING=1\n")
        assert receive(notify_socket, daemon) == \
            "READY=1\nSTATUS=reload #2: ok, serving 1 domains, 0 recipient keys"
        assert daemon.alive()
    finally:
        daemon.stop()


def test_milter_is_ready_only_once_its_socket_accepts(tmp_path: Path,
                                                     notify_socket: socket.socket) -> None:
    path = tmp_path / "milter.sock"
    config = tmp_path / "backupmx.conf"
    config.write_text(f"[milter]\nlisten = unix:{path}:0660\nledger = {tmp_path}/ledger.sqlite3\n",
                      encoding="utf-8")
    daemon = start([sys.executable, "-m", "backupmx.milter.main", "-c", str(config)], tmp_path,
                   notify_socket)
    try:
        assert receive(notify_socket, daemon) == f"READY=1\nSTATUS=listening on unix:{path}:0660"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # at once: no wait after READY=1
    finally:
        daemon.stop()
