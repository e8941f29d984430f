"""The README's first command runs this demo: it must keep working as the README says."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import require_postfix

ROOT = Path(__file__).resolve().parents[2]


def test_demo_shows_accept_reject_defer_status_and_flush() -> None:
    require_postfix()
    result = subprocess.run([sys.executable, "-m", "demo", "--once"], cwd=ROOT,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "RCPT TO:<alice@example.test>  ->  250 2.1.5" in out
    assert "RCPT TO:<nobody@example.test>  ->  550 5.1.1" in out
    assert "RCPT TO:<user@other.test>  ->  554 5.7.1" in out
    assert "->  450 4.7.1 <alice@example.test>: Recipient address rejected: Primary MX" in out
    status = out.split("$ backupmx status", 1)[1].split("==", 1)[0]
    assert "example.test  down" in status and " 1 " in status
    assert "primary of example.test is up: flushing its held mail" in out
    assert "example.test: 1 message left the queue, 0 still queued" in out
    assert "the primary received 1 message(s); queue now holds 0" in out
    assert "Stopped; nothing was left running." in out
