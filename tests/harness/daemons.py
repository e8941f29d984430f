"""Start backupmx daemons as real processes and know when they are ready, without sleeping.

policyd announces readiness with sd_notify(READY=1): the harness binds the datagram socket and
waits for that message. libmilter cannot notify, so for the milter the harness waits until its
port accepts connections.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional

from backupmx.common.policy_client import read_reply


class DaemonError(RuntimeError):
    pass


class Daemon:
    """A running daemon process with its log file."""

    def __init__(self, argv: List[str], log_path: Path, process: subprocess.Popen) -> None:
        self.argv = argv
        self.log_path = log_path
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


def _spawn(argv: List[str], log_path: Path, env: Optional[dict]) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL)


def spawn(argv: List[str], log_path: Path, env: Optional[dict] = None) -> Daemon:
    """Start a process logging to log_path; the caller decides how to know it is ready."""
    return Daemon(argv, log_path, _spawn(argv, log_path, env))


def start_notifying(argv: List[str], log_path: Path, timeout: float = 30.0,
                    env: Optional[dict] = None) -> Daemon:
    """Start a daemon with $NOTIFY_SOCKET set; return once it sent READY=1."""
    folder = tempfile.mkdtemp(prefix="notify-")
    address = os.path.join(folder, "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(0.2)
        environment = dict(env if env is not None else os.environ, NOTIFY_SOCKET=address)
        daemon = spawn(argv, log_path, environment)
        process = daemon.process
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                try:
                    if b"READY=1" in sock.recv(4096):
                        return daemon
                except socket.timeout:
                    pass
                if not daemon.alive():
                    raise DaemonError(f"{argv[0]} exited with {process.returncode}:\n"
                                      f"{daemon.log()}")
            daemon.kill()
            raise DaemonError(f"{argv} not ready within {timeout} s:\n{daemon.log()}")
        finally:
            os.unlink(address)
            os.rmdir(folder)


def start_policyd(config_path: Path, log_path: Path, timeout: float = 30.0) -> Daemon:
    argv = [sys.executable, "-m", "backupmx.policyd.main", "-c", str(config_path)]
    return start_notifying(argv, log_path, timeout)


def _wait_until_accepting(connect: Callable[[], socket.socket], where: str, timeout: float,
                          daemon: Optional[Daemon]) -> None:
    """Poll until connect() succeeds (for daemons that cannot notify); fail if daemon exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon is not None and not daemon.alive():
            raise DaemonError(f"{daemon.argv[0]} exited:\n{daemon.log()}")
        try:
            connect().close()
            return
        except OSError:
            time.sleep(0.05)
    raise DaemonError(f"nothing listens on {where} after {timeout} s")


def _connect_unix(path: Path) -> socket.socket:
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(str(path))
    except OSError:
        probe.close()
        raise
    return probe


def wait_for_port(host: str, port: int, timeout: float = 30.0,
                  daemon: Optional[Daemon] = None) -> None:
    """Poll until host:port accepts a TCP connection."""
    _wait_until_accepting(lambda: socket.create_connection((host, port), timeout=0.5),
                          f"{host}:{port}", timeout, daemon)


def wait_for_unix_socket(path: Path, timeout: float = 30.0,
                         daemon: Optional[Daemon] = None) -> None:
    """Poll until the unix socket at path accepts a connection."""
    _wait_until_accepting(lambda: _connect_unix(path), str(path), timeout, daemon)


def milter_argv(config_path: Path) -> List[str]:
    return [sys.executable, "-m", "backupmx.milter.main", "-c", str(config_path)]


def start_milter(config_path: Path, log_path: Path, host: str, port: int,
                 timeout: float = 30.0) -> Daemon:
    daemon = spawn(milter_argv(config_path), log_path)
    wait_for_port(host, port, timeout, daemon)
    return daemon


def start_unix_milter(config_path: Path, log_path: Path, path: Path,
                      timeout: float = 30.0) -> Daemon:
    """The milter on a unix socket (its [milter] listen must name path)."""
    daemon = spawn(milter_argv(config_path), log_path)
    wait_for_unix_socket(path, timeout, daemon)
    return daemon


def policy_reply(sock: socket.socket) -> bytes:
    """Read one policy reply from a connected socket, as the bytes ``action=...\n\n``."""
    return f"action={read_reply(sock)}\n\n".encode()
