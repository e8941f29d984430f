"""The deb and rpm, built, installed and run as their units say: tests/packaging/test_packages.sh.

The script does the work (it is also runnable alone, as root); this test makes it part of the
suite so CI's one test command covers the packages.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging
SCRIPT = Path(__file__).with_name("test_packages.sh")


def test_deb_and_rpm_install_run_and_purge_cleanly() -> None:
    if os.geteuid() != 0:
        pytest.fail("the package test installs a deb with apt: run it as root")
    environment = dict(os.environ, LAB_PYTHON=sys.executable)
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True,
                            timeout=900, env=environment)
    summary = "\n".join(line for line in result.stdout.splitlines()
                        if line.startswith(("FAIL", "PASS", "==")))
    assert result.returncode == 0, f"{summary}\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    assert "FAIL" not in summary
