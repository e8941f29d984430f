"""``backupmx check`` on restriction order, proven on the real Postfix.

With ``permit_mx_backup`` before ``check_policy_service`` (the classic backup-MX recipe kept
while adding backupmx), Postfix really accepts an unknown user without asking policyd, and
``check`` fails naming it. The Postfix defaults the unit table uses are compared with the real
``postconf -d -x``.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.harness.lab import BackupMxLab
from tests.harness.postconf_samples import DEFAULTS_0, DEFAULTS_3_6
from tests.integration.conftest import require_postfix
from tests.integration.test_check import check, nameserver

__all__ = ["nameserver"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackupMxLab]:
    require_postfix()
    instance = BackupMxLab(tmp_path_factory.mktemp("restrictions-lab")).start()
    yield instance
    instance.close()


def test_permit_mx_backup_before_policyd_lets_unknown_users_in_and_check_fails(
        lab: BackupMxLab, nameserver: str) -> None:
    policy = f"check_policy_service {{ {lab.policy_listen}, timeout=10s }}"
    # the harness's order: policyd is asked and refuses the unknown user
    assert lab.rcpt("nobody@example.test")[0] == 550
    status, rows = check(lab, nameserver)
    assert status == 0 and ("policy bypass", "ok") in {(r["check"], r["status"]) for r in rows}

    classic = {"smtpd_recipient_restrictions":
               f"permit_mynetworks, permit_mx_backup, reject_unauth_destination, {policy}"}
    status, rows = check(lab, nameserver, **classic)
    lab.postfix.reload()
    try:
        code, text = lab.rcpt("stranger@example.test")
        assert code == 250, text  # Postfix accepted it: policyd was never asked
        assert lab.policyd is not None and "stranger@example.test" not in lab.policyd.log()
        assert status == 1
        failed = [r for r in rows if r["status"] == "fail"]
        assert [r["check"] for r in failed] == ["policy bypass"]
        assert failed[0]["message"].startswith("permit_mx_backup comes before "
                                               "check_policy_service")
        assert "remove permit_mx_backup" in failed[0]["fix"]
        assert any(r["check"] == "permit_mx_backup" and r["status"] == "warn"
                   and "deprecated since Postfix 3.9" in r["message"] for r in rows)
    finally:
        lab.postfix.extra_main_cf = {}
        lab.postfix.reload()
    assert lab.rcpt("stranger@example.test")[0] == 550


@pytest.mark.parametrize("level, expected", [("3.6", DEFAULTS_3_6), ("0", DEFAULTS_0)])
def test_the_unit_tables_defaults_are_postfixs(tmp_path: Path, level: str,
                                               expected: dict) -> None:
    require_postfix()
    (tmp_path / "main.cf").write_text(f"compatibility_level = {level}\n")
    (tmp_path / "master.cf").write_text("")
    result = subprocess.run(["postconf", "-c", str(tmp_path), "-x", *expected],
                            capture_output=True, text=True, timeout=60, check=True)
    values = dict(line.split(" = ", 1) if " = " in line else (line.rstrip(" ="), "")
                  for line in result.stdout.splitlines())
    assert values == expected
