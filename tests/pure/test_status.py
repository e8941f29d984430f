"""backupmx status: Postfix time units, the document, the table, the command line."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from backupmx.admin.main import build_parser, main
from backupmx.admin.primaries import PrimaryState
from backupmx.admin.status import build_status, render_table, show_status
from backupmx.milter.ledger import DomainSummary, FlushEvent, Ledger
from tests.harness.command_fakes import FakeClock, FakePostfix, ScriptedProber, make_context, record


def flush_event() -> FlushEvent:
    return FlushEvent(7, "a.test", "auto", False, "up", 400.0, 401.0, 5, 5, 0, "complete", "")


def test_build_status_shape_and_bounce_countdown() -> None:
    status = build_status(
        ["b.test", "a.test"],
        {"a.test": DomainSummary("a.test", 6, 8123, 1000.0 - 3600),
         "gone.test": DomainSummary("gone.test", 1, 10, 900.0)},
        {"a.test": PrimaryState("down", "[10.0.0.1]:25"),
         "b.test": PrimaryState("up", "[10.0.0.2]:25")},
        {"a.test": flush_event()}, lifetime=432000, now=1000.0)
    rows = {r["domain"]: r for r in status["domains"]}
    assert [r["domain"] for r in status["domains"]] == ["a.test", "b.test", "gone.test"]
    a = rows["a.test"]
    assert {k: a[k] for k in ("primary", "held_messages", "held_bytes", "oldest_held_seconds",
                              "bounces_in_seconds")} == \
        {"primary": "down", "held_messages": 6, "held_bytes": 8123, "oldest_held_seconds": 3600,
         "bounces_in_seconds": 432000 - 3600}
    assert a["last_flush"]["id"] == 7 and a["last_flush"]["result"] == "complete"
    b = rows["b.test"]
    assert (b["held_messages"], b["held_bytes"], b["oldest_held_seconds"],
            b["bounces_in_seconds"], b["last_flush"]) == (0, 0, None, None, None)
    assert rows["gone.test"]["configured"] is False
    assert rows["gone.test"]["primary"] == "unknown"
    json.dumps(status)


def test_bounce_countdown_never_negative_and_unknown_lifetime() -> None:
    summary = {"a.test": DomainSummary("a.test", 1, 1, 0.0)}
    late = build_status(["a.test"], summary, {}, {}, lifetime=100, now=1000.0)
    assert late["domains"][0]["bounces_in_seconds"] == 0
    unknown = build_status(["a.test"], summary, {}, {}, lifetime=None, now=1000.0)
    assert unknown["domains"][0]["bounces_in_seconds"] is None


def test_table_for_people() -> None:
    status = build_status(["a.test", "b.test"],
                          {"a.test": DomainSummary("a.test", 6, 8123, 1000.0 - 93784)},
                          {"a.test": PrimaryState("up", "x")}, {"a.test": flush_event()},
                          lifetime=432000, now=1000.0, warnings=["queue unreadable"])
    lines = render_table(status).splitlines()
    assert lines[0].split() == ["DOMAIN", "PRIMARY", "HELD", "BYTES", "OLDEST", "BOUNCES",
                                "IN", "RECIPIENTS", "LAST", "FLUSH"]
    assert lines[1].split()[:6] == ["a.test", "up", "6", "7.9", "KiB", "1d02h"]
    assert "10m00s ago, auto: complete, 5 left, 0 remain" in lines[1]
    assert lines[2].split()[:4] == ["b.test", "unknown", "0", "0"]
    assert lines[2].rstrip().endswith("never")
    assert lines[3] == "warning: queue unreadable"


def test_show_status_reconciles_and_prints_json(tmp_path: Path) -> None:
    postfix, clock = FakePostfix(), FakeClock(1000.0)
    ctx = make_context(tmp_path, postfix, ScriptedProber({"a.test": "up"}), clock)
    ledger = Ledger(ctx.config.milter.ledger)
    # sizes as the milter records them: no SIZE= (0), a declared SIZE= (190); the queue's
    # message_size is the exact figure status shows
    ledger.record(record("Q1", received_at=900.0, size=0))
    ledger.record(record("Q2", received_at=950.0, size=190, a_test="a@a.test", b_test="b@b.test"))
    ledger.record(record("Q3", received_at=800.0, size=50))  # no longer queued
    postfix.add("Q1", "alice@a.test", size=300)
    postfix.add("Q2", "a@a.test", "b@b.test", size=200)
    assert show_status(ctx, as_json=True) == 0
    status = json.loads(ctx.out.getvalue())  # type: ignore[attr-defined]
    rows = {r["domain"]: r for r in status["domains"]}
    assert (rows["a.test"]["held_messages"], rows["a.test"]["held_bytes"]) == (2, 500)
    assert (rows["b.test"]["held_messages"], rows["b.test"]["held_bytes"]) == (1, 200)
    assert rows["a.test"]["oldest_held_seconds"] == 100
    assert rows["a.test"]["bounces_in_seconds"] == 432000 - 100
    assert (rows["a.test"]["primary"], rows["b.test"]["primary"]) == ("up", "down")
    assert status["warnings"] == []
    ledger.close()


def test_status_still_answers_when_ledger_and_queue_fail(tmp_path: Path) -> None:
    postfix = FakePostfix()
    postfix.queue_error = "postqueue: fatal: Queue report unavailable"
    del postfix.parameters["maximal_queue_lifetime"]
    ctx = make_context(tmp_path, postfix, ScriptedProber(), FakeClock())
    assert show_status(ctx) == 0
    text = ctx.out.getvalue()  # type: ignore[attr-defined]
    assert "no ledger yet" in text and "maximal_queue_lifetime unknown" in text
    created = Ledger(ctx.config.milter.ledger)
    created.held_rows()
    created.close()
    ctx.close()
    ctx2 = make_context(tmp_path, postfix, ScriptedProber(), FakeClock())
    show_status(ctx2)
    assert "counts not reconciled" in ctx2.out.getvalue()  # type: ignore[attr-defined]


def test_parser_has_status_and_flush_and_room_for_more() -> None:
    parser = build_parser()
    args = parser.parse_args(["-c", "/x.conf", "status", "--json"])
    assert (args.config, args.command, args.json) == ("/x.conf", "status", True)
    args = parser.parse_args(["flush", "a.test", "--force", "--wait", "3"])
    assert (args.domain, args.force, args.wait, args.auto) == ("a.test", True, 3.0, False)
    assert parser.parse_args(["flush", "--auto"]).auto
    with pytest.raises(SystemExit):
        parser.parse_args(["flush", "a.test", "--auto"])


def test_config_error_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("[milter]\nledgr = /x\n")
    assert main(["-c", str(bad), "status"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "ledgr" in err and ":2:" in err


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("backupmx ")
    assert sys.modules["backupmx.admin.main"]


def test_recipient_snapshot_age_per_domain(tmp_path: Path) -> None:
    from backupmx.admin.status import recipient_snapshots
    from backupmx.common.config import parse_config
    from backupmx.common.snapshots import DomainState, SourceState
    config = parse_config(
        f"[policyd]\nstate_directory = {tmp_path}\n[recipients a]\ntype = push\n"
        "stale_after = 100\n[recipients b]\ntype = push\ndomains = a.test\n"
        "stale_after = 20\n[domains]\na.test = mx\nb.test = mx\nc.test = mx\n")
    states = {"a": SourceState("a", "push", domains={"a.test": DomainState(3, 850.0),
                                                      "b.test": DomainState(3, 800.0)}),
              "b": SourceState("b", "push", domains={"a.test": DomainState(3, 990.0)})}
    rows = recipient_snapshots(config, states, 1000.0)
    assert rows["a.test"] == {"snapshot_age_seconds": 10.0, "fresh": True}
    assert rows["b.test"] == {"snapshot_age_seconds": 200.0, "fresh": False}
    assert rows["c.test"] == {"snapshot_age_seconds": None, "fresh": False}
    status = build_status(["b.test"], {}, {}, {}, None, 1000.0)
    status["domains"][0]["recipients"] = rows["b.test"]
    assert "STALE 3m20s" in render_table(status)
