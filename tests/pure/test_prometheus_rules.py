"""The shipped Prometheus alert rules: valid for promtool, each alert tested on sample series.

promtool comes from Debian's prometheus package (.ci/install extracts it); the series and the
expected alerts are in tests/prometheus/backupmx-rules.test.yml. The test fails, not skips,
without promtool: a skipped check would hide broken rules.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "etc" / "prometheus" / "backupmx-rules.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "backupmx-rules.test.yml"
CI_PROMTOOL = Path("/usr/local/lib/backupmx-ci/promtool")
#: a metric the rules watch before any exporter has it (an external recipient source)
RESERVED = {"backupmx_recipient_source_last_success_timestamp_seconds"}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool") or (str(CI_PROMTOOL) if CI_PROMTOOL.exists() else None)
    if found is None:
        pytest.fail("promtool is missing: run .ci/install (it extracts it from Debian's "
                    "prometheus package)")
    return found


def run(promtool: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def test_promtool_check_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_promtool_test_rules(promtool: str) -> None:
    result = run(promtool, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test() -> None:
    alerts = set(re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.M))
    tested = set(re.findall(r"^\s+alertname: (\w+)$", RULE_TESTS.read_text(), re.M))
    assert len(alerts) == 6 and alerts == tested


def test_rules_use_only_metrics_backupmx_exports() -> None:
    exported = set()
    for source in ("policyd/metrics.py", "admin/status_metrics.py"):
        exported |= set(re.findall(r'"(backupmx_\w+)"', (ROOT / source).read_text()))
    expressions = [line.split("expr:", 1)[1] for line in RULES.read_text().splitlines()
                   if "expr:" in line]
    used = set(re.findall(r"backupmx_\w+", "\n".join(expressions)))
    assert len(used) == 6, used
    assert used - RESERVED <= exported, used - RESERVED - exported
    assert RESERVED <= used
