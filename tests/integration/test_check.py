"""``backupmx check`` against the private Postfix instance and a local fake DNS server."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from tests.harness.lab import BackupMxLab

ZONE_SERVER = """
import sys
from twisted.internet import reactor
from twisted.names import dns
from tests.harness.dns_server import fake_dns
records = [
    ("example.test", dns.Record_MX(10, b"mx1.example.test")),
    ("example.test", dns.Record_MX(20, b"backupmx.test")),
    ("mx1.example.test", dns.Record_A("127.0.0.1")),
]
port, number = fake_dns(records)
print(number, flush=True)
reactor.run()
"""


@pytest.fixture(scope="module")
def nameserver() -> Iterator[str]:
    root = Path(__file__).resolve().parents[2]
    server = subprocess.Popen([sys.executable, "-c", ZONE_SERVER], cwd=root,
                              stdout=subprocess.PIPE, text=True)
    try:
        yield f"127.0.0.1:{int(server.stdout.readline())}"
    finally:
        server.terminate()
        server.wait(10)


def check(lab: BackupMxLab, nameserver: str, **main_cf: str) -> Tuple[int, List[dict]]:
    lab.postfix.extra_main_cf = {
        "smtpd_milters": f"{{ inet:127.0.0.1:{lab.milter_port}, default_action=accept }}",
        **main_cf}
    lab.postfix.write_config()
    result = subprocess.run([sys.executable, "-m", "backupmx.admin.main", "-c",
                             str(lab.config_path), "check", "--json", "--nameserver", nameserver],
                            capture_output=True, text=True, timeout=60)
    assert result.stderr == ""
    report = json.loads(result.stdout)
    assert report["ok"] is (result.returncode == 0)
    return result.returncode, report["checks"]


def test_check_passes_on_the_harness_setup_and_names_each_fix(tmp_path: Path,
                                                              nameserver: str) -> None:
    from tests.integration.conftest import require_postfix
    require_postfix()
    lab = BackupMxLab(tmp_path)  # Postfix need not run: check reads its configuration
    status, rows = check(lab, nameserver)
    assert status == 0, rows
    checks = {row["check"] for row in rows}
    assert {"relay_domains", "fast_flush_domains", "policy service", "policy timeout",
            "milter", "maximal_queue_lifetime", "flush service", "DNS example.test",
            "primary example.test", "maps"} <= checks
    assert all(row["status"] == "ok" for row in rows), rows

    status, rows = check(lab, nameserver, fast_flush_domains="", maximal_queue_lifetime="2d",
                         milter_default_action="tempfail", smtpd_milters=f"inet:127.0.0.1:"
                         f"{lab.milter_port}", mydestination="example.test")
    assert status == 1
    bad = {row["check"]: row for row in rows if row["status"] != "ok"}
    assert set(bad) == {"fast_flush_domains", "maximal_queue_lifetime", "milter",
                        "mydestination"}
    assert bad["maximal_queue_lifetime"]["status"] == "warn"
    assert all(row["fix"] for row in bad.values())
