"""policyd.callout_session: the callout dialogue as a state machine, reply by reply."""
from __future__ import annotations

from typing import List, Tuple

from backupmx.policyd.callout_session import CalloutMachine, Step, smtp_path

EHLO_LINES = ["primary.test", "PIPELINING", "SIZE 10240000", "8BITMIME"]


def run(machine: CalloutMachine, replies: List[Tuple[int, List[str]]]) -> List[str]:
    """Feed replies; return the commands sent (STARTTLS begins TLS then EHLO again)."""
    sent: List[str] = []
    for code, lines in replies:
        step = machine.reply(code, lines)
        if step.starttls:
            step = machine.tls_started()
        if step.command:
            sent.append(step.command)
    return sent


def statuses(machine: CalloutMachine) -> dict:
    return {a: o.status for a, o in machine.results.items()}


def test_whole_dialogue_never_sends_data() -> None:
    machine = CalloutMachine("backup.test", ["alice@example.test", "zz@example.test"])
    sent = run(machine, [(220, ["primary.test ESMTP"]), (250, EHLO_LINES), (250, ["Ok"]),
                         (250, ["2.1.5 Ok"]), (550, ["5.1.1 <zz@example.test>: User unknown"]),
                         (250, ["Ok"]), (221, ["Bye"])])
    assert sent == ["EHLO backup.test", "MAIL FROM:<>", "RCPT TO:<alice@example.test>",
                    "RCPT TO:<zz@example.test>", "RSET", "QUIT"]
    assert statuses(machine) == {"alice@example.test": "valid", "zz@example.test": "invalid"}
    assert machine.results["zz@example.test"].reply.startswith("550 5.1.1")
    assert machine.done and not any("DATA" in c for c in sent)


def test_4xx_and_552_to_rcpt_are_temporary_never_invalid() -> None:
    machine = CalloutMachine("b.test", ["a@x.test", "b@x.test", "c@x.test"])
    run(machine, [(220, []), (250, ["x"]), (250, []), (450, ["4.7.1 greylisted"]),
                  (552, ["5.5.3 Too many recipients"]), (451, ["4.3.0 try later"])])
    assert statuses(machine) == {"a@x.test": "temporary", "b@x.test": "temporary",
                                 "c@x.test": "temporary"}


def test_only_mailbox_refusals_are_invalid() -> None:
    addresses = [f"u{code}@x.test" for code in (550, 551, 553, 501, 554, 521, 500)]
    machine = CalloutMachine("b.test", addresses, max_unknown=10)
    run(machine, [(220, []), (250, ["x"]), (250, [])]
        + [(int(a[1:4]), ["refused"]) for a in addresses])
    assert statuses(machine) == {"u550@x.test": "invalid", "u551@x.test": "invalid",
                                 "u553@x.test": "invalid", "u501@x.test": "temporary",
                                 "u554@x.test": "temporary", "u521@x.test": "temporary",
                                 "u500@x.test": "temporary"}


def test_local_parts_are_quoted_as_rfc_5321_wants() -> None:
    assert smtp_path("a.b+c@x.test") == "a.b+c@x.test"
    assert smtp_path("odd user@x.test") == '"odd user"@x.test'
    assert smtp_path('say"hi@x.test') == '"say\\"hi"@x.test'
    assert smtp_path("a..b@x.test") == '"a..b"@x.test'
    machine = CalloutMachine("b.test", ["odd user@x.test"])
    assert run(machine, [(220, []), (250, ["x"]), (250, [])])[-1] == 'RCPT TO:<"odd user"@x.test>'


def test_session_ends_after_max_unknown_refusals() -> None:
    addresses = [f"u{i}@x.test" for i in range(8)]
    machine = CalloutMachine("b.test", addresses, max_unknown=5)
    sent = run(machine, [(220, []), (250, ["x"]), (250, [])] + [(550, ["no"])] * 5
               + [(250, []), (221, [])])
    assert [c for c in sent if c.startswith("RCPT")] == [f"RCPT TO:<u{i}@x.test>"
                                                          for i in range(5)]
    assert sent[-2:] == ["RSET", "QUIT"]
    assert statuses(machine) == {a: "invalid" for a in addresses[:5]}
    assert machine.unasked == addresses[5:]  # for another session


def test_starttls_when_offered_then_ehlo_again() -> None:
    machine = CalloutMachine("b.test", ["a@x.test"], tls=True)
    sent = run(machine, [(220, []), (250, ["x", "STARTTLS", "PIPELINING"]), (220, ["go ahead"]),
                         (250, ["x", "PIPELINING"]), (250, []), (250, [])])
    assert sent == ["EHLO b.test", "STARTTLS", "EHLO b.test", "MAIL FROM:<>",
                    "RCPT TO:<a@x.test>", "RSET"]
    assert machine.tls_active


def test_starttls_not_used_without_a_context_or_when_refused() -> None:
    no_context = CalloutMachine("b.test", ["a@x.test"], tls=False)
    assert run(no_context, [(220, []), (250, ["x", "STARTTLS"])])[-1] == "MAIL FROM:<>"
    refused = CalloutMachine("b.test", ["a@x.test"], tls=True)
    assert run(refused, [(220, []), (250, ["x", "STARTTLS"]),
                         (454, ["TLS not available"])])[-1] == "MAIL FROM:<>"


def test_helo_when_ehlo_is_refused() -> None:
    machine = CalloutMachine("b.test", ["a@x.test"])
    assert run(machine, [(220, []), (502, ["no EHLO"]), (250, [])]) == [
        "EHLO b.test", "HELO b.test", "MAIL FROM:<>"]


def test_failures_before_rcpt_never_make_an_address_invalid() -> None:
    for replies in ([(554, ["no service"])],
                    [(220, []), (250, ["x"]), (550, ["5.7.1 null sender refused"])],
                    [(220, []), (421, ["4.3.2 shutting down"])]):
        machine = CalloutMachine("b.test", ["a@x.test", "b@x.test"])
        run(machine, replies)
        assert statuses(machine) == {"a@x.test": "temporary", "b@x.test": "temporary"}


def test_lost_connection_and_timeout_leave_open_addresses_temporary() -> None:
    machine = CalloutMachine("b.test", ["a@x.test", "b@x.test"])
    run(machine, [(220, []), (250, ["x"]), (250, []), (250, [])])
    machine.connection_lost("timed out")
    assert statuses(machine) == {"a@x.test": "valid", "b@x.test": "temporary"}
    assert machine.results["b@x.test"].reply == "timed out"
    assert machine.done


def test_421_closes_without_quit() -> None:
    machine = CalloutMachine("b.test", ["a@x.test"])
    machine.reply(220, [])
    assert machine.reply(421, ["bye"]) == Step(close=True)
