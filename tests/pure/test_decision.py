"""The decision table of policyd: every row of decide(), without a reactor."""
from __future__ import annotations

from typing import Dict, Optional

import pytest

from backupmx.common.addresses import split_address
from backupmx.common.callout_rules import NEGATIVE, UNVERIFIED, Verdict
from backupmx.common.decision import (
    DUNNO,
    NOT_VERIFIED,
    OUTCOMES,
    ROUTING_REFUSED,
    UNKNOWN_USER,
    Policy,
    decide,
    primary_action,
)
from backupmx.common.primary_state import PrimaryState
from backupmx.common.recipient_map import RecipientMap, parse_recipient_lines
from backupmx.common.sender_networks import parse_sender_networks
from tests.harness.primary_states import States

NOW = 1_000_000.0
DEFER_PREFIX = "DEFER_IF_PERMIT 4.7.1 "


def recipient_map(text: str, delimiters: str = "+") -> RecipientMap:
    users, catch_all = parse_recipient_lines(text.splitlines(), "<test>")
    return RecipientMap({d: frozenset(u) for d, u in users.items()}, frozenset(catch_all),
                        delimiters)


MAP = recipient_map("""
alice@example.test OK
bob@example.test   OK
@catchall.test     OK
carol@other-mapped.test OK
""")
NETWORKS = parse_sender_networks(["@partner.test 192.0.2.0/24", "boss@corp.test 2001:db8::/32"])
DOMAINS = frozenset({"example.test", "catchall.test", "unmapped.test"})


def snapshot(action: str = "defer", recipients: Optional[RecipientMap] = MAP) -> Policy:
    return Policy(DOMAINS, recipients, NETWORKS, action)


def rcpt(recipient: str, sender: str = "someone@far.test",
         client: str = "198.51.100.7", state: str = "RCPT") -> Dict[str, str]:
    return {"request": "smtpd_access_policy", "protocol_state": state,
            "recipient": recipient, "sender": sender, "client_address": client}


def up(host: str = "mx1.example.test", age: float = 1.0) -> States:
    return States({"example.test": PrimaryState("up", host, NOW - age),
                   "catchall.test": PrimaryState("up", host, NOW - age)})


def down(host: str = "mx1.example.test") -> States:
    return States({"example.test": PrimaryState("down", host, NOW - 1),
                   "catchall.test": PrimaryState("down", host, NOW - 1)})


@pytest.mark.parametrize("state", ["CONNECT", "EHLO", "HELO", "MAIL", "DATA", "END-OF-MESSAGE",
                                   "VRFY", "ETRN", ""])
def test_other_protocol_states_are_dunno_even_for_unknown_users(state: str) -> None:
    decision = decide(rcpt("nobody@example.test", state=state), snapshot(), up(), NOW)
    assert (decision.action, decision.outcome) == (DUNNO, "other_state")


def test_missing_protocol_state_is_dunno() -> None:
    request = rcpt("nobody@example.test")
    del request["protocol_state"]
    assert decide(request, snapshot(), up(), NOW).action == DUNNO


def test_lower_case_protocol_state_still_counts_as_rcpt() -> None:
    decision = decide(rcpt("nobody@example.test", state="rcpt"), snapshot(), up(), NOW)
    assert decision.action == UNKNOWN_USER


@pytest.mark.parametrize("recipient",
                         ["alice@not-ours.test", "alice", "", "alice@sub.example.test"])
def test_domain_not_ours_is_dunno(recipient: str) -> None:
    decision = decide(rcpt(recipient), snapshot(), up(), NOW)
    assert (decision.action, decision.outcome) == (DUNNO, "not_ours")
    assert not decision.intervenes


def test_missing_recipient_attribute_is_not_ours() -> None:
    request = rcpt("x")
    del request["recipient"]
    assert decide(request, snapshot(), up(), NOW).outcome == "not_ours"


@pytest.mark.parametrize("primaries", [up(), down(), States()], ids=["up", "down", "unknown"])
def test_recipient_missing_from_covering_map_is_550_whatever_the_primary(primaries) -> None:
    decision = decide(rcpt("mallory@example.test"), snapshot(), primaries, NOW)
    assert decision.action == "550 5.1.1 User unknown in relay recipient table"
    assert decision.action == UNKNOWN_USER
    assert decision.outcome == "unknown_user"
    assert decision.intervenes


def test_unknown_user_beats_allowlist() -> None:
    request = rcpt("mallory@example.test", sender="x@partner.test", client="192.0.2.9")
    assert decide(request, snapshot(), up(), NOW).action == UNKNOWN_USER


@pytest.mark.parametrize("recipients", [None, MAP], ids=["no map", "map not covering"])
def test_domain_without_covering_map_is_accepted(recipients) -> None:
    domain = "unmapped.test" if recipients is not None else "example.test"
    decision = decide(rcpt(f"anyone@{domain}"), snapshot(recipients=recipients),
                      States({domain: PrimaryState("up", "mx", NOW)}), NOW)
    assert (decision.action, decision.outcome) == (DUNNO, "unmapped_domain")


def test_map_of_another_domain_does_not_cover_ours() -> None:
    only_other = recipient_map("carol@other-mapped.test OK")
    decision = decide(rcpt("carol@example.test"), snapshot(recipients=only_other), up(), NOW)
    assert decision.outcome == "unmapped_domain"


def test_catch_all_accepts_any_user_and_goes_on_to_the_primary_check() -> None:
    decision = decide(rcpt("whoever@catchall.test"), snapshot(), up("mx.catchall"), NOW)
    assert decision.action == f"{DEFER_PREFIX}Primary MX mx.catchall is up; deliver there"


@pytest.mark.parametrize("recipient", [
    "user%other.test@example.test",
    "alice%other.test@example.test",
    "user@other.test@example.test",
    '"user@other.test"@example.test',
    '"alice%x"@example.test',
    "other.test!user@example.test",
    "@relay.test:user@example.test",
    "<@a.test,@b.test:alice@example.test>",
])
def test_routing_characters_are_refused(recipient: str) -> None:
    decision = decide(rcpt(recipient), snapshot(), down(), NOW)
    assert decision.action == ROUTING_REFUSED
    assert decision.action.startswith("550 5.7.1 ")
    assert decision.outcome == "routing"


def test_routing_characters_for_a_domain_not_ours_are_none_of_our_business() -> None:
    decision = decide(rcpt("user%x@not-ours.test"), snapshot(), down(), NOW)
    assert decision.action == DUNNO


def test_quoted_local_part_without_routing_characters_is_looked_up_normally() -> None:
    decision = decide(rcpt('"john doe"@example.test'), snapshot(), down(), NOW)
    assert decision.action == UNKNOWN_USER


@pytest.mark.parametrize("sender,client", [
    ("anyone@partner.test", "192.0.2.200"),
    ("ANYONE@Partner.TEST", "192.0.2.1"),
    ("boss@corp.test", "2001:db8:1::5"),
    ("boss@corp.test", "ipv6:2001:db8::1"),
    ("anyone@partner.test", "::ffff:192.0.2.3"),
])
def test_allowlisted_sender_network_is_dunno_with_primary_up(sender: str, client: str) -> None:
    decision = decide(rcpt("alice@example.test", sender, client), snapshot(), up(), NOW)
    assert (decision.action, decision.outcome) == (DUNNO, "allowlisted")


@pytest.mark.parametrize("sender,client", [
    ("anyone@partner.test", "198.51.100.1"),  # right sender, wrong network
    ("anyone@elsewhere.test", "192.0.2.5"),  # right network, wrong sender
    ("other@corp.test", "2001:db8::1"),  # user rule does not cover the domain
    ("", "192.0.2.5"),  # null sender
    ("anyone@partner.test", "unknown"),
])
def test_not_allowlisted_falls_through_to_primary(sender: str, client: str) -> None:
    decision = decide(rcpt("alice@example.test", sender, client), snapshot(), up(), NOW)
    assert decision.outcome == "primary_up_defer"


def test_no_sender_networks_at_all() -> None:
    bare = Policy(DOMAINS, MAP, None)
    decision = decide(rcpt("alice@example.test", "a@partner.test", "192.0.2.5"), bare, up(), NOW)
    assert decision.outcome == "primary_up_defer"


@pytest.mark.parametrize("host", ["mx1.example.test", "192.0.2.25", "2001:db8::25"])
def test_primary_up_defers_by_default_naming_the_host(host: str) -> None:
    decision = decide(rcpt("alice@example.test"), snapshot(), up(host), NOW)
    assert decision.action == f"DEFER_IF_PERMIT 4.7.1 Primary MX {host} is up; deliver there"
    assert decision.outcome == "primary_up_defer"
    assert decision.intervenes
    assert host in decision.reason


def test_default_snapshot_action_is_defer() -> None:
    default = Policy(DOMAINS, MAP, None)
    assert decide(rcpt("alice@example.test"), default, up(), NOW).action.startswith(DEFER_PREFIX)


def test_primary_up_reject() -> None:
    decision = decide(rcpt("bob@example.test"), snapshot("reject"), up("mx9"), NOW)
    assert decision.action == "550 5.7.1 Primary MX mx9 is up; deliver there"
    assert decision.outcome == "primary_up_reject"


def test_primary_up_ignore() -> None:
    decision = decide(rcpt("bob@example.test"), snapshot("ignore"), up(), NOW)
    assert (decision.action, decision.outcome) == (DUNNO, "primary_up_ignored")
    assert not decision.intervenes


def test_primary_down_is_dunno() -> None:
    decision = decide(rcpt("alice@example.test"), snapshot(), down("mx1"), NOW)
    assert (decision.action, decision.outcome) == (DUNNO, "primary_down")
    assert "mx1" in decision.reason


def test_primary_never_probed_is_dunno() -> None:
    decision = decide(rcpt("alice@example.test"), snapshot(), States(), NOW)
    assert (decision.action, decision.outcome) == (DUNNO, "primary_unknown")


@pytest.mark.parametrize("recipient", [
    "ALICE@EXAMPLE.TEST", "Alice@Example.Test", "alice@example.test.", "<Alice@Example.TEST.>",
    " alice@example.test ", "alice+news@example.test", "Alice+News@EXAMPLE.test",
])
def test_recipient_and_domain_case_trailing_dot_and_extension(recipient: str) -> None:
    decision = decide(rcpt(recipient), snapshot(), up(), NOW)
    assert decision.outcome == "primary_up_defer"
    assert decision.domain == "example.test"


def test_extension_of_an_unknown_user_is_still_unknown() -> None:
    assert decide(rcpt("mallory+x@example.test"), snapshot(), up(), NOW).action == UNKNOWN_USER


class Refusing:
    def verdict(self, domain: str, address: str, now: float) -> Verdict:
        return Verdict(NEGATIVE, False, 1.0)


class Unverified:
    def verdict(self, domain: str, address: str, now: float) -> Verdict:
        return Verdict(UNVERIFIED, True)


def callout_policy() -> Policy:
    return Policy(DOMAINS, MAP, NETWORKS, "defer", callout_domains=frozenset({"example.test"}))


def test_every_outcome_is_declared() -> None:
    seen = {
        decide(rcpt("a@example.test", state="MAIL"), snapshot(), States(), NOW).outcome,
        decide(rcpt("a@nope.test"), snapshot(), States(), NOW).outcome,
        decide(rcpt("zz@example.test"), snapshot(), States(), NOW).outcome,
        decide(rcpt("a%b@example.test"), snapshot(), States(), NOW).outcome,
        decide(rcpt("a@unmapped.test"), snapshot(), States(), NOW).outcome,
        decide(rcpt("alice@example.test", "x@partner.test", "192.0.2.1"), snapshot(), up(),
               NOW).outcome,
        decide(rcpt("alice@example.test"), snapshot("defer"), up(), NOW).outcome,
        decide(rcpt("alice@example.test"), snapshot("reject"), up(), NOW).outcome,
        decide(rcpt("alice@example.test"), snapshot("ignore"), up(), NOW).outcome,
        decide(rcpt("alice@example.test"), snapshot(), down(), NOW).outcome,
        decide(rcpt("alice@example.test"), snapshot(), States(), NOW).outcome,
        decide(rcpt("zz@example.test"), stale_policy(), States(), NOW).outcome,
        decide(rcpt("zz@example.test"), callout_policy(), down(), NOW, Refusing()).outcome,
        decide(rcpt("zz@example.test"), callout_policy(), down(), NOW, Unverified()).outcome,
    }
    assert seen == set(OUTCOMES)


def stale_policy(deadline: float = NOW, domain: str = "example.test") -> Policy:
    return Policy(DOMAINS, MAP, NETWORKS, "defer", fresh_until={domain: deadline})


def test_unknown_recipient_of_a_stale_domain_is_deferred_not_refused() -> None:
    decision = decide(rcpt("zz@example.test"), stale_policy(NOW), up(), NOW)
    assert decision.action == NOT_VERIFIED == "450 4.1.1 Recipient not verified; try later"
    assert decision.outcome == "not_verified" and decision.domain == "example.test"


def test_unknown_recipient_of_a_fresh_domain_is_refused() -> None:
    assert decide(rcpt("zz@example.test"), stale_policy(NOW + 1), up(), NOW).action \
        == UNKNOWN_USER


def test_known_recipient_of_a_stale_domain_follows_the_primary_logic() -> None:
    assert decide(rcpt("alice@example.test"), stale_policy(NOW - 100), down(), NOW).action \
        == DUNNO
    assert decide(rcpt("alice@example.test"), stale_policy(NOW - 100), up(), NOW).outcome \
        == "primary_up_defer"


def test_a_domain_whose_source_never_synced_defers_every_recipient() -> None:
    policy = stale_policy(float("-inf"), "unmapped.test")
    assert decide(rcpt("anyone@unmapped.test"), policy, down(), NOW).action == NOT_VERIFIED


def test_a_domain_without_sources_never_goes_stale() -> None:
    assert decide(rcpt("zz@example.test"), stale_policy(NOW - 1, "other.test"), up(),
                  NOW).action == UNKNOWN_USER


@pytest.mark.parametrize("text,expected", [
    ("User@Example.TEST.", ("user", "example.test")),
    ("<a@b.test>", ("a", "b.test")),
    ("postmaster", ("postmaster", "")),
    ("a@b@c.test", ("a@b", "c.test")),
    ("", ("", "")),
])
def test_split_address(text: str, expected: "tuple[str, str]") -> None:
    assert split_address(text) == expected


def test_primary_action_wording() -> None:
    assert primary_action("defer", "h") == "DEFER_IF_PERMIT 4.7.1 Primary MX h is up; deliver there"
    assert primary_action("reject", "h") == "550 5.7.1 Primary MX h is up; deliver there"


# ---- property: decide never raises, whatever Postfix (or a fuzzer) sends ---------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st

_pieces = st.sampled_from(["alice", "ALICE", "+", "%", "!", "@", "\"", ":", ",", "<", ">", ".",
                           "example.test", "catchall.test", "unmapped.test", " ", "\ufffd", ""])
_text = st.lists(_pieces, max_size=8).map("".join) | st.text(max_size=20)


@settings(max_examples=500, deadline=None)
@given(st.fixed_dictionaries({"protocol_state": st.sampled_from(["RCPT", "rcpt", "DATA", ""]),
                              "recipient": _text, "sender": _text,
                              "client_address": _text | st.sampled_from(
                                  ["192.0.2.1", "::ffff:192.0.2.1", "ipv6:2001:db8::1"])}),
       st.sampled_from(["defer", "reject", "ignore"]),
       st.sampled_from([up(), down(), States()]))
def test_decide_never_raises_and_answers_a_known_action(attributes: Dict[str, str], action: str,
                                                        primaries) -> None:
    decision = decide(attributes, snapshot(action), primaries, NOW)
    assert decision.outcome in OUTCOMES
    assert decision.action in (DUNNO, UNKNOWN_USER, ROUTING_REFUSED) or (
        decision.action.startswith(("DEFER_IF_PERMIT 4.7.1 Primary MX ", "550 5.7.1 Primary MX ")))
    assert "\n" not in decision.action
