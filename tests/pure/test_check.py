"""The rules of ``backupmx check`` over tables of postconf values (no Postfix, no network)."""
from __future__ import annotations

from typing import Dict, List

import pytest

from backupmx.admin import setup_checks as checks
from backupmx.admin.check import parse_nameserver, render_json, render_text, run_checks
from backupmx.admin.setup_checks import (
    FAIL,
    OK,
    WARN,
    DomainDns,
    check_dns,
    check_domain_lists,
    check_flush_service,
    check_milter,
    check_policy_service,
    check_queue_lifetime,
    restrictions,
)
from backupmx.common.config import PrimarySpec, parse_config
from backupmx.common.recipient_map import MapError
from tests.harness.postconf_samples import CONFIG, GOOD

FLUSH = ["flush     unix  n       -       n       1000?   0       flush"]


def statuses(results: List[checks.Result]) -> List[str]:
    return [r.status for r in results]


def with_(**changes: str) -> Dict[str, str]:
    return {**GOOD, **changes}


def test_lists_keep_brace_groups_whole() -> None:
    assert restrictions("permit_mynetworks check_client_access hash:/x, reject") == [
        ("permit_mynetworks", ""), ("check_client_access", "hash:/x"), ("reject", "")]


def test_good_setup_passes_every_rule() -> None:
    results = run_checks(CONFIG, GOOD, FLUSH, None, "mx2.test", load=lambda c: _maps())
    assert set(statuses(results)) == {OK}, render_text(results)


@pytest.mark.parametrize("setting, value, check", [
    ("relay_domains", "other.test", "relay_domains"),
    ("fast_flush_domains", "", "fast_flush_domains"),
    ("mydestination", "example.test", "mydestination"),
    ("virtual_alias_domains", "other.test", "virtual_alias_domains"),
    ("virtual_mailbox_domains", ".test", "virtual_mailbox_domains"),
])
def test_domain_lists(setting: str, value: str, check: str) -> None:
    results = check_domain_lists(["example.test", "other.test"], with_(**{setting: value}))
    failed = [r for r in results if r.status == FAIL]
    assert failed and all(r.check == check and r.fix for r in failed)


def test_domain_list_tables_are_looked_up() -> None:
    postconf = with_(relay_domains="hash:/etc/postfix/relay", fast_flush_domains="$relay_domains")
    found = check_domain_lists(["example.test"], postconf, lambda table, key: True)
    assert statuses(found)[0] == OK
    missing = check_domain_lists(["example.test"], postconf, lambda table, key: False)
    assert statuses(missing)[0] == FAIL
    unknown = check_domain_lists(["example.test"], postconf, lambda table, key: None)
    assert statuses(unknown)[0] == WARN


POLICY = "check_policy_service inet:127.0.0.1:10040"


@pytest.mark.parametrize("relay, recipient, expected", [
    # the recommended layout
    ("", f"permit_mynetworks, reject_unauth_destination, {POLICY}", OK),
    # guard in smtpd_relay_restrictions, evaluated before the recipient list
    ("permit_mynetworks, reject_unauth_destination", f"{POLICY}", OK),
    # policy before the guard in the same list
    ("", f"{POLICY}, reject_unauth_destination", FAIL),
    ("permit_mynetworks, reject_unauth_destination",
     f"permit_mynetworks, {POLICY}, reject_unauth_destination", OK),
    # the policy in the relay list, before its guard
    ("permit_mynetworks, check_policy_service { inet:127.0.0.1:10040 }, "
     "reject_unauth_destination", "", FAIL),
    # a blanket permit before the guard
    ("permit, reject_unauth_destination", f"{POLICY}", FAIL),
    # localhost is 127.0.0.1
    ("", "reject_unauth_destination, check_policy_service inet:localhost:10040", OK),
])
def test_policy_service_order(relay: str, recipient: str, expected: str) -> None:
    results = check_policy_service(CONFIG, with_(smtpd_relay_restrictions=relay,
                                                 smtpd_recipient_restrictions=recipient))
    row = next(r for r in results if r.check in ("policy service", "open relay"))
    assert row.status == expected, results


def test_no_relay_guard_anywhere_is_an_open_relay() -> None:
    results = check_policy_service(CONFIG, with_(smtpd_relay_restrictions="",
                                                 smtpd_recipient_restrictions=POLICY))
    assert results[0].check == "open relay" and results[0].status == FAIL


@pytest.mark.parametrize("recipient", [
    "reject_unauth_destination",
    "reject_unauth_destination, check_policy_service inet:127.0.0.1:10041",
    "reject_unauth_destination, check_policy_service unix:private/policy",
])
def test_policy_service_missing_or_other_socket(recipient: str) -> None:
    results = check_policy_service(CONFIG, with_(smtpd_recipient_restrictions=recipient))
    row = next(r for r in results if r.check == "policy service")
    assert row.status == FAIL and "check_policy_service" in row.fix


def test_unix_socket_relative_to_queue_directory() -> None:
    config = parse_config("[policyd]\nlisten = unix:/var/spool/postfix/private/backupmx:0666\n")
    postconf = with_(smtpd_recipient_restrictions="reject_unauth_destination, "
                     "check_policy_service unix:private/backupmx")
    assert statuses(check_policy_service(config, postconf))[0] == OK


@pytest.mark.parametrize("options, globals_, timeout, action", [
    ("timeout=10s", {}, OK, OK),
    ("timeout=10s, default_action=DUNNO", {}, OK, FAIL),  # unchecked: backscatter
    ("timeout=10s", {"smtpd_policy_service_default_action": "DUNNO"}, OK, FAIL),
    ("", {}, WARN, OK),  # Postfix defaults: 100s, 451 4.3.5
    ("", {"smtpd_policy_service_timeout": "20s"}, OK, OK),
    ("timeout=10s, default_action=REJECT", {}, OK, FAIL),
    ("timeout=10s, default_action=550 5.7.1 no", {}, OK, FAIL),
    ("timeout=10s, default_action=OK", {}, OK, FAIL),
    ("timeout=10s", {"smtpd_policy_service_default_action": "450 4.7.1 later"}, OK, OK),
    ("timeout=ten", {}, FAIL, OK),
])
def test_policy_service_options(options: str, globals_: Dict[str, str], timeout: str,
                                action: str) -> None:
    service = f"check_policy_service {{ inet:127.0.0.1:10040, {options} }}" if options else POLICY
    results = check_policy_service(CONFIG, with_(
        smtpd_recipient_restrictions=f"reject_unauth_destination, {service}", **globals_))
    by_check = {r.check: r.status for r in results}
    assert (by_check["policy timeout"], by_check["policy default_action"]) == (timeout, action)


@pytest.mark.parametrize("milters, default, expected", [
    ("{ inet:127.0.0.1:8890, default_action=accept }", "tempfail", OK),
    ("inet:127.0.0.1:8890", "accept", OK),
    ("inet:127.0.0.1:8890", "tempfail", FAIL),
    ("{ inet:127.0.0.1:8890, default_action=reject }", "accept", FAIL),
    ("inet:127.0.0.1:9999", "accept", FAIL),
    ("", "accept", FAIL),
])
def test_milter(milters: str, default: str, expected: str) -> None:
    results = check_milter(CONFIG, with_(smtpd_milters=milters, milter_default_action=default))
    assert statuses(results) == [expected]
    assert expected == OK or "default_action=accept" in results[0].fix


@pytest.mark.parametrize("value, expected", [
    ("30d", OK), ("7d", OK), ("1w", OK), ("6d", WARN), ("5", WARN), ("100h", WARN),
    ("lots", FAIL),
])
def test_queue_lifetime(value: str, expected: str) -> None:
    assert statuses(check_queue_lifetime({"maximal_queue_lifetime": value})) == [expected]


def test_queue_lifetime_postfix_default_is_too_short() -> None:
    assert statuses(check_queue_lifetime({})) == [WARN]


@pytest.mark.parametrize("services, expected", [
    (FLUSH, OK),
    (["smtp      inet  n       -       y       -       -       smtpd"], FAIL),
    (["flush     unix  n       -       n       1000?   0       error"], FAIL),
    ([], FAIL),
])
def test_flush_service(services: List[str], expected: str) -> None:
    assert statuses(check_flush_service(services)) == [expected]


FIXED = PrimarySpec("192.0.2.10", 25)
ADDRS = {"mx1.example.test": ("192.0.2.10",), "mx2.test": ("192.0.2.20",)}


@pytest.mark.parametrize("mx, spec, expected", [
    (((10, "mx1.example.test"), (20, "mx2.test")), FIXED, [OK, OK]),
    (((10, "mx1.example.test."), (20, "MX2.test.")), FIXED, [OK, OK]),
    (((10, "mx1.example.test"), (20, "mx2.test")), PrimarySpec(None), [OK, OK]),
    (((10, "mx1.example.test"),), FIXED, [FAIL]),                      # not listed
    (((10, "mx2.test"),), FIXED, [FAIL]),                              # only MX: primary
    (((20, "mx1.example.test"), (10, "mx2.test")), FIXED, [FAIL, OK]),  # preferred over primary
    (((10, "mx1.example.test"), (10, "mx2.test")), FIXED, [FAIL, OK]),  # equal preference
    (((10, "mx1.example.test"), (20, "mx2.test")), PrimarySpec("192.0.2.99", 25), [OK, FAIL]),
    ((), FIXED, [FAIL]),
    (((0, ""),), PrimarySpec(None), [FAIL]),                           # null MX (RFC 7505)
    (((0, "."),), FIXED, [FAIL]),
    # two primaries of equal preference: both probed; one without an address is a warning
    (((10, "mx1.example.test"), (10, "noaddr.example.test"), (20, "mx2.test")),
     PrimarySpec(None), [OK, OK, WARN]),
])
def test_dns(mx: tuple, spec: PrimarySpec, expected: List[str]) -> None:
    results = check_dns("example.test", spec, DomainDns(mx=mx, addresses=ADDRS), "mx2.test")
    assert statuses(results) == expected, results
    assert all(r.fix for r in results if r.status == FAIL)


def test_dns_fixed_primary_by_name() -> None:
    dns = DomainDns(mx=((10, "mx1.example.test"), (20, "mx2.test")),
                    addresses={**ADDRS, "primary.example.test": ("192.0.2.10",)})
    results = check_dns("example.test", PrimarySpec("primary.example.test", 25), dns, "mx2.test")
    assert statuses(results) == [OK, OK]


def _maps(covers: bool = True) -> object:
    class Recipients:
        def __len__(self) -> int:
            return 3

        def covers(self, domain: str) -> bool:
            return covers

    class Maps:
        recipients = Recipients()
    return Maps()


def test_maps_parse_or_fail_with_the_line() -> None:
    def broken(config: object) -> object:
        raise MapError("/etc/backupmx/relay_recipients:3: expected 'key value'")
    results = checks.check_maps(CONFIG, broken)
    assert statuses(results) == [FAIL] and ":3:" in results[0].message
    uncovered = checks.check_maps(CONFIG, lambda c: _maps(covers=False))
    assert statuses(uncovered) == [OK, WARN, WARN]


def test_json_and_text_reports() -> None:
    results = run_checks(CONFIG, with_(fast_flush_domains=""), FLUSH, None, "mx2.test",
                         load=lambda c: _maps())
    text = render_text(results)
    assert "FAIL  fast_flush_domains" in text and "fix: postconf -e" in text
    import json
    report = json.loads(render_json(results))
    assert report["ok"] is False
    assert {"check", "status", "message", "fix"} <= set(report["checks"][0])


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:5353", ("127.0.0.1", 5353)), ("[::1]:53", ("::1", 53)),
    ("10.0.0.1", ("10.0.0.1", 53)),
])
def test_nameserver_option(text: str, expected: tuple) -> None:
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize("mail_to, relay_domains, expected", [
    ("", "example.test", []),                                   # not configured: no row
    ("postmaster@elsewhere.test", "example.test", [OK]),
    ("postmaster@example.test", "example.test", [FAIL]),        # a [domains] entry
    ("hostmaster@other.test", "example.test, other.test", [FAIL]),
    ("admin@sub.other.test", "example.test, .other.test", [FAIL]),
    ("admin@sub.other.test", "example.test, other.test", [OK]),
])
def test_notify_mail_to_must_not_be_held_here(mail_to: str, relay_domains: str,
                                              expected: List[str]) -> None:
    config = parse_config(f"[notify]\nmail_to = {mail_to}\n[domains]\n"
                          "example.test = [192.0.2.1]:25\n")
    postconf = with_(relay_domains=relay_domains, parent_domain_matches_subdomains="")
    results = checks.check_notify(config, postconf)
    assert statuses(results) == expected
    assert all(r.fix for r in results if r.status == FAIL)
