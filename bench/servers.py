"""Starting the servers under test as subprocesses, and knowing when they are ready.

``backupmx-policyd`` is run for real from a generated configuration and announces readiness with
sd_notify (``READY=1`` on a unix datagram socket made here), then its log tells the port it bound
(it listens on port 0). The bare baseline prints its port once listening. No sleeps.
"""
from __future__ import annotations

import os
import re
import socket
import socketserver
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, List, Optional

from backupmx.common.policy_client import read_reply

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
READY_TIMEOUT = 120.0
_LISTENING = re.compile(r"listening on inet:127\.0\.0\.1:(\d+)")


def policyd_command() -> List[str]:
    """The installed console script next to this interpreter, else the module."""
    script = os.path.join(os.path.dirname(sys.executable), "backupmx-policyd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-m", "backupmx.policyd.main"]


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released): a primary that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Greeter(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"220 primary.example.test ESMTP bench greeter\r\n")
        self.rfile.readline()
        self.wfile.write(b"221 2.0.0 bye\r\n")
        self.server.greeted.set()  # type: ignore[attr-defined]


class SmtpGreeter(socketserver.ThreadingTCPServer):
    """A primary MX that is up: it greets with 220 and says goodbye (all a probe needs)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Greeter)
        self.greeted = threading.Event()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]


@dataclass
class Server:
    """A running server subprocess and where it listens."""

    name: str
    process: subprocess.Popen
    port: int
    log_path: Optional[str] = None
    _log: Optional[IO[bytes]] = field(default=None, repr=False)

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        with open(f"/proc/{self.process.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()


def start_bare(writethrough: bool = False) -> Server:
    """The bare baseline; with writethrough, replies sent as policyd sends them."""
    process = subprocess.Popen([sys.executable, os.path.join(BENCH_DIR, "bare_server.py"),
                                *(["--writethrough"] if writethrough else [])],
                               stdout=subprocess.PIPE)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        raise RuntimeError("bare server did not start")
    return Server("bare+wt" if writethrough else "bare", process, int(line))


def start_policyd(config_path: str, workdir: str, name: str = "backupmx") -> Server:
    """Run backupmx-policyd -c config_path and wait for its READY=1 (sd_notify)."""
    notify_path = os.path.join(workdir, f"notify-{name}.sock")
    log_path = os.path.join(workdir, f"{name}.log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(1.0)  # wake up to notice a daemon that died before READY=1
        env = dict(os.environ, NOTIFY_SOCKET=notify_path)
        env.pop("JOURNAL_STREAM", None)
        log = open(log_path, "wb")
        process = subprocess.Popen([*policyd_command(), "-c", config_path], env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                if b"READY=1" in notify.recv(4096).split(b"\n"):
                    break
            except socket.timeout:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"policyd did not become ready; see {log_path}")
    os.unlink(notify_path)
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        found = _LISTENING.search(handle.read())
    if not found:
        process.kill()
        raise RuntimeError(f"policyd did not log its port; see {log_path}")
    return Server(name, process, int(found.group(1)), log_path, log)


def ask(port: int, request: bytes) -> str:
    """One request on a fresh connection; the action text of the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return read_reply(sock)
