"""Reconciliation adopts what Postfix holds for a relay domain and the ledger never recorded.

The milter cannot record a message while it is down or restarting, or when libmilter ends its
session before the message (after ``XCLIENT ADDR=[UNAVAILABLE]``). ``status``, ``flush`` and
``flush --auto`` reconcile with ``postqueue -j`` first; these tests run that reconciliation on a
real ledger with samples captured from Postfix 3.7 and with a fake queue.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from backupmx.admin.flush import flush_command, flush_domain
from backupmx.admin.queue import QueueSnapshot, reconcile
from backupmx.admin.status import collect_status, render_table
from backupmx.milter.ledger import Ledger
from tests.harness.command_fakes import FakeClock, FakePostfix, ScriptedProber, make_context, record

DATA = Path(__file__).parent.parent / "data"
RELAY = {"a.test": None, "b.test": None}


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(str(tmp_path / "ledger.sqlite3"))
    yield opened
    opened.close()


def rows(ledger: Ledger) -> dict:
    query = ("SELECT m.queue_id, md.domain, m.received_at, m.sender, m.size, md.recipients,"
             " md.state, md.adopted_at, m.seen_in_queue_at, m.client_addr FROM messages m"
             " JOIN message_domains md ON md.message_id = m.id")
    return {(r[0], r[1]): r[2:] for r in ledger._connection().execute(query)}


def queue_line(queue_id: str, *recipients: str, arrival: int = 100, sender: str = "s@x.test",
               size: int = 500) -> str:
    return json.dumps({"queue_name": "deferred", "queue_id": queue_id, "arrival_time": arrival,
                       "message_size": size, "sender": sender,
                       "recipients": [{"address": r, "delay_reason": "refused"}
                                      for r in recipients]}) + "\n"


def test_real_queue_sample_is_adopted_whole_into_an_empty_ledger(ledger: Ledger) -> None:
    text = (DATA / "postqueue-j-deferred.jsonl").read_text()
    queued = [json.loads(line) for line in text.splitlines()]
    result = reconcile(ledger, QueueSnapshot.from_text(text), now=2e9, relay_domains=RELAY)
    assert result.still_held == {"a.test": 3, "b.test": 3}
    assert len(result.adopted) == 6
    stored = rows(ledger)
    for message in queued:
        for address in (r["address"] for r in message["recipients"]):
            domain = address.split("@")[1]
            received_at, sender, size, recipients, state, adopted_at, seen, client = \
                stored[(message["queue_id"], domain)]
            assert received_at == message["arrival_time"] and size == message["message_size"]
            assert sender == ("" if message["sender"] == "MAILER-DAEMON" else message["sender"])
            assert address in recipients.split("\n")
            assert (state, adopted_at, seen, client) == ("held", 2e9, 2e9, "")
    summaries = ledger.summaries()
    assert (summaries["a.test"].held_messages, summaries["a.test"].adopted_messages) == (3, 3)
    # the next reconciliation knows them all: nothing adopted twice
    again = reconcile(ledger, QueueSnapshot.from_text(text), now=2e9 + 5, relay_domains=RELAY)
    assert again.adopted == () and again.still_held == result.still_held
    assert len(rows(ledger)) == 6


def test_only_relay_recipients_of_unknown_messages_are_adopted(ledger: Ledger) -> None:
    ledger.record(record("KNOWN", received_at=100.5))
    text = (queue_line("KNOWN", "alice@a.test") + queue_line("OTHER", "x@elsewhere.test")
            + queue_line("MIXED", "x@elsewhere.test", "bob@b.test", "Bob@B.TEST")
            + queue_line("SUB", "carol@lists.a.test"))
    result = reconcile(ledger, QueueSnapshot.from_text(text), now=300.0, relay_domains=RELAY)
    adopted = {pair for pair in rows(ledger) if rows(ledger)[pair][5] is not None}
    assert adopted == {("MIXED", "b.test")} == set(result.adopted)
    assert rows(ledger)[("MIXED", "b.test")][3] == "bob@b.test\nBob@B.TEST"
    assert result.still_held == {"a.test": 1, "b.test": 1}


def test_reused_queue_id_is_a_new_message_but_a_left_row_is_not_adopted_again(
        ledger: Ledger) -> None:
    ledger.record(record("REUSED", received_at=50.0))     # an earlier message with this id
    ledger.record(record("LEFT", received_at=100.5, b_test="bob@b.test"))
    ledger.apply_reconciliation([(1, "a.test"), (2, "b.test")], [], now=150.0)  # both left
    text = queue_line("REUSED", "alice@a.test") + queue_line("LEFT", "bob@b.test")
    result = reconcile(ledger, QueueSnapshot.from_text(text), now=200.0, relay_domains=RELAY)
    assert result.adopted == (("REUSED", "a.test"),)
    ids = ledger._connection().execute(
        "SELECT COUNT(*) FROM messages WHERE queue_id = 'REUSED'").fetchone()[0]
    assert ids == 2


def test_a_domain_the_milter_did_not_record_is_added_to_its_message(ledger: Ledger) -> None:
    ledger.record(record("Q1", received_at=100.2))  # the milter knew only a.test then
    text = queue_line("Q1", "alice@a.test", "bob@b.test")
    result = reconcile(ledger, QueueSnapshot.from_text(text), now=200.0, relay_domains=RELAY)
    assert result.adopted == (("Q1", "b.test"),)
    assert ledger._connection().execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1
    assert {d: s.held_messages for d, s in ledger.summaries().items()} == \
        {"a.test": 1, "b.test": 1}


def test_reconcile_for_one_domain_adopts_only_that_domain(ledger: Ledger) -> None:
    text = queue_line("Q1", "alice@a.test", "bob@b.test")
    result = reconcile(ledger, QueueSnapshot.from_text(text), now=200.0, domain="b.test",
                       relay_domains=RELAY)
    assert result.adopted == (("Q1", "b.test"),) and result.still_held == {"b.test": 1}
    reconcile(ledger, QueueSnapshot.from_text(text), now=201.0, relay_domains=RELAY)
    assert set(rows(ledger)) == {("Q1", "a.test"), ("Q1", "b.test")}
    assert ledger._connection().execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1


def test_without_relay_domains_nothing_is_adopted(ledger: Ledger) -> None:
    result = reconcile(ledger, QueueSnapshot.from_text(queue_line("Q1", "alice@a.test")),
                       now=200.0)
    assert result.adopted == () and rows(ledger) == {}


def test_status_shows_and_flush_flushes_adopted_mail(tmp_path: Path) -> None:
    postfix, prober, clock = FakePostfix(), ScriptedProber({"a.test": "up"}), FakeClock(1000.0)
    ctx = make_context(tmp_path, postfix, prober, clock)
    Ledger(ctx.config.milter.ledger).open().close()  # the milter created it, recorded nothing
    postfix.add("LOST1", "alice@a.test", arrival=900)
    postfix.add("LOST2", "bob@a.test", "carol@b.test", arrival=950)
    status = collect_status(ctx)
    by_domain = {row["domain"]: row for row in status["domains"]}
    assert (by_domain["a.test"]["held_messages"], by_domain["a.test"]["adopted_messages"]) == \
        (2, 2)
    assert by_domain["a.test"]["oldest_held_seconds"] == 100
    assert by_domain["a.test"]["held_bytes"] == 1000
    assert "2 (2 adopted)" in render_table(status)
    postfix.deliver["a.test"] = True
    outcome = flush_domain(ctx, "a.test")
    assert (outcome.held_before, outcome.delivered, outcome.remaining) == (2, 2, 0)
    ctx.out = io.StringIO()
    assert flush_command(ctx, None, auto=True, force=False, wait=1.0) == 0
    assert "nothing held" not in ctx.out.getvalue()  # b.test's adopted message is held
    assert "b.test: 1 held, primary down: not flushed" in ctx.out.getvalue()
    ctx.close()


def test_a_milter_record_arriving_after_adoption_completes_the_adopted_row(
        ledger: Ledger) -> None:
    """The milter's write waited in the journal (ledger busy) while status adopted the message:
    the late record fills in the adopted row; the message is never counted twice."""
    reconcile(ledger, QueueSnapshot.from_text(queue_line("LATE", "alice@a.test", arrival=100)),
              now=150.0, relay_domains=RELAY)
    ledger.write([record("LATE", received_at=100.4, a_test="alice@a.test")])
    stored = rows(ledger)
    assert list(stored) == [("LATE", "a.test")]
    received_at, _, _, _, state, adopted_at, seen, client = stored[("LATE", "a.test")]
    assert (received_at, state, adopted_at, seen, client) == (100.4, "held", None, 150.0,
                                                              "192.0.2.1")
    assert ledger.summaries()["a.test"].held_messages == 1
    # gone from the queue: reconciled away like any other message, nothing left held
    reconcile(ledger, QueueSnapshot.from_text(""), now=160.0, relay_domains=RELAY)
    assert ledger.summaries().get("a.test") is None or \
        ledger.summaries()["a.test"].held_messages == 0


def test_flushing_one_domain_reads_no_other_domains_mail(ledger: Ledger,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    text = "".join(queue_line(f"B{n}", f"u{n}@b.test") for n in range(50))
    snapshot = QueueSnapshot.from_text(text)
    reconcile(ledger, snapshot, now=200.0, relay_domains=RELAY)  # all 50 adopted for b.test
    read: List[str] = []
    full_message = QueueSnapshot.message

    def message(self: QueueSnapshot, queue_id: str) -> Any:
        read.append(queue_id)
        return full_message(self, queue_id)

    monkeypatch.setattr(QueueSnapshot, "message", message)
    result = reconcile(ledger, snapshot, now=201.0, domain="a.test", relay_domains=RELAY)
    assert result.adopted == () and result.still_held == {}
    assert read == []  # flush polls this often: no message is parsed again for it
    assert reconcile(ledger, snapshot, now=202.0, relay_domains=RELAY).still_held == \
        {"b.test": 50}
    assert read == []  # every b.test message is held: nothing to read either
