"""The milter callbacks, driven by pymilter's own test context (no mail server)."""
from __future__ import annotations

from io import BytesIO
from typing import List

import Milter
import pytest
from Milter.testctx import TestCtx

TestCtx.__test__ = False  # pytest: not a test class

from backupmx.milter.app import NO_CONTENT, LedgerMilter, MilterSettings, milter_factory
from backupmx.milter.envelope import MessageRecord

NO_REPLY_BITS = (Milter.P_NR_CONN | Milter.P_NR_HELO | Milter.P_NR_MAIL | Milter.P_NR_RCPT
                 | Milter.P_NR_DATA | Milter.P_NR_UNKN | Milter.P_NR_EOH | Milter.P_NR_BODY
                 | Milter.P_NR_HDR)
SKIP_BITS = (Milter.P_NOCONNECT | Milter.P_NOHELO | Milter.P_NOMAIL | Milter.P_NORCPT
             | Milter.P_NODATA | Milter.P_NOUNKNOWN | Milter.P_NOEOH | Milter.P_NOBODY
             | Milter.P_NOHDRS)
MESSAGE = (b"From: <sender@outside.test>\r\nTo: alice@a.test\r\nSubject: hello\r\n"
           b"\r\nline one\r\nline two\r\n")


class FakeLedger:
    def __init__(self, answer: str = "ledger") -> None:
        self.records: List[MessageRecord] = []
        self.answer = answer

    def record(self, record: MessageRecord) -> str:
        self.records.append(record)
        if self.answer == "raise":
            raise RuntimeError("boom")
        return self.answer


@pytest.fixture
def ledger(monkeypatch: pytest.MonkeyPatch) -> FakeLedger:
    fake = FakeLedger()
    monkeypatch.setattr(Milter, "factory",
                        milter_factory(fake, ["a.test", "B.test"], clock=lambda: 1000.0))
    # TestCtx treats NOREPLY as "stop here"; offer an MTA without no-reply support, so the
    # @noreply callbacks answer CONTINUE (what they do with MTAs that cannot skip replies).
    monkeypatch.setattr(TestCtx, "default_opts",
                        [Milter.CURR_ACTS, 0x1fffff & ~NO_REPLY_BITS, 0, 0])
    return fake


def session(queue_id: str = "4AB12C3D") -> TestCtx:
    ctx = TestCtx()
    ctx._setsymval("{i}", queue_id)
    assert ctx._connect(host="mx.outside.test", helo="helo.outside.test",
                        ip="192.0.2.7") == Milter.CONTINUE
    return ctx


def test_records_relay_recipients_with_size_client_and_queue_id(ledger: FakeLedger) -> None:
    ctx = session()
    rc = ctx._feedFile(BytesIO(MESSAGE), "sender@outside.test", "alice@a.test",
                       "other@elsewhere.test", "bob@b.test", "carol@A.TEST")
    assert rc == Milter.CONTINUE
    ctx._close()
    [record] = ledger.records
    assert record.queue_id == "4AB12C3D"
    assert record.sender == "sender@outside.test"
    assert dict(record.recipients) == {"a.test": ("alice@a.test", "carol@A.TEST"),
                                       "b.test": ("bob@b.test",)}
    assert record.client_addr == "192.0.2.7"
    assert record.client_name == "mx.outside.test"
    assert record.helo == "helo.outside.test"
    assert record.received_at == 1000.0
    assert record.size == 0  # no SIZE= given: the queue's message_size fills it later


def test_message_without_relay_recipient_is_not_recorded(ledger: FakeLedger) -> None:
    ctx = session()
    assert ctx._feedFile(BytesIO(MESSAGE), "s@outside.test", "x@elsewhere.test") == Milter.CONTINUE
    assert ledger.records == []


def test_two_messages_in_one_session_are_recorded_separately(ledger: FakeLedger) -> None:
    ctx = session("FIRST")
    ctx._feedFile(BytesIO(MESSAGE), "one@outside.test", "alice@a.test")
    ctx._setsymval("{i}", "SECOND")
    ctx._feedFile(BytesIO(MESSAGE + b"more\r\n"), "two@outside.test", "bob@b.test")
    first, second = ledger.records
    assert (first.queue_id, first.sender, list(first.recipients)) == \
        ("FIRST", "one@outside.test", ["a.test"])
    assert (second.queue_id, second.sender, list(second.recipients)) == \
        ("SECOND", "two@outside.test", ["b.test"])


def test_aborted_message_is_forgotten(ledger: FakeLedger) -> None:
    ctx = session()
    ctx._envfrom("<s@outside.test>")
    ctx._envrcpt("<alice@a.test>")
    ctx._priv.abort()
    ctx._feedFile(BytesIO(MESSAGE), "t@outside.test", "x@elsewhere.test")
    assert ledger.records == []


def test_ledger_failure_never_changes_the_answer(ledger: FakeLedger) -> None:
    ledger.answer = "raise"
    ctx = session()
    assert ctx._feedFile(BytesIO(MESSAGE), "s@outside.test", "alice@a.test") == Milter.CONTINUE
    assert len(ledger.records) == 1


def test_missing_queue_id_still_records(ledger: FakeLedger) -> None:
    ctx = TestCtx()
    ctx._connect(ip="192.0.2.7")
    ctx._feedFile(BytesIO(MESSAGE), "s@outside.test", "alice@a.test")
    assert [r.queue_id for r in ledger.records] == [""]


def test_never_modifies_anything(ledger: FakeLedger) -> None:
    ctx = session()
    ctx._feedFile(BytesIO(MESSAGE), "s@outside.test", "alice@a.test")
    assert not ctx._bodyreplaced and not ctx._headerschanged and not ctx._envfromchanged
    assert ctx._addrcpt == [] and ctx._delrcpt == [] and ctx._reply is None


def test_negotiation_asks_no_actions_skips_unused_callbacks_and_replies() -> None:
    milter = LedgerMilter(MilterSettings(None, frozenset()))
    milter._setctx(None)
    opts = [Milter.CURR_ACTS, 0x1fffff, 0, 0]
    assert milter.negotiate(opts) == Milter.CONTINUE
    actions, protocol = opts[0], opts[1]
    assert actions == 0
    # Callbacks it does not use are not sent at all.
    assert protocol & Milter.P_NODATA and protocol & Milter.P_NOUNKNOWN
    # Nor is the message content: no header, no end of header, no body chunk.
    assert protocol & NO_CONTENT == NO_CONTENT
    assert NO_CONTENT == Milter.P_NOHDRS | Milter.P_NOEOH | Milter.P_NOBODY
    # The ones it uses are sent, and Postfix does not wait for their reply.
    for used in (Milter.P_NOCONNECT, Milter.P_NOHELO, Milter.P_NOMAIL, Milter.P_NORCPT):
        assert not protocol & used
    for no_reply in (Milter.P_NR_CONN, Milter.P_NR_HELO, Milter.P_NR_MAIL, Milter.P_NR_RCPT):
        assert protocol & no_reply
    assert milter.envfrom("<s@x.test>") == Milter.NOREPLY


def test_size_declared_in_mail_from_is_recorded(ledger: FakeLedger) -> None:
    ctx = session()
    assert ctx._envfrom("<s@outside.test>", "BODY=8BITMIME", "SIZE=4321") == Milter.CONTINUE
    assert ctx._envrcpt("<alice@a.test>") == Milter.CONTINUE
    assert ctx._eom() == Milter.CONTINUE
    [record] = ledger.records
    assert (record.size, dict(record.recipients)) == (4321, {"a.test": ("alice@a.test",)})


def test_failed_record_is_one_log_line_with_the_queue_id(ledger: FakeLedger,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    ledger.answer = "raise"
    ctx = session("7F3A21C0")
    with caplog.at_level("INFO", logger="backupmx.milter"):
        ctx._feedFile(BytesIO(MESSAGE), "s@outside.test", "alice@a.test")
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == [
        "queue id 7F3A21C0: cannot record the message (RuntimeError: boom); backupmx status "
        "and flush adopt it from Postfix's queue"]
    assert errors[0].exc_info is None  # one line: the traceback only at debug level


def test_session_closed_before_connect_is_logged(ledger: FakeLedger,
                                                caplog: pytest.LogCaptureFixture) -> None:
    # What libmilter does after XCLIENT ADDR=[UNAVAILABLE]: negotiate, then close, nothing else
    # (seen on Postfix 3.7 with libmilter 8.17; tests/integration/test_adoption.py).
    milter = LedgerMilter(MilterSettings(ledger, frozenset({"a.test"})))
    with caplog.at_level("INFO", logger="backupmx.milter"):
        assert milter.close() == Milter.CONTINUE
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("queue id unknown: a milter session ended before its connect event")
    caplog.clear()
    ctx = session()
    ctx._close()
    assert caplog.records == []  # a normal session says nothing
