"""The deb under a real systemd (Debian 12 booted with systemd-nspawn):
tests/packaging/test_systemd.sh.

The script does the work and prints one ``PASS|FAIL name (seconds)`` line per check (it is also
runnable alone, as root); this test makes it part of the suite, so CI's one test command covers
the units, the upgrade from the previous release and the package's life cycle.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging
SCRIPT = Path(__file__).with_name("test_systemd.sh")


def test_deb_under_a_real_systemd() -> None:
    if os.geteuid() != 0:
        pytest.fail("the systemd test boots a container with systemd-nspawn: run it as root")
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=1200)
    summary = "\n".join(line for line in result.stdout.splitlines()
                        if line.startswith(("FAIL", "PASS", "==", "   ")))
    print(summary)
    assert result.returncode == 0, f"{summary}\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    assert "\nFAIL" not in f"\n{summary}"
