"""The ledger's fleet outbox (migration 5): what its triggers record, and when."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import List, Tuple

from backupmx.fleet import outbox
from backupmx.milter.ledger import Ledger, connect
from tests.harness.command_fakes import record


def rows(conn: sqlite3.Connection) -> List[Tuple[str, int]]:
    return conn.execute("SELECT kind, ref FROM fleet_outbox ORDER BY seq").fetchall()


def test_nothing_is_recorded_until_the_fleet_is_enabled(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "ledger.sqlite3")).open()
    ledger.record(record("Q1"))
    conn = connect(ledger.path)
    assert rows(conn) == [] and outbox.state(conn).enabled is False

    # Enabling queues what the ledger holds already, once.
    assert outbox.enable(conn) is True and outbox.enable(conn) is False
    assert rows(conn) == [("message", 1)]

    # From now on: every new message, state change and flush event, in the writer's transaction.
    ledger.record(record("Q2", a_test="a@a.test", b_test="b@b.test"))
    ledger.apply_reconciliation([(1, "a.test")], [2], 200.0)  # the sighting alone is no change
    flush_id = ledger.start_flush("a.test", "manual", False, "up", 1, 300.0)
    ledger.finish_flush(flush_id, 1, 0, "complete", "", 310.0)
    # (one row per new (message, domain) row: Q2 is for two domains)
    assert rows(conn) == [("message", 1), ("message", 2), ("message", 2), ("message", 1),
                          ("flush", flush_id), ("flush", flush_id)]
    state = outbox.state(conn)
    assert (state.pending_changes, state.pushed_seq) == (6, 0)
    assert state.lag_seconds(state.oldest_pending_at + 7) == 7  # type: ignore[operator]

    batches = list(outbox.batches(conn, 0, 4))
    assert [(b.last_seq, b.changes) for b in batches] == [(4, 4), (6, 2)]
    assert [m[1] for m in batches[0].messages] == ["Q1", "Q2"]
    assert sorted((d[0], d[1], d[3]) for d in batches[0].domains) == [
        (1, "a.test", "left"), (2, "a.test", "held"), (2, "b.test", "held")]
    assert batches[1].flushes[0][10] == "complete"

    outbox.acknowledge(conn, 4, 400.0)
    state = outbox.state(conn)
    assert (state.pending_changes, state.pushed_seq, state.last_success_at) == (2, 4, 400.0)
    outbox.record_failure(conn, "fleet store: connection refused", 500.0)
    assert outbox.state(conn).last_error == "fleet store: connection refused"

    # Without [fleet] again: recording stops and the outbox is dropped.
    assert outbox.disable(conn) is True
    ledger.record(record("Q3"))
    assert rows(conn) == [] and outbox.disable(conn) is False
    conn.close()
    ledger.close()


def test_sequence_numbers_are_never_reused(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "ledger.sqlite3")).open()
    conn = connect(ledger.path)
    outbox.enable(conn)
    ledger.record(record("Q1"))
    outbox.acknowledge(conn, 1, 10.0)
    ledger.record(record("Q2"))
    assert conn.execute("SELECT seq FROM fleet_outbox").fetchall() == [(2,)]
    conn.close()
    ledger.close()


def test_prune_keeps_held_and_recent_messages(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "ledger.sqlite3")).open()
    ledger.record(record("OLD", received_at=10.0))
    ledger.record(record("BOTH", received_at=10.0, a_test="a@a.test", b_test="b@b.test"))
    ledger.record(record("NEW", received_at=10.0))
    ledger.record(record("HELD", received_at=10.0))
    ledger.apply_reconciliation([(1, "a.test"), (2, "a.test")], [], 100.0)
    ledger.apply_reconciliation([(3, "a.test")], [], 5000.0)
    conn = connect(ledger.path)
    assert outbox.prune(conn, before=1000.0) == 1  # BOTH still held for b.test
    assert [r[0] for r in conn.execute("SELECT queue_id FROM messages ORDER BY id")] == [
        "BOTH", "NEW", "HELD"]
    assert conn.execute("SELECT COUNT(*) FROM message_domains WHERE message_id = 1"
                        ).fetchone()[0] == 0
    conn.close()
    ledger.close()


def test_a_late_milter_record_completing_an_adopted_message_is_queued(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "ledger.sqlite3")).open()
    conn = connect(ledger.path)
    outbox.enable(conn)
    conn.execute("INSERT INTO messages (id, queue_id, received_at, sender, size)"
                 " VALUES (7, 'QA', 100.0, '', 0)")
    conn.execute("INSERT INTO message_domains (message_id, domain, recipients, adopted_at)"
                 " VALUES (7, 'a.test', 'alice@a.test', 110.0)")
    conn.execute("DELETE FROM fleet_outbox")
    ledger.record(record("QA", received_at=100.5, size=4321))
    assert {ref for _, ref in rows(conn)} == {7} and rows(conn)
    batch = next(outbox.batches(conn, 0, 100))
    assert batch.messages[0][4] == 4321 and batch.domains[0][-1] is None  # size; adopted_at
    conn.close()
    ledger.close()
