"""etc/systemd/policyd-reload, the ExecReload helper: SIGHUP, then wait for policyd's answer.

systemd's side is played by a ``systemctl`` on PATH that prints the unit's StatusText from a file;
the daemon's side by a process that writes its STATUS answer there when it gets SIGHUP, as policyd
sends it with sd_notify. The real pairing is proven by tests/packaging/test_systemd.sh.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Tuple

import pytest

HELPER = Path(__file__).resolve().parents[2] / "etc" / "systemd" / "policyd-reload"
DAEMON = """
import signal, sys, time
status, answer = sys.argv[1], sys.argv[2]
def hup(*_):
    if answer:
        open(status, "w").write(answer + "\\n")
signal.signal(signal.SIGHUP, hup)
open(status + ".ready", "w").close()
while True:
    time.sleep(1)
"""


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[Tuple[Path, dict]]:
    status = tmp_path / "status"
    status.write_text("reload #3: ok, serving 1 domains, 0 recipient keys\n")
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(f"#!/bin/sh\ncat '{status}'\n")
    systemctl.chmod(0o755)
    yield status, dict(os.environ, PATH=f"{tmp_path}:/usr/bin:/bin", POLICYD_RELOAD_TRIES="50")


def run_helper(status: Path, env: dict, answer: str) -> subprocess.CompletedProcess:
    daemon = subprocess.Popen([sys.executable, "-c", DAEMON, str(status), answer])
    try:
        ready = Path(f"{status}.ready")  # written once the SIGHUP handler is installed
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert daemon.poll() is None and time.monotonic() < deadline, "fake daemon not ready"
            time.sleep(0.01)
        return subprocess.run(["sh", str(HELPER), str(daemon.pid), "backupmx-policyd.service"],
                              capture_output=True, text=True, env=env, timeout=60)
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()


def test_exit_0_once_the_next_reload_is_applied(fake_systemd: Tuple[Path, dict]) -> None:
    status, env = fake_systemd
    result = run_helper(status, env, "reload #4: ok, serving 2 domains, 0 recipient keys")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reload #4: ok, serving 2 domains, 0 recipient keys"


def test_exit_1_when_policyd_refused_the_reload(fake_systemd: Tuple[Path, dict]) -> None:
    status, env = fake_systemd
    result = run_helper(status, env, "reload #4: failed, keeping the running configuration")
    assert result.returncode == 1
    assert "reload #4: failed" in result.stderr


def test_exit_1_when_policyd_does_not_answer(fake_systemd: Tuple[Path, dict]) -> None:
    status, env = fake_systemd
    env["POLICYD_RELOAD_TRIES"] = "3"
    result = run_helper(status, env, "")  # the old answer (#3) must not count
    assert result.returncode == 1
    assert "no answer" in result.stderr
