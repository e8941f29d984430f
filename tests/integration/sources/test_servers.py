"""The private servers of the harness go away with it, even when the test run is killed."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.harness.servers import outside_pytest_root

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import json, sys
from pathlib import Path

from tests.harness.servers import outside_pytest_root
sys.path.insert(0, sys.argv[2])
from tests.harness.servers import MariaDB, Postgres, Slapd
root = Path(sys.argv[1])
servers = [Slapd(root / "slapd").setup().start(), Postgres(root / "postgres").setup().start(),
           MariaDB(root / "mariadb").setup().start()]
print(json.dumps([server.daemon.pid for server in servers]), flush=True)
sys.stdin.read()  # until killed
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie is dead
    except FileNotFoundError:
        return True


def test_servers_die_with_a_killed_harness() -> None:
    root = outside_pytest_root("killed-harness")
    try:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(ROOT)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            pids = json.loads(child.stdout.readline())
            assert len(pids) == 3 and not any(_gone(pid) for pid in pids)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        deadline = time.monotonic() + 10
        while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in pids if not _gone(pid)] == []
    finally:
        shutil.rmtree(root, ignore_errors=True)
