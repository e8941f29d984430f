"""postqueue -j parsing on samples captured from Postfix 3.7, and the reconciliation."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from backupmx.admin.queue import QueueFormatError, QueueSnapshot, compare, parse_queue, reconcile
from backupmx.milter.ledger import FLUSHED, LEFT, HeldRow, Ledger
from tests.harness.command_fakes import record

DATA = Path(__file__).parent.parent / "data"


def sample(name: str) -> str:
    return (DATA / f"postqueue-j-{name}.jsonl").read_text()


def test_parse_real_sample_with_deferred_hold_and_null_sender() -> None:
    messages = parse_queue(sample("deferred"))
    assert len(messages) == 5
    by_name = {}
    for message in messages:
        by_name.setdefault(message.queue_name, []).append(message)
    assert sorted(by_name) == ["deferred", "hold"]
    assert len(by_name["hold"]) == 1
    assert by_name["hold"][0].domains == frozenset({"b.test"})
    two = [m for m in messages if m.domains == {"a.test", "b.test"}]
    assert len(two) == 1 and two[0].message_size and two[0].message_size > 5000
    assert any(m.sender == "MAILER-DAEMON" for m in messages)
    assert all(m.arrival_time and len(m.queue_id) >= 10 for m in messages)
    assert all("Connection refused" in reason for m in messages for _, reason in m.recipients)


def test_after_flush_sample_keeps_only_the_other_domain() -> None:
    before = QueueSnapshot.from_text(sample("deferred"))
    after = QueueSnapshot.from_text(sample("after-flush-a"))
    two_domain_id = next(q for q, d in before.domains_by_id.items() if d == {"a.test", "b.test"})
    assert after.holds(two_domain_id, "b.test")
    assert not after.holds(two_domain_id, "a.test")
    assert all("a.test" not in domains for domains in after.domains_by_id.values())
    assert len(after.domains_by_id) == 3


def test_empty_queue() -> None:
    assert parse_queue(sample("empty")) == []
    assert QueueSnapshot.from_text("\n").domains_by_id == {}


@pytest.mark.parametrize("text", ["not json\n", '{"queue_name": "x"}\n', "[1, 2]\n",
                                  '{"queue_id": "A", "recipients": [{"no": 1}]}\n'])
def test_malformed_output_names_the_line(text: str) -> None:
    with pytest.raises(QueueFormatError, match="line 1"):
        parse_queue(text)


def row(message_id: int, queue_id: str, domain: str, received_at: float = 0.0,
        seen: bool = False) -> HeldRow:
    return HeldRow(message_id, queue_id, domain, received_at, seen)


def test_compare_per_domain_and_grace_for_unseen_rows() -> None:
    snapshot = QueueSnapshot({"Q1": frozenset({"b.test"}), "Q2": frozenset({"a.test"})})
    rows = [row(1, "Q1", "a.test"), row(1, "Q1", "b.test"),  # a.test delivered, b.test queued
            row(2, "Q2", "a.test", seen=True),                # queued, already seen
            row(3, "Q3", "a.test", received_at=990.0),        # young, never seen: not yet
            row(4, "Q4", "a.test", received_at=100.0),        # old, never seen: gone
            row(5, "Q5", "b.test", received_at=999.0, seen=True)]  # seen once, gone now
    result = compare(rows, snapshot, now=1000.0, grace=60.0)
    assert set(result.gone) == {(1, "a.test"), (4, "a.test"), (5, "b.test")}
    assert result.seen == (1,)
    assert result.still_held == {"a.test": 2, "b.test": 1}
    assert Counter(domain for _, domain in result.gone) == {"a.test": 2, "b.test": 1}


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(str(tmp_path / "ledger.sqlite3"))
    yield opened
    opened.close()


def states(ledger: Ledger) -> dict:
    rows = ledger._connection().execute(
        "SELECT m.queue_id, md.domain, md.state, md.flush_id FROM message_domains md "
        "JOIN messages m ON m.id = md.message_id")
    return {(q, d): (s, f) for q, d, s, f in rows}


def test_reconcile_marks_left_outside_a_flush_and_flushed_during_one(ledger: Ledger) -> None:
    ledger.record(record("Q1", a_test="alice@a.test", b_test="bob@b.test"))
    ledger.record(record("Q2"))
    ledger.record(record("Q3"))
    queue = QueueSnapshot({"Q1": frozenset({"a.test", "b.test"}), "Q2": frozenset({"a.test"}),
                           "Q3": frozenset({"a.test"})})
    reconcile(ledger, queue, now=200.0)  # everything seen, nothing gone
    assert all(s == ("held", None) for s in states(ledger).values())

    queue = QueueSnapshot({"Q1": frozenset({"b.test"}), "Q3": frozenset({"a.test"})})
    result = reconcile(ledger, queue, now=201.0)  # Q2 went by itself (a retry delivered it)
    assert Counter(domain for _, domain in result.gone) == {"a.test": 2}
    flush_id = ledger.start_flush("a.test", "manual", False, "up", 1, now=202.0)
    result = reconcile(ledger, QueueSnapshot({"Q1": frozenset({"b.test"})}), now=203.0,
                       flush_id=flush_id, domain="a.test")
    assert result.still_held == {}
    assert states(ledger) == {("Q1", "a.test"): (LEFT, None), ("Q2", "a.test"): (LEFT, None),
                              ("Q1", "b.test"): ("held", None),
                              ("Q3", "a.test"): (FLUSHED, flush_id)}
    assert ledger.count_flushed(flush_id) == 1
    summaries = ledger.summaries()
    assert "a.test" not in summaries and summaries["b.test"].held_messages == 1


def test_reconcile_replays_the_journal_first(ledger: Ledger) -> None:
    ledger.journal.append(record("JQ"))
    result = reconcile(ledger, QueueSnapshot({"JQ": frozenset({"a.test"})}), now=150.0)
    assert result.still_held == {"a.test": 1}
    assert not ledger.journal.pending()


@pytest.mark.parametrize("name", ["deferred", "after-flush-a", "empty"])
def test_fast_snapshot_agrees_with_the_full_parse(name: str) -> None:
    text = sample(name)
    assert QueueSnapshot.from_text(text) == QueueSnapshot.from_messages(parse_queue(text))


def test_keys_inside_strings_do_not_fool_the_snapshot() -> None:
    line = json.dumps({
        "queue_name": "deferred", "queue_id": "ABC123",
        "sender": 'x"queue_id": "EVIL", {"address": "y@b.test"}',
        "recipients": [{"address": 'al"ice"@a.test',
                        "delay_reason": '{"address": "z@c.test"} "queue_id": "EVIL2"'}]})
    snapshot = QueueSnapshot.from_text(line + "\n")
    assert snapshot.domains_by_id == {"ABC123": frozenset({"a.test"})}


def test_other_layouts_get_the_full_parse() -> None:
    compact = '{"queue_id":"Q9","recipients":[{"address":"u@A.test"}]}\n'
    assert QueueSnapshot.from_text(compact).domains_by_id == {"Q9": frozenset({"a.test"})}
    with pytest.raises(QueueFormatError):
        QueueSnapshot.from_text('{"queue_id": "Q1", "recipients": [{"addr": 1}]}\n')
