"""Recipient callouts with the real Postfix and policyd: learning while the primary is up,
using what was learned while it is down (also after a policyd restart), greylisting, an
accept-all primary, and a dictionary burst from one client.

The domain has only a ``callout`` source (no recipient list at all: the case callouts exist
for); the fake primary knows ``dave@`` and ``postmaster@example.test`` and refuses every other
recipient at RCPT.
"""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.lab import BackupMxLab, eventually
from tests.harness.postfix import free_port

pytestmark = pytest.mark.integration

DOMAIN = "example.test"
CALLOUT = f"[recipients verify]\ntype = callout\ndomains = {DOMAIN}\ntimeout = 10\n"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[BackupMxLab]:
    metrics = free_port()
    setup = BackupMxLab(
        tmp_path / "lab", users=(), extra_config=CALLOUT,
        policyd_settings={"state_directory": str(tmp_path / "state"),
                          "metrics": f"inet:127.0.0.1:{metrics}"},
        # a dictionary attacker's 1,000 deferred RCPTs in one session, without error sleeps
        extra_main_cf={"smtpd_soft_error_limit": "2000", "smtpd_hard_error_limit": "2000",
                       "smtpd_error_sleep_time": "0", "smtpd_recipient_limit": "2000"})
    setup.metrics_port = metrics  # type: ignore[attr-defined]
    setup.primary(DOMAIN).users = {"dave@example.test", "postmaster@example.test"}
    try:
        yield setup.start()
    finally:
        setup.close()


def admin(lab: BackupMxLab, *args: str) -> Any:
    result = lab.command(*args, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if "--json" in args else result.stdout


def cached(lab: BackupMxLab, address: str) -> Dict[str, Any]:
    return admin(lab, "query", address, "--no-probe", "--json")["callout"]


def metrics(lab: BackupMxLab) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{lab.metrics_port}/metrics"  # type: ignore[attr-defined]
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def deferred_to_primary(reply: Tuple[int, str]) -> bool:
    return reply[0] == 450 and "Primary MX" in reply[1]


def wait_primary_up(lab: BackupMxLab) -> None:
    lab.primary(DOMAIN).start()
    reply = eventually(lambda: lab.rcpt("postmaster@example.test"), deferred_to_primary)
    assert deferred_to_primary(reply), reply


def wait_primary_down(lab: BackupMxLab, known: str) -> None:
    lab.primary(DOMAIN).stop()
    assert eventually(lambda: lab.rcpt(known)[0], lambda c: c == 250) == 250


def test_learned_while_up_then_used_while_down_and_after_a_restart(lab: BackupMxLab) -> None:
    wait_primary_up(lab)
    for address in ("dave@example.test", "zz@example.test"):
        assert deferred_to_primary(lab.rcpt(address))  # answered as today
    learned = eventually(lambda: (cached(lab, "dave@example.test")["status"],
                                  cached(lab, "zz@example.test")["status"]),
                         lambda found: found == ("valid", "invalid"))
    assert learned == ("valid", "invalid")
    asked = [address for _, address, _ in lab.primary(DOMAIN).callouts()]
    assert "dave@example.test" in asked and "zz@example.test" in asked
    assert not lab.primary(DOMAIN).messages  # a callout never sends DATA
    wait_primary_down(lab, "dave@example.test")
    code, text = lab.rcpt("zz@example.test")
    assert code == 550 and "5.1.1" in text
    code, text = lab.rcpt("never@example.test")
    assert code == 450 and "4.1.1" in text
    # the cache survives a restart of policyd, during the primary's outage
    assert lab.policyd is not None
    lab.policyd.stop()
    lab.start_policyd()
    assert lab.rcpt("dave@example.test")[0] == 250
    assert lab.rcpt("zz@example.test")[0] == 550
    assert lab.rcpt("never@example.test")[0] == 450
    query = cached(lab, "dave@example.test")
    assert query["verdict"] == "positive" and 0 <= query["age"] < 300
    status = admin(lab, "recipients", "status", "--json")
    row = next(s for s in status["sources"] if s["name"] == "verify")
    assert row["type"] == "callout"
    assert row["domains"][0]["valid"] == 2  # dave, and postmaster (asked while waiting)
    assert row["domains"][0]["invalid"] == 1
    assert row["domains"][0]["accept_all"] is False
    assert "callout: valid, positive, verified" in admin(lab, "query", "dave@example.test",
                                                          "--no-probe")


def test_greylisting_primary_nothing_cached_as_negative(lab: BackupMxLab) -> None:
    lab.primary(DOMAIN).greylist = True
    wait_primary_up(lab)
    for address in ("dave@example.test", "zz@example.test"):
        assert deferred_to_primary(lab.rcpt(address))
    # the random address, postmaster (asked while waiting), dave and zz
    assert lab.primary(DOMAIN).wait_for_callouts(4)
    samples = eventually(lambda: metrics(lab), lambda s: s.get(
        ("backupmx_callouts_total", (("domain", DOMAIN), ("result", "temporary"))), 0) >= 3)
    assert samples[("backupmx_callouts_total",
                    (("domain", DOMAIN), ("result", "temporary")))] == 3
    assert {code for _, _, code in lab.primary(DOMAIN).callouts()} == {450}
    assert cached(lab, "zz@example.test")["status"] is None
    lab.primary(DOMAIN).stop()
    code, text = eventually(lambda: lab.rcpt("zz@example.test"),
                            lambda reply: not deferred_to_primary(reply))
    assert code == 450 and "4.1.1" in text  # not verified: never 550 from a greylisting


def test_accept_all_primary_detected_and_callouts_stop(lab: BackupMxLab) -> None:
    lab.primary(DOMAIN).users = None  # accepts every recipient
    wait_primary_up(lab)  # its RCPT already causes the first callout session
    status = eventually(lambda: admin(lab, "recipients", "status", "--json"),
                        lambda s: s["sources"][-1]["domains"][0]["accept_all"] is True)
    assert status["sources"][-1]["domains"][0] == {
        "domain": DOMAIN, "valid": 0, "invalid": 0, "accept_all": True,
        "checked_at": status["sources"][-1]["domains"][0]["checked_at"]}
    assert lab.policyd is not None
    assert "callouts for example.test stop" in lab.policyd.log()
    asked = len(lab.primary(DOMAIN).callouts())
    # judged as if the domain had no verification source: no list either, so accepted
    # (policyd warns that no map covers it), and never asked about any more
    for address in ("other@example.test", "third@example.test"):
        assert lab.rcpt(address)[0] == 250
    samples = metrics(lab)  # a scrape runs on policyd's reactor after those requests
    assert samples[("backupmx_callout_accept_all", (("domain", DOMAIN),))] == 1
    assert len(lab.primary(DOMAIN).callouts()) == asked
    wait_primary_down(lab, "whoever@example.test")


def burst(lab: BackupMxLab, count: int) -> list:
    """``count`` distinct unknown recipients in one SMTP session from 127.0.0.1."""
    with lab.smtp() as client:
        client.mail("attacker@sender.test")
        return [client.rcpt(f"guess{i}@example.test") for i in range(count)]


def test_dictionary_burst_makes_at_most_the_capped_callouts(lab: BackupMxLab) -> None:
    wait_primary_up(lab)
    replies = burst(lab, 1000)
    assert all(code == 450 and b"Primary MX" in text for code, text in replies)
    samples = eventually(lambda: metrics(lab), lambda s: s.get(
        ("backupmx_callouts_total", (("domain", DOMAIN), ("result", "invalid"))), 0) >= 9)
    guessed = [a for _, a, _ in lab.primary(DOMAIN).callouts() if a.startswith("guess")]
    # client_rate = 10 callouts an hour for one client, whatever it sends; the client
    # (127.0.0.1) caused one already while waiting for the primary (postmaster@)
    assert len(guessed) == 9
    assert samples[("backupmx_callouts_skipped_total",
                    (("domain", DOMAIN), ("reason", "client_rate")))] == 991


def test_answers_never_wait_for_callouts_to_a_hanging_primary(lab: BackupMxLab) -> None:
    lab.primary(DOMAIN).hang = True  # greets (the prober is content), then never answers
    wait_primary_up(lab)
    replies = burst(lab, 200)
    assert all(code == 450 and b"Primary MX" in text for code, text in replies)
    samples = metrics(lab)
    # every answer came while the callout sessions still hung: none has a result yet
    assert samples[("backupmx_callout_sessions_total", (("domain", DOMAIN),))] >= 1
    assert not any(name == "backupmx_callouts_total" for name, _ in samples)
    finished = eventually(lambda: metrics(lab), lambda s: s.get(
        ("backupmx_callouts_total", (("domain", DOMAIN), ("result", "temporary"))), 0) >= 1,
        timeout=30)
    assert finished[("backupmx_callouts_total", (("domain", DOMAIN), ("result", "temporary")))]
    assert cached(lab, "guess0@example.test")["status"] is None
