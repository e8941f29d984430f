"""Learning from a flush, with the real Postfix, milter and policyd: when held mail is handed
to the primary, the recipients it accepted become valid callout results and the ones it refused
at RCPT become invalid ones, read from what Postfix itself logged of the delivery.

The domain has a hand-kept list (alice, bob, postmaster) and a ``callout`` source; the fake
primary knows alice and postmaster only, so bob's mail, accepted while the primary was down, is
refused when it is flushed.
"""
from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.lab import BackupMxLab, eventually
from tests.harness.postfix import free_port

pytestmark = pytest.mark.integration

DOMAIN = "example.test"
CALLOUT = f"[recipients verify]\ntype = callout\ndomains = {DOMAIN}\ntimeout = 10\n"
ALICE, BOB, NEVER = f"alice@{DOMAIN}", f"bob@{DOMAIN}", f"never@{DOMAIN}"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[BackupMxLab]:
    metrics = free_port()
    setup = BackupMxLab(
        tmp_path / "lab", milter=True, extra_config=CALLOUT,
        policyd_settings={"state_directory": str(tmp_path / "state"),
                          "metrics": f"inet:127.0.0.1:{metrics}",
                          "flush_on_return": "no",  # the admin's flush is what is tested
                          "max_shrink": "100%"})  # the list may lose alice and bob at once
    setup.metrics_port = metrics  # type: ignore[attr-defined]
    setup.primary(DOMAIN).users = {ALICE, f"postmaster@{DOMAIN}"}
    try:
        yield setup.start()
    finally:
        setup.close()


def backupmx(lab: BackupMxLab, *args: str) -> subprocess.CompletedProcess:
    return lab.command(*args)


def query(lab: BackupMxLab, address: str) -> str:
    result = backupmx(lab, "query", address, "--no-probe")
    assert result.returncode == 0, result.stderr
    return result.stdout


def accept_all(lab: BackupMxLab) -> object:
    """What the stored check with a random address found (None: not checked yet)."""
    result = backupmx(lab, "recipients", "status", "--json")
    assert result.returncode == 0, result.stderr
    row = next(s for s in json.loads(result.stdout)["sources"] if s["name"] == "verify")
    return row["domains"][0]["accept_all"]


def cache_entries(lab: BackupMxLab) -> dict:
    """policyd's in-memory cache sizes by status (its metrics)."""
    url = f"http://127.0.0.1:{lab.metrics_port}/metrics"  # type: ignore[attr-defined]
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {s.labels["status"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "backupmx_callout_cache_entries"}


def test_a_partly_refused_flush_records_both_outcomes(lab: BackupMxLab) -> None:
    assert eventually(lambda: lab.rcpt(ALICE)[0], lambda code: code == 250) == 250
    queue_id = lab.send([ALICE, BOB])  # both listed: accepted while the primary is down
    eventually(lab.postfix.queue, lambda q: [m["queue_name"] for m in q] == ["deferred"])
    assert cache_entries(lab) == {}

    lab.primary(DOMAIN).start()
    eventually(lambda: lab.rcpt(f"postmaster@{DOMAIN}"), lambda reply: reply[0] == 450)
    # an unlisted recipient while the primary is up: policyd's first callout session asks a
    # random address first, and the primary's refusal makes its valid answers count
    assert "Primary MX" in lab.rcpt(f"carol@{DOMAIN}")[1]
    eventually(lambda: accept_all(lab), lambda found: found is False)
    result = backupmx(lab, "flush", DOMAIN, "--wait", "30")
    assert result.returncode == 0, result.stderr
    assert "1 message left the queue" in result.stdout
    assert "learned 1 valid and 1 invalid recipients" in result.stdout, result.stdout
    assert lab.primary(DOMAIN).wait_for(1)
    assert [rcpts for _, rcpts, _ in lab.primary(DOMAIN).messages] == [[ALICE]]
    # what Postfix logged of the delivery is what was learned
    maillog = lab.postfix.maillog()
    assert f"{queue_id}: to=<{ALICE}>" in maillog and "status=sent" in maillog
    assert f"{queue_id}: to=<{BOB}>" in maillog and "(in reply to RCPT TO command)" in maillog
    assert "callout: valid, positive" in query(lab, ALICE)
    assert "callout: invalid, negative" in query(lab, BOB)

    # policyd takes the results the flush stored, without a restart
    # (carol: refused to policyd's own callout)
    assert eventually(lambda: cache_entries(lab), lambda sizes: sizes == {
        "valid": 1, "invalid": 2}, timeout=40) == {"valid": 1, "invalid": 2}

    # The list goes stale (alice and bob are dropped from it) and the primary goes down: what
    # the flush learned decides.
    lab.recipients_path.write_text(f"postmaster@{DOMAIN} OK\n")
    lab.primary(DOMAIN).stop()
    code, text = eventually(lambda: lab.rcpt(BOB), lambda reply: reply[0] == 550)
    assert code == 550 and "5.1.1" in text, (code, text)
    assert lab.rcpt(ALICE)[0] == 250
    code, text = lab.rcpt(NEVER)
    assert code == 450 and "4.1.1" in text, (code, text)
