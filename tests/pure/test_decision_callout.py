"""common.decision with recipient callouts: the verdicts injected like the primary states."""
from __future__ import annotations

from typing import Dict, Optional

from backupmx.common.callout_rules import NEGATIVE, POSITIVE, UNVERIFIED, Verdict
from backupmx.common.decision import (
    CALLOUT_NOT_VERIFIED,
    CALLOUT_REFUSED,
    DUNNO,
    UNKNOWN_USER,
    Policy,
    decide,
)
from backupmx.common.primary_state import PrimaryState
from backupmx.common.recipient_map import RecipientMap, parse_recipient_lines
from tests.harness.primary_states import States

NOW = 1_000_000.0
DOMAINS = frozenset({"example.test", "other.test"})


def recipient_map(text: str) -> RecipientMap:
    users, catch_all = parse_recipient_lines(text.splitlines(), "<test>")
    return RecipientMap({d: frozenset(u) for d, u in users.items()}, frozenset(catch_all), "+")


MAP = recipient_map("alice@example.test OK\nbob@other.test OK\n")


class Verdicts:
    """Fixed verdicts; ``off``: domains whose primary accepts everything (None)."""

    def __init__(self, verdicts: Dict[str, Verdict], off: frozenset = frozenset()) -> None:
        self.verdicts = verdicts
        self.off = off
        self.asked: list = []

    def verdict(self, domain: str, address: str, now: float) -> Optional[Verdict]:
        self.asked.append(address)
        if domain in self.off:
            return None
        return self.verdicts.get(address, Verdict(UNVERIFIED, True))


def policy(action: str = "defer", recipients: Optional[RecipientMap] = MAP) -> Policy:
    return Policy(DOMAINS, recipients, None, action,
                  callout_domains=frozenset({"example.test"}))


def rcpt(recipient: str) -> Dict[str, str]:
    return {"request": "smtpd_access_policy", "protocol_state": "RCPT", "recipient": recipient,
            "sender": "s@far.test", "client_address": "198.51.100.7"}


UP = States({"example.test": PrimaryState("up", "mx.example.test", NOW),
             "other.test": PrimaryState("up", "mx.other.test", NOW)})
DOWN = States({"example.test": PrimaryState("down", "mx.example.test", NOW),
               "other.test": PrimaryState("down", "mx.other.test", NOW)})
UNKNOWN = States()


def test_primary_up_unknown_recipient_is_deferred_as_today_and_verified() -> None:
    decision = decide(rcpt("New@Example.test"), policy(), UP, NOW, Verdicts({}))
    assert decision.action.startswith("DEFER_IF_PERMIT 4.7.1 Primary MX mx.example.test")
    assert decision.outcome == "primary_up_defer"
    assert decision.verify == "new@example.test"


def test_primary_down_verdicts() -> None:
    verdicts = Verdicts({"good@example.test": Verdict(POSITIVE, False, 60.0),
                         "bad@example.test": Verdict(NEGATIVE, False, 60.0)})
    for states in (DOWN, UNKNOWN):
        good = decide(rcpt("good@example.test"), policy(), states, NOW, verdicts)
        bad = decide(rcpt("bad@example.test"), policy(), states, NOW, verdicts)
        never = decide(rcpt("never@example.test"), policy(), states, NOW, verdicts)
        assert good.action == DUNNO and good.verify is None
        assert bad.action == CALLOUT_REFUSED and bad.action.startswith("550 5.1.1")
        assert never.action == CALLOUT_NOT_VERIFIED and never.action.startswith("450 4.1.1")
        assert never.verify is None  # nobody to ask while the primary is not known up


def test_primary_up_known_valid_is_deferred_like_any_valid_user() -> None:
    fresh = Verdicts({"good@example.test": Verdict(POSITIVE, False, 60.0)})
    due = Verdicts({"good@example.test": Verdict(POSITIVE, True, 8 * 86400.0)})
    assert decide(rcpt("good@example.test"), policy(), UP, NOW, fresh).verify is None
    refreshed = decide(rcpt("good@example.test"), policy(), UP, NOW, due)
    assert refreshed.outcome == "primary_up_defer"
    assert refreshed.verify == "good@example.test"


def test_primary_up_known_invalid_is_deferred_without_a_new_callout() -> None:
    verdicts = Verdicts({"bad@example.test": Verdict(NEGATIVE, False, 60.0)})
    decision = decide(rcpt("bad@example.test"), policy(), UP, NOW, verdicts)
    assert decision.outcome == "primary_up_defer" and decision.verify is None


def test_primary_up_with_ignore_never_accepts_an_unverified_recipient() -> None:
    decision = decide(rcpt("new@example.test"), policy("ignore"), UP, NOW, Verdicts({}))
    assert decision.action == CALLOUT_NOT_VERIFIED and decision.verify == "new@example.test"


def test_map_users_never_ask_the_callouts() -> None:
    verdicts = Verdicts({})
    assert decide(rcpt("alice@example.test"), policy(), DOWN, NOW, verdicts).action == DUNNO
    assert verdicts.asked == []


def test_domain_without_callout_source_is_judged_as_today() -> None:
    verdicts = Verdicts({})
    decision = decide(rcpt("zz@other.test"), policy(), DOWN, NOW, verdicts)
    assert decision.action == UNKNOWN_USER and verdicts.asked == []


def test_accept_all_domain_behaves_as_if_it_had_no_verification_source() -> None:
    off = Verdicts({}, off=frozenset({"example.test"}))
    assert decide(rcpt("zz@example.test"), policy(), DOWN, NOW, off).action == UNKNOWN_USER
    unmapped = decide(rcpt("zz@example.test"), policy(recipients=None), DOWN, NOW, off)
    assert (unmapped.action, unmapped.outcome) == (DUNNO, "unmapped_domain")


def test_callout_only_domain_no_map_at_all() -> None:
    decision = decide(rcpt("zz@example.test"), policy(recipients=None), DOWN, NOW, Verdicts({}))
    assert decision.action == CALLOUT_NOT_VERIFIED


def test_without_verdicts_the_decision_is_unchanged() -> None:
    assert decide(rcpt("zz@example.test"), policy(), DOWN, NOW).action == UNKNOWN_USER
