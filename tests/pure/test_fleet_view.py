"""``status --fleet``: the document built from the store's rows, its table, and the local push
state in ``status`` and ``status --prometheus``."""
from __future__ import annotations

import io
import json
from pathlib import Path

from backupmx.admin.context import CommandContext
from backupmx.admin.flush import flush_command
from backupmx.admin.status import show_status
from backupmx.common.config import parse_config
from backupmx.fleet import outbox
from backupmx.fleet.view import build_fleet_status, render_fleet_table
from backupmx.milter.ledger import Ledger, connect
from tests.harness.command_fakes import FakeClock, FakePostfix, ScriptedProber, record

NOW = 10_000.0
HOSTS = [("mx1.example.test", NOW - 12, 60.0, 0, 0.0, NOW),
         ("mx2.example.test", NOW - 181, 60.0, 40, 175.0, NOW),  # silent for > 3 intervals
         ("mx3.example.test", None, 60.0, 0, 0.0, NOW)]  # registered, never finished a push
HELD = [("example.test", "mx1.example.test", 4, 5000, NOW - 100),
        ("example.test", "mx2.example.test", 3, 4000, NOW - 300)]
STATES = [("example.test", "mx1.example.test", "down", "[192.0.2.1]:25"),
          ("example.test", "mx2.example.test", "down", "[192.0.2.1]:25"),
          ("other.test", "mx1.example.test", "up", "[192.0.2.2]:25")]


def test_document_has_the_issue_shape_with_totals_and_staleness() -> None:
    document = build_fleet_status(HOSTS, HELD, STATES, [])
    example, other = document["domains"]
    assert (example["domain"], example["held_messages"], example["held_bytes"]) == \
        ("example.test", 7, 9000)
    assert example["oldest_held_seconds"] == 300
    mx1, mx2 = example["hosts"]
    assert {k: mx1[k] for k in ("host_id", "held_messages", "held_bytes", "primary",
                                "last_push_seconds", "stale")} == {
        "host_id": "mx1.example.test", "held_messages": 4, "held_bytes": 5000,
        "primary": "down", "last_push_seconds": 12, "stale": False}
    assert (mx2["last_push_seconds"], mx2["stale"], mx2["held_messages"]) == (181, True, 3)
    assert other == {"domain": "other.test", "held_messages": 0, "held_bytes": 0,
                     "oldest_held_seconds": None, "hosts": [other["hosts"][0]]}
    assert other["hosts"][0]["primary"] == "up"
    hosts = {h["host_id"]: h for h in document["hosts"]}
    assert hosts["mx3.example.test"]["stale"] is True
    assert (hosts["mx2.example.test"]["pending_changes"],
            hosts["mx2.example.test"]["lag_seconds"]) == (40, 175)
    json.dumps(document)


def test_table_has_a_row_per_host_and_a_total_per_domain() -> None:
    requests = [{"id": 4, "domain": "example.test", "requested_at": NOW, "requested_by": "mx1",
                 "force": False, "results": [{"host_id": "mx1.example.test",
                                              "result": "complete"}]}]
    lines = render_fleet_table(build_fleet_status(HOSTS, HELD, STATES, requests)).splitlines()
    assert lines[1].split() == ["example.test", "mx1.example.test", "down", "4", "5000", "12s",
                                "ago"]
    assert lines[2].split() == ["example.test", "mx2.example.test", "down", "3", "4000", "181s",
                                "ago", "(stale)"]
    assert lines[3].split() == ["example.test", "(total)", "7", "9000"]
    assert lines[-1] == "flush request #4 example.test: mx1.example.test: complete"


def fleet_context(tmp_path: Path, fleet: bool = True) -> CommandContext:
    text = f"[milter]\nledger = {tmp_path / 'ledger.sqlite3'}\n[domains]\na.test = [127.0.0.1]:1\n"
    if fleet:
        text += "[fleet]\ndatabase = dbname=fleet\nhost_id = mx1.test\n"
    clock = FakeClock(1000.0)
    return CommandContext(config=parse_config(text, str(tmp_path / "backupmx.conf")),
                          postfix=FakePostfix(),  # type: ignore[arg-type]
                          probe=ScriptedProber(), probe_timeout=1.0, clock=clock,
                          sleep=clock.sleep, out=io.StringIO(), err=io.StringIO())


def test_status_shows_the_push_lag(tmp_path: Path) -> None:
    ctx = fleet_context(tmp_path)
    ledger = Ledger(ctx.config.milter.ledger).open()
    conn = connect(ledger.path)
    outbox.enable(conn)
    ledger.record(record("Q1"))
    ledger.record(record("Q2"))
    # still queued: status's reconciliation only takes their sizes from the queue (2 changes)
    for queue_id in ("Q1", "Q2"):
        ctx.postfix.add(queue_id, "alice@a.test")  # type: ignore[attr-defined]

    conn.execute("UPDATE fleet_outbox SET queued_at = 940.0")
    outbox.record_failure(conn, "fleet store: connection refused", 990.0)
    assert show_status(ctx, as_json=True, probe=False) == 0
    fleet = json.loads(ctx.out.getvalue())["fleet"]  # type: ignore[attr-defined]
    assert (fleet["pending_changes"], fleet["lag_seconds"], fleet["last_push_seconds"],
            fleet["last_error"]) == (4, 60, None, "fleet store: connection refused")
    ctx.out = io.StringIO()
    show_status(ctx, probe=False)
    assert "fleet push: last never, 4 changes pending (lag 1m00s); last error: fleet store: " \
           "connection refused" in ctx.out.getvalue()
    ctx.out = io.StringIO()
    show_status(ctx, probe=False, as_prometheus=True)
    metrics = ctx.out.getvalue()
    assert "backupmx_fleet_pending_changes 4.0" in metrics
    assert "backupmx_fleet_push_lag_seconds 60.0" in metrics
    ctx.close()
    conn.close()
    ledger.close()


def test_without_fleet_status_has_no_fleet_and_flush_auto_drops_an_old_outbox(
        tmp_path: Path) -> None:
    ctx = fleet_context(tmp_path, fleet=False)
    ledger = Ledger(ctx.config.milter.ledger).open()
    conn = connect(ledger.path)
    outbox.enable(conn)
    ledger.record(record("Q1"))
    assert outbox.state(conn).pending_changes == 1
    show_status(ctx, as_json=True, probe=False)
    assert "fleet" not in json.loads(ctx.out.getvalue())  # type: ignore[attr-defined]
    assert flush_command(ctx, None, True, False, 0.0) == 0
    assert outbox.state(conn).enabled is False and outbox.state(conn).pending_changes == 0
    ctx.close()
    conn.close()
    ledger.close()


def test_fleet_commands_without_fleet_say_so(tmp_path: Path) -> None:
    from backupmx.admin.fleet import push_command
    from backupmx.admin.flush import request_fleet_flush
    from backupmx.admin.status import show_fleet_status
    ctx = fleet_context(tmp_path, fleet=False)
    assert show_fleet_status(ctx) == 1
    assert request_fleet_flush(ctx, "a.test", False, 30.0) == 1
    assert push_command(ctx) == 1
    err = ctx.err.getvalue()  # type: ignore[attr-defined]
    assert err.count("no [fleet] section in") == 3
