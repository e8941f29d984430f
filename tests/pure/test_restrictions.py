"""What in Postfix's restriction lists can accept relay mail before policyd is asked.

A table of main.cf restriction settings through ``backupmx check``'s rule; the Postfix defaults
used below are what ``postconf -x`` prints on Postfix 3.7 for a main.cf that sets only
compatibility_level (tests/integration/test_check_restrictions.py compares them with the real
postconf on every run).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import pytest

from backupmx.admin.restrictions import evaluation_order
from backupmx.admin.setup_checks import FAIL, OK, WARN, check_restriction_bypass
from tests.harness.postconf_samples import CONFIG, DEFAULTS_0, DEFAULTS_3_6, GOOD

POLICY = "check_policy_service { inet:127.0.0.1:10040, timeout=10s, default_action=DUNNO }"
#: Postfix 3.7's defaults at compatibility_level = 3.6 (Debian 12's), as postconf -x prints them


def review(**settings: str) -> List[Tuple[str, str]]:
    results = check_restriction_bypass(CONFIG, {**GOOD, **settings})
    return [(r.check, r.status) for r in results]


def messages(**settings: str) -> List[str]:
    return [r.message for r in check_restriction_bypass(CONFIG, {**GOOD, **settings})]


@pytest.mark.parametrize("settings, expected", [
    # the README's and the harness's setup
    ({}, [("policy bypass", OK)]),
    # Postfix 3.7 defaults with the policy service appended to the recipient list
    ({**DEFAULTS_3_6, "smtpd_recipient_restrictions": f"reject_unauth_destination, {POLICY}"},
     [("policy bypass", OK)]),
    ({**DEFAULTS_0, "smtpd_recipient_restrictions":
        f"permit_mynetworks, reject_unauth_destination, {POLICY}"}, [("policy bypass", OK)]),
    # the classic backup-MX recipe, kept while adding backupmx
    ({"smtpd_recipient_restrictions":
        f"permit_mynetworks, permit_mx_backup, reject_unauth_destination, {POLICY}"},
     [("policy bypass", FAIL), ("permit_mx_backup", WARN)]),
    # after the policy service it bypasses nothing, but is still deprecated
    ({"smtpd_recipient_restrictions":
        f"permit_mynetworks, reject_unauth_destination, {POLICY}, permit_mx_backup"},
     [("policy bypass", OK), ("permit_mx_backup", WARN)]),
    # in the relay list it cannot skip the recipient list (PERMIT ends one list only)
    ({"smtpd_relay_restrictions": "permit_mx_backup, reject_unauth_destination"},
     [("policy bypass", OK), ("permit_mx_backup", WARN)]),
    ({"smtpd_relay_restrictions": "permit, reject_unauth_destination"}, [("policy bypass", OK)]),
    ({"smtpd_recipient_restrictions": f"permit_auth_destination, reject, {POLICY}"},
     [("policy bypass", FAIL)]),
    ({"smtpd_recipient_restrictions": f"reject_unauth_destination permit {POLICY}"},
     [("policy bypass", FAIL)]),
    ({"smtpd_recipient_restrictions":
      f"permit_naked_ip_address,reject_unauth_destination,{POLICY}"},
     [("policy bypass", FAIL)]),
    # restricted clients are fine; rejections are fine
    ({"smtpd_recipient_restrictions": "permit_mynetworks permit_sasl_authenticated "
        "permit_tls_clientcerts reject_non_fqdn_recipient reject_unknown_recipient_domain "
        f"reject_rbl_client zen.example.test reject_unauth_destination {POLICY}"},
     [("policy bypass", OK)]),
    # tables and other policy services may answer OK: warnings
    ({"smtpd_recipient_restrictions": "check_client_access cidr:/etc/postfix/clients, "
        f"reject_unauth_destination, {POLICY}"}, [("policy bypass", WARN)]),
    ({"smtpd_recipient_restrictions": "reject_unauth_destination, check_recipient_access "
        f"hash:/etc/postfix/access, check_sender_access hash:/etc/postfix/senders, {POLICY}"},
     [("policy bypass", WARN), ("policy bypass", WARN)]),
    ({"smtpd_recipient_restrictions": "reject_unauth_destination, check_policy_service "
        f"unix:private/other, {POLICY}"}, [("policy bypass", WARN)]),
    ({"smtpd_restriction_classes": "trusted", "smtpd_recipient_restrictions":
        f"reject_unauth_destination, trusted, {POLICY}"}, [("policy bypass", WARN)]),
    # policyd in the relay list: what comes before it there counts
    ({"smtpd_relay_restrictions": f"permit_mynetworks, permit_auth_destination, reject, {POLICY}",
      "smtpd_recipient_restrictions": "reject_unauth_destination"},
     [("policy bypass", FAIL)]),
    # listed twice: the occurrence that is really asked counts
    ({"smtpd_relay_restrictions": f"permit, {POLICY}", "smtpd_recipient_restrictions":
        f"reject_unauth_destination, {POLICY}"}, [("policy bypass", OK)]),
    # no policy service at all: check_policy_service's own check says so; only deprecation here
    ({"smtpd_recipient_restrictions": "permit_mx_backup, reject_unauth_destination"},
     [("permit_mx_backup", WARN)]),
    ({"smtpd_sender_restrictions": "permit_mx_backup"}, [("policy bypass", OK),
                                                         ("permit_mx_backup", WARN)]),
])
def test_restriction_table(settings: Dict[str, str], expected: List[Tuple[str, str]]) -> None:
    assert review(**settings) == expected


def test_failure_names_the_restriction_the_list_and_the_fix() -> None:
    results = check_restriction_bypass(CONFIG, {**GOOD, "smtpd_recipient_restrictions":
                                               f"permit_mx_backup, reject_unauth_destination, "
                                               f"{POLICY}"})
    bypass, deprecated = results
    assert bypass.message == (
        "permit_mx_backup comes before check_policy_service inet:127.0.0.1:10040 in "
        "smtpd_recipient_restrictions: it accepts every recipient of a domain that lists this "
        "host as MX, and then Postfix never asks policyd (no recipient check, no deferral to "
        "the primary)")
    assert bypass.fix.startswith("remove permit_mx_backup from smtpd_recipient_restrictions")
    assert deprecated.message == ("permit_mx_backup in smtpd_recipient_restrictions is "
                                  "deprecated since Postfix 3.9 and will be removed")


def test_table_warnings_name_the_table_and_who_chooses_the_key() -> None:
    texts = messages(smtpd_recipient_restrictions="check_sender_access hash:/s, "
                     f"check_client_access cidr:/c, reject_unauth_destination, {POLICY}")
    assert "check_sender_access hash:/s comes before" in texts[0]
    assert "may answer OK for a key any client chooses" in texts[0]
    assert "fine if it lists only your own hosts" in texts[1]


def test_ok_row_names_the_evaluation_order() -> None:
    assert messages()[0].endswith("(Postfix applies smtpd_relay_restrictions, then "
                                  "smtpd_recipient_restrictions)")
    assert messages(smtpd_relay_before_recipient_restrictions="no")[0].endswith(
        "(Postfix applies smtpd_recipient_restrictions, then smtpd_relay_restrictions)")


@pytest.mark.parametrize("value, first", [("yes", "smtpd_relay_restrictions"),
                                          ("", "smtpd_relay_restrictions"),
                                          ("no", "smtpd_recipient_restrictions"),
                                          ("NO", "smtpd_recipient_restrictions")])
def test_evaluation_order(value: str, first: str) -> None:
    assert evaluation_order(value)[0] == first


def test_unix_socket_policy_is_recognised() -> None:
    from backupmx.common.config import parse_config
    config = parse_config("[policyd]\nlisten = unix:/var/spool/postfix/private/backupmx\n"
                          "[domains]\nexample.test = [192.0.2.10]:25\n")
    results = check_restriction_bypass(config, {**GOOD, "smtpd_recipient_restrictions":
                                                "permit_mx_backup, reject_unauth_destination, "
                                                "check_policy_service unix:private/backupmx"})
    assert [r.status for r in results] == [FAIL, WARN]

