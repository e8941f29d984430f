"""admin.delivery_log and admin.flush_learning: what a flush's log lines prove of recipients;
policyd.callout_follow: policyd takes what another process stored.

The log lines are copied from the real Postfix 3.7 of tests/integration/test_callout_flush.py
(which checks the live ones); the others vary one field of them.
"""
from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import pytest
from twisted.internet.task import Clock

from backupmx.admin.context import CommandContext
from backupmx.admin.delivery_log import (
    DeliveryLog,
    LogUnavailable,
    outcome,
    parse_delivery,
    via_primary,
)
from backupmx.admin.flush import flush_command, flush_domain
from backupmx.admin.flush_learning import learned_entries
from backupmx.common.callout_cache import CalloutCache, CalloutStore, DomainCheck, store_path
from backupmx.common.callout_rules import (
    INVALID,
    TEMPORARY,
    VALID,
    Entry,
    Lifetimes,
    cache_key,
    rcpt_verdict,
)
from backupmx.common.config import PrimarySpec, parse_config
from backupmx.milter.ledger import Ledger
from backupmx.policyd.callout_follow import StoreFollower
from tests.harness.command_fakes import FakeClock, FakePostfix, ScriptedProber, record

PREFIX = "Nov 29 15:21:06 backupmx postfix/smtp[29901]: "
SENT = (PREFIX + "E6A82220091: to=<alice@example.test>, relay=127.0.0.1[127.0.0.1]:46971, "
        "delay=1.2, delays=1.2/0/0/0.01, dsn=2.0.0, status=sent (250 2.0.0 Ok: delivered to "
        "the fake primary)")
REFUSED = (PREFIX + "E6A82220091: to=<bob@example.test>, relay=127.0.0.1[127.0.0.1]:46971, "
           "delay=1.2, delays=1.2/0/0/0.01, dsn=5.1.1, status=bounced (host "
           "127.0.0.1[127.0.0.1] said: 550 5.1.1 <bob@example.test>: Recipient address "
           "rejected: User unknown (in reply to RCPT TO command))")
DEFERRED = (PREFIX + "E6A82220091: to=<alice@example.test>, relay=none, delay=0.05, "
            "delays=0.04/0.01/0/0, dsn=4.4.1, status=deferred (connect to "
            "127.0.0.1[127.0.0.1]:46971: Connection refused)")
OWN_BOUNCE = (PREFIX + "22ACD22009D: to=<someone@sender.test>, relay=none, delay=0.01, "
              "delays=0/0.01/0/0, dsn=5.4.4, status=bounced (unable to look up host "
              "sender.test: Name or service not known)")
REJECT = ("Nov 29 15:21:15 backupmx postfix/smtpd[29894]: NOQUEUE: reject: RCPT from "
          "localhost[127.0.0.1]: 550 5.1.1 <bob@example.test>: Recipient address rejected: "
          "User unknown; from=<someone@sender.test> to=<bob@example.test> proto=ESMTP "
          "helo=<client.test>")
PRIMARY = PrimarySpec("127.0.0.1", 46971)
IDS = {"E6A82220091"}


def test_parse_a_delivery_line() -> None:
    found = parse_delivery(REFUSED)
    assert found is not None
    assert (found.queue_id, found.recipient, found.relay, found.dsn, found.status) == (
        "E6A82220091", "bob@example.test", "127.0.0.1[127.0.0.1]:46971", "5.1.1", "bounced")
    assert found.reply.startswith("host 127.0.0.1[127.0.0.1] said: 550 5.1.1")
    assert found.reply.endswith("(in reply to RCPT TO command)")
    # journalctl --output=cat gives the message alone
    assert parse_delivery(REFUSED[len(PREFIX):]) == found
    assert parse_delivery(REJECT) is None  # smtpd's own refusals are not deliveries
    assert parse_delivery("garbage") is None


def test_what_a_line_proves() -> None:
    lines = {SENT: VALID, REFUSED: INVALID, DEFERRED: None, OWN_BOUNCE: None}
    for line, expected in lines.items():
        delivery = parse_delivery(line)
        assert delivery is not None
        assert outcome(delivery, PRIMARY) == expected, line
    # a 5xx after DATA refuses the message, not the recipient
    after_data = REFUSED.replace("(in reply to RCPT TO command)",
                                 "(in reply to end of DATA command)")
    assert outcome(parse_delivery(after_data), PRIMARY) is None  # type: ignore[arg-type]
    # the same lines from another host than the primary prove nothing
    assert outcome(parse_delivery(SENT), PrimarySpec("127.0.0.9", 46971)) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("relay,primary,expected", [
    ("127.0.0.1[127.0.0.1]:46971", PrimarySpec("127.0.0.1", 46971), True),
    ("mx.example.test[192.0.2.1]:25", PrimarySpec("MX.example.test", 25), True),
    ("mx.example.test[192.0.2.1]:25", PrimarySpec("192.0.2.1", 25), True),
    ("mx.example.test[192.0.2.1]:2525", PrimarySpec("mx.example.test", 25), False),
    ("relay.isp.test[198.51.100.1]:25", PrimarySpec("mx.example.test", 25), False),
    ("mx.example.test[192.0.2.1]:25", PrimarySpec(None), True),  # Postfix chose it by MX
    ("none", PrimarySpec(None), False),
    ("local", PrimarySpec(None), False),
])
def test_via_primary(relay: str, primary: PrimarySpec, expected: bool) -> None:
    assert via_primary(relay, primary) is expected


def deliveries(*lines: str) -> list:
    return [d for d in map(parse_delivery, lines) if d is not None]


DOMAINS = {"example.test": (PRIMARY, Lifetimes())}
RECORDED = {"E6A82220091": ["alice@example.test", "bob@example.test", "Dan@Sub.Example.test",
                            "alice@other.test"]}


def test_learned_entries_keep_the_recorded_recipients_of_callout_domains_only() -> None:
    other_message = SENT.replace("E6A82220091", "F00000000A1").replace("alice", "carol")
    other_domain = SENT.replace("alice@example.test", "alice@other.test")
    subdomain = SENT.replace("alice@example.test", "Dan@Sub.Example.test")
    unrecorded = SENT.replace("alice@example.test", "eve@example.test")
    found = learned_entries(deliveries(DEFERRED, SENT, REFUSED, OWN_BOUNCE, other_message,
                                       other_domain, subdomain, unrecorded),
                            RECORDED, DOMAINS, 100.0)
    assert {(e.address, e.domain, e.status) for e in found} == {
        ("alice@example.test", "example.test", VALID),
        ("bob@example.test", "example.test", INVALID),
        ("dan@sub.example.test", "example.test", VALID)}
    assert all(e.verified_at == 100.0 for e in found)
    # keyed as policyd is asked: lower-case, normalised domain, without RFC 5321 quoting
    assert cache_key("<X@Example.TEST.>") == ("x@example.test", "example.test")
    assert cache_key('"Odd User"@example.test') == ("odd user@example.test", "example.test")
    assert cache_key('"a\\"b"@example.test')[0] == 'a"b@example.test'


def test_a_refusal_never_replaces_an_acceptance_of_the_same_flush() -> None:
    sent_to_bob = SENT.replace("alice", "bob")
    for lines in ((REFUSED, sent_to_bob), (sent_to_bob, REFUSED)):
        found = learned_entries(deliveries(*lines), RECORDED, DOMAINS, 1.0)
        assert [(e.address, e.status) for e in found] == [("bob@example.test", VALID)]


@pytest.mark.parametrize("reply", [
    # refusals that are not about the recipient prove nothing
    "550 5.7.1 <spam@bad.test>: Sender address rejected: SPF fail",
    "550 5.1.8 <spam@bad.test>: Sender address rejected: Domain not found",
    "554 5.7.1 <client.test[192.0.2.9]>: Client host rejected: Access denied",
    "552 5.2.2 <bob@example.test>: Mailbox full",
    "550 5.7.1 <bob@example.test>: Relay access denied",
    "553 5.1.7 <spam@bad.test>: Sender address rejected: not logged in",
])
def test_only_a_refused_mailbox_is_invalid(reply: str) -> None:
    line = REFUSED.replace("550 5.1.1 <bob@example.test>: Recipient address rejected: "
                           "User unknown", reply)
    delivery = parse_delivery(line)
    assert delivery is not None and outcome(delivery, PRIMARY) is None, reply


def test_a_refused_mailbox_without_an_enhanced_code_is_invalid() -> None:
    line = REFUSED.replace("550 5.1.1 <bob@example.test>: Recipient address rejected: "
                           "User unknown", "550 no such user here")
    assert outcome(parse_delivery(line), PRIMARY) == INVALID  # type: ignore[arg-type]
    assert rcpt_verdict(550, "5.1.1 no such user") == INVALID
    assert rcpt_verdict(551, "User not local") == INVALID
    assert rcpt_verdict(550, "5.7.1 policy") == TEMPORARY
    assert rcpt_verdict(450, "4.1.1 try later") == TEMPORARY
    assert rcpt_verdict(250, "2.1.5 Ok") == VALID


def test_orig_to_matches_a_rewritten_recipient() -> None:
    rewritten = SENT.replace("to=<alice@example.test>,",
                             "to=<alice@example.test>, orig_to=<Alias@Example.test>,")
    recorded = {"E6A82220091": ["alias@example.test"]}
    found = learned_entries(deliveries(rewritten), recorded, DOMAINS, 1.0)
    assert [(e.address, e.status) for e in found] == [("alice@example.test", VALID)]


def test_a_crafted_address_cannot_pose_as_a_log_field() -> None:
    crafted = ('"v>, relay=127.0.0.1[127.0.0.1]:46971, delay=1, delays=1/0/0/0, dsn=2.0.0, '
               'status=sent (ok)"@example.test')
    line = REFUSED.replace("to=<bob@example.test>", f"to=<{crafted}>")
    recorded = {"E6A82220091": [crafted]}
    found = learned_entries(deliveries(line), recorded, DOMAINS, 1.0)
    assert all(e.status != VALID for e in found)
    assert parse_delivery("x" * 9000 + SENT) is None  # longer than any Postfix line


def test_maillog_file_deliveries_since_the_start(tmp_path: Path) -> None:
    maillog = tmp_path / "maillog"
    maillog.write_text(DEFERRED + "\n")
    log = DeliveryLog.open(str(maillog), 0.0)
    other = SENT.replace("E6A82220091", "F00000000A1")
    with maillog.open("a") as out:
        out.write(f"{SENT}\n{REJECT}\n{other}\n")
    assert log.deliveries(IDS) == deliveries(SENT)  # the lines of the messages asked about
    # rotated (renamed beside, as postfix logrotate does): the rest of the old file, then
    # the new one
    os.rename(maillog, tmp_path / "maillog.1")
    maillog.write_text(REFUSED + "\n")
    assert log.deliveries(IDS) == deliveries(SENT, REFUSED)
    # read whole (a flush learned from later)
    assert DeliveryLog.open(str(tmp_path / "maillog.1"), 0.0, at_end=False).deliveries(
        IDS) == deliveries(DEFERRED, SENT)
    with pytest.raises(LogUnavailable, match="maillog_file"):
        DeliveryLog.open(str(tmp_path / "missing"), 0.0)


def test_the_journal_needs_a_user_who_may_read_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("backupmx.admin.delivery_log.may_read_journal", lambda: False)
    monkeypatch.setattr("backupmx.admin.delivery_log.shutil.which", lambda _: "/bin/journalctl")
    monkeypatch.setattr("backupmx.admin.delivery_log.os.path.isdir", lambda _: True)
    with pytest.raises(LogUnavailable, match="group systemd-journal"):
        DeliveryLog.open("", 0.0)
    with pytest.raises(LogUnavailable, match="group systemd-journal"):
        DeliveryLog.open("", 0.0, at_end=False)


class Engine:
    def __init__(self, cache: CalloutCache) -> None:
        self.cache = cache
        self.setup: Dict[str, Any] = {"example.test": object()}


def test_policyd_takes_what_another_process_stored(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(1000.0)
    store = CalloutStore(str(tmp_path / "callouts.sqlite3"))
    cache = CalloutCache({"example.test": Lifetimes()}, clock.seconds)
    own = Entry("dave@example.test", "example.test", VALID, 990.0)
    cache.record(own)
    store.put([own])
    follower = StoreFollower(clock, store, Engine(cache), since=time.time())
    assert follower.take(store.entries_since(follower.since - 60)) == 0  # already known

    # backupmx flush writes from its own connection
    other = CalloutStore(store.path)
    other.put([Entry("alice@example.test", "example.test", VALID, 1005.0),
               Entry("bob@example.test", "example.test", INVALID, 1005.0),
               Entry("x@elsewhere.test", "elsewhere.test", VALID, 1005.0)])
    other.close()
    assert follower.take(store.entries_since(follower.since - 60)) == 2
    assert cache.verdict("alice@example.test", "example.test", 1006.0).status == "positive"
    assert cache.verdict("bob@example.test", "example.test", 1006.0).status == "negative"
    assert cache.get("x@elsewhere.test") is None  # no callouts for that domain
    # the next look finds nothing new
    assert follower.take(store.entries_since(follower.since - 60)) == 0
    store.close()


# ---- the flush learns: at once, or at the next flush --auto -----------------------------------

def log_line(queue_id: str, recipient: str, port: int, sent: bool) -> str:
    line = SENT if sent else REFUSED
    return (line.replace("E6A82220091", queue_id).replace("46971", str(port))
            .replace("alice@example.test" if sent else "bob@example.test", recipient))


class LoggingPostfix(FakePostfix):
    """Delivers like FakePostfix and logs each a.test recipient as smtp(8) does: those in
    ``known`` sent, the others refused at RCPT (5.1.1)."""

    def __init__(self, maillog: Path) -> None:
        super().__init__()
        self.maillog = maillog
        self.known = {"alice@a.test"}

    def flush_domain(self, domain: str) -> subprocess.CompletedProcess:
        lines = [log_line(m["queue_id"], r["address"], 2601, r["address"] in self.known)
                 for m in self.queue for r in m["recipients"]
                 if r["address"].endswith("@" + domain) and self.deliver.get(domain)]
        if self.maillog.exists():
            with self.maillog.open("a") as out:
                out.write("".join(line + "\n" for line in lines))
        else:
            self.unlogged = lines
        return super().flush_domain(domain)


@pytest.fixture
def flushing(tmp_path: Path) -> Iterator[Tuple[CommandContext, LoggingPostfix, Path]]:
    config_path = tmp_path / "backupmx.conf"
    config_path.write_text(
        f"[policyd]\nstate_directory = {tmp_path / 'state'}\n\n"
        f"[milter]\nledger = {tmp_path / 'ledger.sqlite3'}\n\n"
        "[domains]\na.test = [127.0.0.1]:2601\n\n"
        "[recipients verify]\ntype = callout\ndomains = a.test\n")
    maillog = tmp_path / "maillog"
    maillog.write_text("")
    postfix = LoggingPostfix(maillog)
    postfix.parameters["maillog_file"] = str(maillog)
    postfix.deliver["a.test"] = True
    clock = FakeClock(1000.0)
    ctx = CommandContext(config=parse_config(config_path.read_text(), str(config_path)),
                         postfix=postfix, probe=ScriptedProber({"a.test": "up"}),  # type: ignore[arg-type]
                         probe_timeout=1.0, clock=clock, sleep=clock.sleep,
                         out=io.StringIO(), err=io.StringIO())
    ledger = Ledger(ctx.config.milter.ledger)
    ledger.record(record("AAA001", received_at=990.0, a_test="alice@a.test,zz@a.test"))
    postfix.add("AAA001", "alice@a.test", "zz@a.test")
    ledger.record(record("AAA002", received_at=990.0, a_test="alice@a.test"))
    postfix.add("AAA002", "alice@a.test")
    # policyd makes the cache file at its start
    made = CalloutStore(store_path(str(tmp_path / "state")))
    assert made.entries() == []
    # policyd saw the primary refuse a random address: its valid answers prove something
    made.put_check(DomainCheck("a.test", False, 900.0))
    made.close()
    yield ctx, postfix, maillog
    ledger.close()
    ctx.close()


def stored(ctx: CommandContext) -> Dict[str, str]:
    store = CalloutStore(store_path(ctx.config.policyd.state_directory))
    try:
        return {e.address: e.status for e in store.entries()}
    finally:
        store.close()


def test_a_flush_learns_at_once(flushing: Tuple[CommandContext, LoggingPostfix, Path]) -> None:
    ctx, _, _ = flushing
    outcome = flush_domain(ctx, "a.test", wait=1.0)
    assert outcome is not None and outcome.learned == (1, 1), ctx.err.getvalue()
    assert "learned 1 valid and 1 invalid recipients" in outcome.describe()
    assert stored(ctx) == {"alice@a.test": VALID, "zz@a.test": INVALID}
    assert ctx.ledger().unlearned_flushes(0.0) == []


def test_a_flush_that_cannot_read_the_log_is_learned_by_the_next_auto(
        flushing: Tuple[CommandContext, LoggingPostfix, Path]) -> None:
    ctx, postfix, maillog = flushing
    maillog.unlink()  # as for policyd's user, which may not read the journal
    outcome = flush_domain(ctx, "a.test", wait=1.0)
    assert outcome is not None and outcome.learned is None and outcome.result == "complete"
    assert "learned from this flush by the next 'backupmx flush --auto'" in ctx.out.getvalue()
    assert stored(ctx) == {}
    maillog.write_text("".join(line + "\n" for line in postfix.unlogged))
    assert flush_command(ctx, None, auto=True, force=False, wait=1.0) == 0
    assert "a.test: learned 1 valid and 1 invalid recipients from flush #1" in ctx.out.getvalue()
    assert stored(ctx) == {"alice@a.test": VALID, "zz@a.test": INVALID}
    before = ctx.out.getvalue()
    assert flush_command(ctx, None, auto=True, force=False, wait=1.0) == 0
    assert "learned" not in ctx.out.getvalue()[len(before):]  # once only


def test_without_the_cache_file_the_flush_stays_to_learn(
        flushing: Tuple[CommandContext, LoggingPostfix, Path]) -> None:
    ctx, _, _ = flushing
    os.unlink(store_path(ctx.config.policyd.state_directory))
    outcome = flush_domain(ctx, "a.test", wait=1.0)
    assert outcome is not None and outcome.learned is None
    assert "does not exist yet (backupmx-policyd creates it)" in ctx.err.getvalue()
    assert [row[1] for row in ctx.ledger().unlearned_flushes(0.0)] == ["a.test"]


def test_valid_answers_of_a_primary_not_known_to_refuse_are_not_kept(
        flushing: Tuple[CommandContext, LoggingPostfix, Path]) -> None:
    ctx, _, _ = flushing
    store = CalloutStore(store_path(ctx.config.policyd.state_directory))
    store.put_check(DomainCheck("a.test", True, 950.0))  # it accepted a random address
    store.close()
    outcome = flush_domain(ctx, "a.test", wait=1.0)
    assert outcome is not None and outcome.learned == (0, 1)
    assert stored(ctx) == {"zz@a.test": INVALID}


def test_a_partial_flush_is_learned_from_again_until_its_mail_left(
        flushing: Tuple[CommandContext, LoggingPostfix, Path]) -> None:
    ctx, postfix, maillog = flushing
    postfix.deliver["a.test"] = False  # the primary defers: nothing leaves
    outcome = flush_domain(ctx, "a.test", wait=1.0)
    assert outcome is not None and outcome.result == "partial" and outcome.learned == (0, 0)
    assert len(ctx.ledger().unlearned_flushes(0.0)) == 1
    postfix.deliver["a.test"] = True  # Postfix's own retry delivers it later
    postfix.flush_domain("a.test")
    assert flush_command(ctx, None, auto=True, force=False, wait=1.0) == 0
    assert "a.test: learned 1 valid and 1 invalid recipients from flush #1" in ctx.out.getvalue()
    assert ctx.ledger().unlearned_flushes(0.0) == []
