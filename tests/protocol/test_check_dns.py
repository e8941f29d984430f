"""``backupmx check`` DNS facts through twisted.names, against a local fake DNS server."""
from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.names import client, dns
from twisted.trial import unittest

from backupmx.admin.check import gather_dns
from backupmx.admin.setup_checks import FAIL, OK, check_dns
from backupmx.common.config import PrimarySpec
from tests.harness.dns_server import fake_dns

RECORDS = [
    ("example.test", dns.Record_MX(10, b"mx1.example.test")),
    ("example.test", dns.Record_MX(20, b"backupmx.test")),
    ("mx1.example.test", dns.Record_A("127.0.0.1")),
    ("mx1.example.test", dns.Record_AAAA("::1")),
    ("backupmx.test", dns.Record_A("127.0.0.2")),
    ("wrong.test", dns.Record_MX(5, b"backupmx.test")),
    ("wrong.test", dns.Record_MX(10, b"mx1.example.test")),
]


class GatherDnsTests(unittest.TestCase):
    def setUp(self) -> None:
        self.port, number = fake_dns(RECORDS)
        self.addCleanup(self.port.stopListening)
        self.resolver = client.Resolver(servers=[("127.0.0.1", number)])

    @defer.inlineCallbacks
    def test_mx_records_and_primary_addresses(self) -> Any:
        facts = yield gather_dns(self.resolver, {"example.test": PrimarySpec("127.0.0.1", 2526)}, 2)
        found = facts["example.test"]
        self.assertEqual(sorted(found.mx), [(10, "mx1.example.test"), (20, "backupmx.test")])
        self.assertEqual(sorted(found.addresses["mx1.example.test"]), ["127.0.0.1", "::1"])
        results = check_dns("example.test", PrimarySpec("127.0.0.1", 2526), found, "backupmx.test")
        self.assertEqual([r.status for r in results], [OK, OK])

    @defer.inlineCallbacks
    def test_wrong_preference_and_wrong_primary_fail(self) -> Any:
        spec = PrimarySpec("127.0.0.9", 25)
        facts = yield gather_dns(self.resolver, {"wrong.test": spec}, 2)
        results = check_dns("wrong.test", spec, facts["wrong.test"], "backupmx.test")
        self.assertEqual([r.status for r in results], [FAIL, FAIL])

    @defer.inlineCallbacks
    def test_no_mx_records(self) -> Any:
        facts = yield gather_dns(self.resolver, {"nothing.test": PrimarySpec(None)}, 2)
        self.assertEqual(facts["nothing.test"].mx, ())
        results = check_dns("nothing.test", PrimarySpec(None), facts["nothing.test"],
                            "backupmx.test")
        self.assertEqual([r.status for r in results], [FAIL])

    @defer.inlineCallbacks
    def test_primary_given_by_name_is_resolved(self) -> Any:
        spec = PrimarySpec("mx1.example.test", 25)
        facts = yield gather_dns(self.resolver, {"example.test": spec}, 2)
        results = check_dns("example.test", spec, facts["example.test"], "backupmx.test")
        self.assertEqual([r.status for r in results], [OK, OK])
