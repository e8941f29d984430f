"""Subdomains of a relay domain: policyd judges what Postfix relays, as Postfix's own recipe would.

Two private Postfix instances with the same ``relay_domains``: one with backupmx-policyd attached
(the lab), one with the classic recipe alone (``relay_recipient_maps`` naming the same map). For
each recipient, the lab must refuse exactly what the recipe refuses (550 5.1.1), with the primary
down (policyd accepts valid users) and up (policyd defers them to the primary).
"""
from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Dict, Iterator

import pytest

from tests.harness.lab import BackupMxLab, eventually
from tests.harness.postfix import PostfixInstance, free_port
from tests.integration.conftest import require_postfix

DOMAIN = "example.test"
EXTRA_KEYS = "sub-user@sub.example.test OK\n@wild.example.test OK\n"
RECIPIENTS = [
    "alice@example.test", "nobody@example.test",
    "nobody@sub.example.test", "alice@sub.example.test", "sub-user@sub.example.test",
    "anyone@wild.example.test", "nobody@deep.sub.example.test", "Sub-User@SUB.Example.Test",
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackupMxLab]:
    require_postfix()
    instance = BackupMxLab(tmp_path_factory.mktemp("subdomains"))
    with instance.recipients_path.open("a") as handle:
        handle.write(EXTRA_KEYS)
    instance.start()
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def recipe(lab: BackupMxLab, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[PostfixInstance]:
    """Postfix's own backup-MX recipe over the same map, no policy service."""
    root = tmp_path_factory.mktemp("recipe")
    instance = PostfixInstance(root, free_port(), {DOMAIN: free_port()}, extra_main_cf={
        "relay_recipient_maps": f"texthash:{lab.recipients_path}"})
    instance.start()
    yield instance
    instance.stop()


def replies(port: int) -> Dict[str, int]:
    codes = {}
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("client.test")
        for recipient in RECIPIENTS:
            client.mail("someone@sender.test")
            codes[recipient] = client.rcpt(recipient)[0]
            client.rset()
    return codes


def test_subdomains_are_refused_exactly_as_relay_recipient_maps_refuses_them(
        lab: BackupMxLab, recipe: PostfixInstance) -> None:
    expected = replies(recipe.smtpd_port)
    assert expected["nobody@sub.example.test"] == 550  # the case that made backscatter
    assert expected["alice@example.test"] == 250
    ours = replies(lab.postfix.smtpd_port)  # primary down: valid users accepted
    assert ours == expected
    lab.primary(DOMAIN).start()
    try:
        eventually(lambda: lab.rcpt(f"alice@{DOMAIN}")[0], lambda code: code == 450)
        deferred = replies(lab.postfix.smtpd_port)
    finally:
        lab.primary(DOMAIN).stop()
    for recipient, code in expected.items():
        # primary up: Postfix's 550s stay 550; what it accepts, policyd sends to the primary
        assert deferred[recipient] == (550 if code == 550 else 450), recipient


def test_check_passes_relayed_subdomains_and_fails_relay_names_backupmx_does_not_judge(
        lab: BackupMxLab, tmp_path: Path) -> None:
    from backupmx.admin.setup_checks import check_domain_lists
    from backupmx.common.postfix import Postfix

    postfix = Postfix(str(lab.postfix.config_dir))
    values = postfix.postconf(expand=True)
    results = check_domain_lists([DOMAIN, "sub.example.test"], values)
    assert [r.status for r in results if r.check == "relay_domains"] == ["ok", "ok"]
    values["relay_domains"] = f"{DOMAIN}, other.test"
    results = check_domain_lists([DOMAIN], values)
    missing = [r for r in results if r.check == "relay_domains" and r.status == "fail"]
    assert missing and "other.test" in missing[0].message
