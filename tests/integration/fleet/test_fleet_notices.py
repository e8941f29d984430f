"""[notify] with a fleet: one notice for a domain held on two hosts, judged on the fleet's totals
and the state kept in a real PostgreSQL store (tests/integration/fleet/conftest.py)."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import List

from backupmx.admin.context import CommandContext
from backupmx.admin.notify import notify
from backupmx.admin.primaries import PrimaryState
from backupmx.common.config import Config, parse_config
from backupmx.fleet.push import push
from backupmx.fleet.schema import migrate
from backupmx.fleet.store import connect
from backupmx.milter.envelope import MessageRecord
from backupmx.milter.ledger import Ledger
from backupmx.milter.ledger import connect as ledger_connect
from tests.harness.command_fakes import FakePostfix
from tests.integration.fleet.conftest import FleetDatabase

A = "a.test"


def host(db: FleetDatabase, folder: Path, host_id: str, sink: Path) -> Config:
    folder.mkdir(parents=True, exist_ok=True)
    command = folder / "notice"
    command.write_text(f"#!/bin/sh\ncat >> {sink}\necho >> {sink}\n")
    command.chmod(0o755)
    text = (f"[milter]\nledger = {folder / 'ledger.sqlite3'}\n\n{db.section(host_id)}\n"
            f"[notify]\ncommand = {command}\nheld_after = 0\n\n[domains]\n{A} = [127.0.0.1]:25\n")
    return parse_config(text, str(folder / "backupmx.conf"))


def hold_and_push(cfg: Config, host_id: str, queue_id: str) -> None:
    """One message held for a.test in the host's ledger, pushed to the store."""
    ledger = Ledger(cfg.milter.ledger).open()
    ledger.write([MessageRecord(queue_id, time.time() - 60, "s@sender.test", 1000, "192.0.2.1",
                                "client.test", "client.test", {A: (f"alice@{A}",)})])
    ledger.close()
    assert cfg.fleet is not None
    pg = connect(cfg.fleet)
    conn = ledger_connect(cfg.milter.ledger)
    try:
        push(pg, conn, host_id, 60, 30 * 86400, {A: ("down", "127.0.0.1")})
    finally:
        conn.close()
        pg.close()


def run_notify(cfg: Config) -> int:
    ctx = CommandContext(config=cfg, postfix=FakePostfix(), probe_timeout=1.0,  # type: ignore
                         out=io.StringIO(), err=io.StringIO())
    try:
        return notify(ctx, {A: PrimaryState("down", "127.0.0.1")})
    finally:
        ctx.close()


def notices(sink: Path) -> List[dict]:
    if not sink.exists():
        return []
    return [json.loads(line) for line in sink.read_text().splitlines() if line.strip()]


def test_a_domain_held_on_two_hosts_makes_one_notice(fleet_db: FleetDatabase,
                                                      tmp_path: Path) -> None:
    sink = tmp_path / "notices.jsonl"
    one = host(fleet_db, tmp_path / "mx1", "mx1.test", sink)
    two = host(fleet_db, tmp_path / "mx2", "mx2.test", sink)
    assert one.fleet is not None
    pg = connect(one.fleet)
    migrate(pg)
    pg.close()
    hold_and_push(one, "mx1.test", "Q1")
    hold_and_push(two, "mx2.test", "Q2")
    assert run_notify(one) == 1
    assert run_notify(two) == 0  # the fleet's state says "held" was sent
    sent = notices(sink)
    assert [(n["event"], n["domain"], n["held_messages"]) for n in sent] == [("held", A, 2)]
