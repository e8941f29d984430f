"""The fleet store against a real PostgreSQL: schema, push, resync, retention, view, leader.

No Postfix here: ledgers are filled through the milter's own Ledger.write, the push is the
library's; tests/integration/fleet/test_fleet_lab.py drives the commands on real Postfix hosts.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from backupmx.common.config import Config, parse_config
from backupmx.fleet import leader, outbox
from backupmx.fleet.push import push
from backupmx.fleet.schema import SCHEMA_VERSION, migrate
from backupmx.fleet.store import StoreError, connect
from backupmx.fleet.view import fleet_status
from backupmx.milter.envelope import MessageRecord
from backupmx.milter.ledger import Ledger
from backupmx.milter.ledger import connect as ledger_connect
from tests.harness.lab import eventually
from tests.integration.fleet.conftest import FleetDatabase

A, B = "a.test", "b.test"
REPO = Path(__file__).resolve().parents[3]
UP = {A: ("up", "[127.0.0.1]:25"), B: ("down", "[127.0.0.1]:26")}


def config(db: FleetDatabase, folder: Path, host_id: str, **fleet: object) -> Config:
    folder.mkdir(parents=True, exist_ok=True)
    text = (f"[milter]\nledger = {folder / 'ledger.sqlite3'}\n\n"
            f"{db.section(host_id, **fleet)}\n[domains]\n{A} = [127.0.0.1]:25\n"
            f"{B} = [127.0.0.1]:26\n")
    return parse_config(text, str(folder / "backupmx.conf"))


def record(n: int, domains: Tuple[str, ...] = (A,), size: int = 1000,
           at: float = 0.0) -> MessageRecord:
    return MessageRecord(f"Q{n:06X}", at or time.time(), "s@sender.test", size, "192.0.2.1",
                         "client.test", "client.test",
                         {d: (f"alice@{d}",) for d in domains})


def fill(cfg: Config, records: List[MessageRecord]) -> Ledger:
    ledger = Ledger(cfg.milter.ledger).open()
    ledger.write(records)
    return ledger


def push_host(cfg: Config, host: str):
    assert cfg.fleet is not None
    pg = connect(cfg.fleet)
    conn = ledger_connect(cfg.milter.ledger)
    try:
        return push(pg, conn, host, cfg.fleet.push_interval, cfg.fleet.retention, UP)
    finally:
        conn.close()
        pg.close()


def init(cfg: Config) -> Tuple[int, int]:
    assert cfg.fleet is not None
    pg = connect(cfg.fleet)
    try:
        return migrate(pg)
    finally:
        pg.close()


def view(cfg: Config) -> dict:
    assert cfg.fleet is not None
    pg = connect(cfg.fleet)
    try:
        return fleet_status(pg)
    finally:
        pg.close()


def cells(document: dict) -> Dict[Tuple[str, str], int]:
    return {(d["domain"], h["host_id"]): h["held_messages"]
            for d in document["domains"] for h in d["hosts"]}


def totals(document: dict) -> Dict[str, Tuple[int, int]]:
    return {d["domain"]: (d["held_messages"], d["held_bytes"]) for d in document["domains"]}


def test_init_creates_the_schema_once(fleet_db: FleetDatabase, tmp_path: Path) -> None:
    cfg = config(fleet_db, tmp_path, "mx1.test")
    assert init(cfg) == (0, SCHEMA_VERSION)
    assert init(cfg) == (SCHEMA_VERSION, SCHEMA_VERSION)
    tables = set(fleet_db.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                 .split())
    assert {"hosts", "messages", "message_domains", "domain_states", "flush_events",
            "flush_requests", "flush_request_results", "backupmx_schema"} <= tables


def test_push_before_init_says_what_to_run(fleet_db: FleetDatabase, tmp_path: Path) -> None:
    cfg = config(fleet_db, tmp_path, "mx1.test")
    fill(cfg, [record(1)]).close()
    with pytest.raises(StoreError, match="run backupmx fleet init"):
        push_host(cfg, "mx1.test")
    conn = ledger_connect(cfg.milter.ledger)
    assert "fleet init" in outbox.state(conn).last_error
    conn.close()


def test_two_hosts_push_counts_per_host_and_total_without_duplicates(
        fleet_db: FleetDatabase, tmp_path: Path) -> None:
    one = config(fleet_db, tmp_path / "one", "mx1.test")
    two = config(fleet_db, tmp_path / "two", "mx2.test")
    init(one)
    # Same queue ids on both hosts (they are unique only per host): still two messages each.
    fill(one, [record(1, (A,), 100), record(2, (A, B), 200), record(3, (B,), 300)]).close()
    fill(two, [record(1, (A,), 1000), record(2, (A,), 2000)]).close()
    first = push_host(one, "mx1.test")
    assert (first.changes, first.messages, first.domain_rows) == (3, 3, 4)
    push_host(two, "mx2.test")
    document = view(one)
    assert cells(document) == {(A, "mx1.test"): 2, (A, "mx2.test"): 2, (B, "mx1.test"): 2,
                               (B, "mx2.test"): 0}
    assert totals(document) == {A: (4, 3300), B: (2, 500)}
    row = next(h for d in document["domains"] if d["domain"] == A for h in d["hosts"]
               if h["host_id"] == "mx1.test")
    assert (row["primary"], row["stale"]) == ("up", False)
    assert 0 <= row["last_push_seconds"] <= 5

    # Nothing new: a second push stores nothing and counts nothing twice.
    again = push_host(one, "mx1.test")
    assert again.changes == 0
    assert totals(view(one)) == {A: (4, 3300), B: (2, 500)}

    # A message of host one leaves for a.test: the change is pushed, b.test's row stays held.
    ledger = Ledger(one.milter.ledger).open()
    message_id = next(r.message_id for r in ledger.held_rows(A) if r.queue_id == "Q000002")
    ledger.apply_reconciliation([(message_id, A)], [], time.time())
    ledger.close()
    assert push_host(one, "mx1.test").changes == 1
    assert totals(view(one)) == {A: (3, 3100), B: (2, 500)}
    assert fleet_db.sql("SELECT count(*) FROM messages").strip() == "5"


def test_a_store_that_lost_the_rows_gets_the_whole_ledger_again(
        fleet_db: FleetDatabase, tmp_path: Path) -> None:
    cfg = config(fleet_db, tmp_path, "mx1.test")
    init(cfg)
    fill(cfg, [record(n) for n in range(7)]).close()
    push_host(cfg, "mx1.test")
    fleet_db.sql("DROP TABLE hosts, messages, message_domains, domain_states, flush_events,"
                 " flush_requests, flush_request_results, notify_state, backupmx_schema CASCADE")
    init(cfg)  # a restored or new, empty store
    result = push_host(cfg, "mx1.test")
    assert result.resynced and result.messages == 7
    assert totals(view(cfg)) == {A: (7, 7000), B: (0, 0)}


def test_unreachable_store_leaves_the_changes_waiting(fleet_db: FleetDatabase,
                                                      tmp_path: Path) -> None:
    good = config(fleet_db, tmp_path, "mx1.test")
    init(good)
    text = Path(good.path).parent
    bad = parse_config(f"[milter]\nledger = {good.milter.ledger}\n[fleet]\n"
                       f"database = host={text}/nowhere dbname=x user=fleet\n")
    ledger = fill(good, [record(n) for n in range(3)])
    assert bad.fleet is not None
    with pytest.raises(StoreError, match="fleet store:"):
        connect(bad.fleet)
    # Changes made while the store is unreachable are only queued in the ledger.
    push_host(good, "mx1.test")
    ledger.write([record(n) for n in range(3, 10)])
    conn = ledger_connect(good.milter.ledger)
    waiting = outbox.state(conn)
    assert waiting.pending_changes == 7 and waiting.lag_seconds(time.time()) >= 0
    conn.close()
    assert push_host(good, "mx1.test").messages == 7
    assert totals(view(good))[A] == (10, 10000)
    ledger.close()


def test_retention_prunes_delivered_messages_here_and_in_the_store(
        fleet_db: FleetDatabase, tmp_path: Path) -> None:
    cfg = config(fleet_db, tmp_path, "mx1.test", retention="1d")
    init(cfg)
    old = time.time() - 3 * 86400
    ledger = fill(cfg, [record(1, at=old), record(2, at=old), record(3)])
    push_host(cfg, "mx1.test")
    ids = {r.queue_id: r.message_id for r in ledger.held_rows(A)}
    # Q1 left two days ago (pruned), Q2 left just now (kept), Q3 still held (kept).
    ledger.apply_reconciliation([(ids["Q000001"], A)], [], old + 86400)
    ledger.apply_reconciliation([(ids["Q000002"], A)], [], time.time())
    ledger.close()
    result = push_host(cfg, "mx1.test")
    assert (result.pruned_local, result.pruned_store) == (1, 1)
    conn = ledger_connect(cfg.milter.ledger)
    assert [r[0] for r in conn.execute("SELECT queue_id FROM messages ORDER BY id")] \
        == ["Q000002", "Q000003"]
    conn.close()
    assert fleet_db.sql("SELECT queue_id FROM messages ORDER BY local_id").split() \
        == ["Q000002", "Q000003"]


def test_a_silent_host_becomes_stale_with_its_last_counts(fleet_db: FleetDatabase,
                                                          tmp_path: Path) -> None:
    quick = config(fleet_db, tmp_path / "quick", "mx1.test", push_interval=0.3)
    init(quick)
    fill(quick, [record(n) for n in range(4)]).close()
    push_host(quick, "mx1.test")

    def host_row() -> dict:
        return next(h for d in view(quick)["domains"] if d["domain"] == A for h in d["hosts"])

    assert host_row()["stale"] is False
    row = eventually(host_row, lambda r: r["stale"], timeout=10)
    assert (row["stale"], row["held_messages"]) == (True, 4)


HOLD_LOCK = """
import sys, time
from backupmx.common.config import load_config
from backupmx.fleet import leader
with leader(load_config(sys.argv[1])) as held:
    print("held" if held else "not held", flush=True)
    time.sleep(600)
"""


def test_one_leader_at_a_time_and_a_dead_leader_releases(fleet_db: FleetDatabase,
                                                         tmp_path: Path) -> None:
    one = config(fleet_db, tmp_path / "one", "mx1.test")
    two = config(fleet_db, tmp_path / "two", "mx2.test")
    Path(one.path).write_text(f"[milter]\nledger = {one.milter.ledger}\n"
                              f"{fleet_db.section('mx1.test')}")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, one.path], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with leader(two) as may_send:
            assert may_send is False
        holder.send_signal(signal.SIGKILL)  # the leader dies without letting go
        holder.wait(10)
        assert eventually(lambda: _try(two), lambda held: held, timeout=10) is True
        with leader(two) as first, leader(one) as second:
            assert (first, second) == (True, False)
        with leader(one) as after_release:  # released when the block ended
            assert after_release is True
    finally:
        holder.kill()
        holder.wait()


def _try(cfg: Config) -> bool:
    with leader(cfg) as held:
        return held


def test_without_fleet_or_store_every_host_may_send(tmp_path: Path) -> None:
    assert _try(parse_config("")) is True
    unreachable = parse_config(f"[fleet]\ndatabase = host={tmp_path}/nowhere dbname=x\n")
    assert _try(unreachable) is True


def test_requests_a_host_cannot_carry_out_are_recorded_with_the_reason(
        fleet_db: FleetDatabase, tmp_path: Path) -> None:
    import io

    from backupmx.admin.context import CommandContext
    from backupmx.admin.fleet import run_push
    from backupmx.admin.flush import request_fleet_flush
    from backupmx.fleet.view import fleet_status as read_view
    from tests.harness.command_fakes import FakeClock, FakePostfix, ScriptedProber

    cfg = config(fleet_db, tmp_path, "mx1.test")
    init(cfg)
    Ledger(cfg.milter.ledger).open().close()
    postfix, clock = FakePostfix(), FakeClock(time.time())
    postfix.parameters["fast_flush_domains"] = f"{A}, {B}"
    prober = ScriptedProber({A: "up", B: "down"})
    ctx = CommandContext(config=cfg, postfix=postfix,  # type: ignore[arg-type]
                         probe=prober, probe_timeout=1.0, clock=clock, sleep=clock.sleep,
                         out=io.StringIO(), err=io.StringIO())
    reports = prober(cfg.domains, 1.0)
    assert run_push(ctx, reports) is not None  # joins the fleet
    for domain in (B, "c.test", A):
        assert request_fleet_flush(ctx, domain, False, 0.0) == 0
    assert run_push(ctx, reports) is not None
    assert run_push(ctx, reports) is not None  # answered once only
    assert postfix.flushed == [A]
    assert fleet_db.sql("SELECT count(*) FROM flush_request_results").strip() == "3"
    pg = connect(cfg.fleet)  # type: ignore[arg-type]
    results = {r["domain"]: r["results"][0] for r in read_view(pg)["flush_requests"]}
    pg.close()
    assert results[B]["result"] == "refused" and "is down" in results[B]["detail"]
    assert results["c.test"]["result"] == "refused"
    assert "not a relay domain" in results["c.test"]["detail"]
    assert (results[A]["result"], results[A]["held_before"], results[A]["remaining"]) == \
        ("complete", 0, 0)
    ctx.close()


def test_a_store_that_never_answers_costs_the_push_a_bounded_wait(
        tmp_path: Path) -> None:
    from tests.harness.servers import HangingServer

    hanging = HangingServer()
    try:
        cfg = parse_config(f"[milter]\nledger = {tmp_path / 'ledger.sqlite3'}\n[fleet]\n"
                           f"database = host=127.0.0.1 port={hanging.port} dbname=x user=x\n")
        fill(cfg, [record(1)]).close()
        assert cfg.fleet is not None
        # Without libpq's connect_timeout this would hang until pytest-timeout fails the test.
        with pytest.raises(StoreError, match="fleet store:.*timeout"):
            connect(cfg.fleet)
        with leader(cfg) as may_send:  # the notifier does not hang either: it sends
            assert may_send is True
    finally:
        hanging.close()


def test_check_reports_the_store_the_password_file_and_the_last_push(
        fleet_db: FleetDatabase, tmp_path: Path) -> None:
    from backupmx.admin.fleet_check import check_fleet

    def lines(cfg: Config) -> Dict[str, Tuple[str, str]]:
        return {r.check: (r.status, r.message) for r in check_fleet(cfg)}

    cfg = config(fleet_db, tmp_path, "mx1.test")
    fill(cfg, [record(1)]).close()
    found = lines(cfg)
    assert found["fleet password_file"][0] == "ok"
    assert found["fleet store"] == ("fail", f"schema version 0, this backupmx needs "
                                            f"{SCHEMA_VERSION}")
    assert found["fleet push"][0] == "warn" and "never pushed" in found["fleet push"][1]
    init(cfg)
    push_host(cfg, "mx1.test")
    Path(fleet_db.password_file).chmod(0o644)
    found = lines(cfg)
    assert found["fleet store"] == ("ok", f"reachable, schema version {SCHEMA_VERSION}")
    assert found["fleet push"][0] == "ok"
    assert found["fleet password_file"][0] == "warn"
    assert check_fleet(parse_config("")) == []


def test_one_host_id_is_one_ledger(fleet_db: FleetDatabase, tmp_path: Path) -> None:
    first = config(fleet_db, tmp_path / "first", "mx1.test", push_interval=0.3)
    second = config(fleet_db, tmp_path / "second", "mx1.test", push_interval=0.3)
    init(first)
    fill(first, [record(n) for n in range(5)]).close()
    fill(second, [record(n, (B,)) for n in range(2)]).close()
    push_host(first, "mx1.test")
    # A second host with the same host_id while the first still pushes: refused, nothing mixed.
    with pytest.raises(StoreError, match="host_id mx1.test is in use by another ledger"):
        push_host(second, "mx1.test")
    assert totals(view(first)) == {A: (5, 5000), B: (0, 0)}
    # Once the first ledger is silent (replaced: a new ledger whose ids start again), the new
    # one takes the host_id over: the old rows go, the new ledger is pushed whole.
    eventually(lambda: view(first)["hosts"][0]["stale"], lambda stale: stale, timeout=10)
    assert push_host(second, "mx1.test").messages == 2
    assert totals(view(first)) == {A: (0, 0), B: (2, 2000)}
