"""Sample backupmx configuration and Postfix settings (as ``postconf -x`` prints them) for the
tests of ``backupmx check``."""
from __future__ import annotations

from typing import Dict

from backupmx.common.config import parse_config

CONFIG = parse_config("""
[policyd]
listen = inet:127.0.0.1:10040
[milter]
listen = inet:127.0.0.1:8890
[domains]
example.test = [192.0.2.10]:25
other.test = mx
""")

GOOD: Dict[str, str] = {
    "relay_domains": "example.test, other.test",
    "fast_flush_domains": "example.test other.test",
    "mydestination": "backupmx.test, localhost",
    "virtual_mailbox_domains": "",
    "virtual_alias_domains": "",
    "queue_directory": "/var/spool/postfix",
    "smtpd_relay_restrictions": "permit_mynetworks, defer_unauth_destination",
    "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination, "
                                    "check_policy_service { inet:127.0.0.1:10040, timeout=10s }",
    "smtpd_milters": "{ inet:127.0.0.1:8890, default_action=accept }",
    "milter_default_action": "tempfail",
    "maximal_queue_lifetime": "30d",
}

DEFAULTS_3_6 = {
    "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, "
                                "defer_unauth_destination",
    "smtpd_recipient_restrictions": "",
    "smtpd_relay_before_recipient_restrictions": "yes",
}
#: the same at compatibility_level = 0 (what postconf -d prints; a main.cf from before 2.10)
DEFAULTS_0 = {
    "smtpd_relay_restrictions": "",
    "smtpd_recipient_restrictions": "",
    "smtpd_relay_before_recipient_restrictions": "no",
}
