"""Two backup MXes for the same two relay domains, one fleet store: the ``backupmx`` commands on
real private Postfix instances, each with its own milter, ledger and host_id, fake primaries, and
the private PostgreSQL (stopped and started again by the outage step).

One scenario, in order, because each step starts from what the previous left: held mail on both
hosts in ``status --fleet``; ``flush a.test --fleet`` carried out by both hosts; PostgreSQL
stopped during a burst; one host killed and shown stale.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
from typing import Dict, Iterator, List, Tuple

import pytest

from tests.harness.lab import BackupMxLab, eventually
from tests.harness.servers import Postgres
from tests.integration.conftest import require_postfix
from tests.integration.fleet.conftest import FleetDatabase, new_database

A, B = "a.test", "b.test"


def backupmx(lab: BackupMxLab, *args: str) -> subprocess.CompletedProcess:
    return lab.command(*args, timeout=180)


def ok(lab: BackupMxLab, *args: str) -> str:
    result = backupmx(lab, *args)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def fleet_view(lab: BackupMxLab) -> dict:
    return json.loads(ok(lab, "status", "--fleet", "--json"))


def cells(document: dict) -> Dict[Tuple[str, str], int]:
    return {(d["domain"], h["host_id"]): h["held_messages"]
            for d in document["domains"] for h in d["hosts"]}


def totals(document: dict) -> Dict[str, int]:
    return {d["domain"]: d["held_messages"] for d in document["domains"]}


def host_row(document: dict, domain: str, host_id: str) -> dict:
    return next(h for d in document["domains"] if d["domain"] == domain for h in d["hosts"]
                if h["host_id"] == host_id)


def ledger_held(lab: BackupMxLab) -> Dict[str, int]:
    with sqlite3.connect(lab.ledger_path) as conn:
        return dict(conn.execute("SELECT domain, COUNT(*) FROM message_domains"
                                 " WHERE state = 'held' GROUP BY domain").fetchall())


def ledger_messages(lab: BackupMxLab) -> int:
    with sqlite3.connect(lab.ledger_path) as conn:
        return conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]


@pytest.fixture(scope="module")
def store(fleet_role: Postgres, tmp_path_factory: pytest.TempPathFactory) -> FleetDatabase:
    return new_database(fleet_role, tmp_path_factory.mktemp("secret"))


@pytest.fixture(scope="module")
def hosts(store: FleetDatabase,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[BackupMxLab, BackupMxLab]]:
    require_postfix()
    # mx2 takes the default host_id, Postfix's myhostname, and pushes every 2 s (stale after 6).
    # policyd's own flush on return is off: this test hands the held mail back through the
    # fleet's flush request (tests/integration/test_flush_on_return.py tests the other way)
    manual = {"flush_on_return": "no"}
    one = BackupMxLab(tmp_path_factory.mktemp("mx1"), domains=[A, B], milter=True,
                      policyd_settings=manual, extra_config="\n" + store.section("mx1.test"))
    two = BackupMxLab(tmp_path_factory.mktemp("mx2"), domains=[A, B], milter=True,
                      policyd_settings=manual, extra_config="\n" + store.section(push_interval=2))
    try:
        one.start()
        two.start()
        yield one, two
    finally:
        one.close()
        two.close()


def send_all(lab: BackupMxLab, plan: List[List[str]]) -> List[str]:
    return [lab.send(rcpts, body=f"fleet message {n}\n") for n, rcpts in enumerate(plan)]


def test_fleet_of_two_backup_mxes(hosts: Tuple[BackupMxLab, BackupMxLab],
                                  store: FleetDatabase) -> None:
    one, two = hosts
    mx2 = two.postfix.run("postconf", "-h", "myhostname").stdout.strip()
    assert "schema upgraded from version 0" in ok(one, "fleet", "init")
    assert "is current" in ok(two, "fleet", "init")

    # ---- held mail on both hosts ----------------------------------------------------------
    send_all(one, [[f"alice@{A}"]] * 3 + [[f"bob@{B}"]] * 2)
    send_all(two, [[f"alice@{A}"]] * 2 + [[f"bob@{A}", f"alice@{B}"]])
    for lab, count in zip(hosts, (5, 3)):
        eventually(lab.postfix.queue, lambda q, count=count: len(q) >= count)
        assert "fleet push:" in ok(lab, "fleet", "push")
    document = fleet_view(one)
    assert cells(document) == {(A, "mx1.test"): 3, (A, mx2): 3, (B, "mx1.test"): 2, (B, mx2): 1}
    assert totals(document) == {A: 6, B: 3}
    a_total = next(d for d in document["domains"] if d["domain"] == A)
    assert a_total["held_bytes"] == sum(h["held_bytes"] for h in a_total["hosts"]) > 0
    for host in ("mx1.test", mx2):
        row = host_row(document, A, host)
        assert (row["primary"], row["stale"]) == ("down", False), row
    table = ok(two, "status", "--fleet")
    assert table.splitlines()[0].split() == ["DOMAIN", "HOST", "PRIMARY", "HELD", "BYTES",
                                             "LAST", "PUSH"]
    assert any(line.split()[:4] == [A, "(total)", "6", str(a_total["held_bytes"])]
               for line in table.splitlines())

    # ---- flush a.test on every host with one command ---------------------------------------
    one.primary(A).start()
    two.primary(A).start()
    requested = ok(one, "flush", A, "--fleet", "--wait", "30")
    assert "fleet flush request #1 recorded" in requested
    assert len(one.postfix.queue()) == 5  # nothing flushed until the host's next push
    for lab in hosts:
        pushed = ok(lab, "fleet", "push")
        assert f"fleet flush request #1: {A}: 3 messages left the queue, 0 still queued" \
            in pushed, pushed
    assert one.primary(A).wait_for(3) and two.primary(A).wait_for(3)
    assert (ledger_held(one).get(A, 0), ledger_held(two).get(A, 0)) == (0, 0)
    document = fleet_view(two)
    assert totals(document) == {A: 0, B: 3}
    request = document["flush_requests"][0]
    assert (request["id"], request["domain"], request["requested_by"]) == (1, A, "mx1.test")
    assert sorted((r["host_id"], r["result"], r["held_before"], r["delivered"], r["remaining"])
                  for r in request["results"]) == sorted([("mx1.test", "complete", 3, 3, 0),
                                                          (mx2, "complete", 3, 3, 0)])
    events = store.sql("SELECT host_id, trigger, delivered FROM flush_events"
                       " ORDER BY host_id").split()
    assert sorted(events) == sorted(["mx1.test|fleet|3", f"{mx2}|fleet|3"])

    # ---- PostgreSQL stopped during a burst --------------------------------------------------
    accepted: List[str] = []
    failures: List[str] = []

    def burst(lab: BackupMxLab, count: int) -> None:
        for n in range(count):
            try:
                accepted.append(lab.send([f"alice@{B}"], body=f"burst {n}\n"))
            except Exception as error:  # noqa: BLE001 (any failure fails the test below)
                failures.append(repr(error))

    workers = [threading.Thread(target=burst, args=(lab, 20)) for lab in hosts]
    for worker in workers:
        worker.start()
    store.server.stop()
    try:
        for lab in hosts:
            result = backupmx(lab, "fleet", "push")
            assert result.returncode == 1 and "fleet store:" in result.stderr, result
        result = backupmx(one, "flush", "--auto")  # the timer's run: flushing still works
        assert result.returncode == 0, result.stderr
        assert "the changes wait in the ledger" in result.stderr
        for worker in workers:
            worker.join(120)
        assert failures == [] and len(accepted) == 40
        local = json.loads(ok(one, "status", "--json", "--no-probe"))["fleet"]
        assert local["pending_changes"] >= 20 and "fleet store:" in local["last_error"]
        metrics = ok(one, "status", "--prometheus", "--no-probe")
        assert "backupmx_fleet_pending_changes" in metrics
    finally:
        store.server.start()
    assert ledger_held(one)[B] == 22 and ledger_held(two)[B] == 21
    ok(one, "flush", "--auto")  # the timer catches up
    ok(two, "fleet", "push")
    document = fleet_view(one)
    assert cells(document)[(B, "mx1.test")] == 22 and cells(document)[(B, mx2)] == 21
    assert totals(document) == {A: 0, B: 43}
    stored = dict(line.split("|") for line in store.sql(
        "SELECT host_id, count(*) FROM messages GROUP BY host_id").split())
    assert stored == {"mx1.test": str(ledger_messages(one)), mx2: str(ledger_messages(two))}
    local = json.loads(ok(one, "status", "--json", "--no-probe"))["fleet"]
    assert (local["pending_changes"], local["last_error"]) == (0, "")

    # ---- one host killed: stale, its last counts kept --------------------------------------
    two.close()
    document = eventually(lambda: fleet_view(one),
                          lambda d: host_row(d, B, mx2)["stale"], timeout=30, interval=0.5)
    row = host_row(document, B, mx2)
    assert (row["stale"], row["held_messages"]) == (True, 21)
    assert host_row(document, B, "mx1.test")["stale"] is False
    assert totals(document)[B] == 43
    assert "(stale)" in ok(one, "status", "--fleet")
