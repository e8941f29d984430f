"""What the milter records: relay recipients only, sizes, addresses, journal form."""
from __future__ import annotations

import pytest

from backupmx.milter.envelope import (
    Envelope,
    MessageRecord,
    address_domain,
    bare_address,
    build_record,
    clean_text,
    declared_size,
    relay_recipients,
)

DOMAINS = frozenset({"a.test", "b.test"})


def test_addresses_and_domains() -> None:
    assert bare_address("<Alice@A.Test>") == "Alice@A.Test"
    assert bare_address("<>") == ""
    assert address_domain("alice@A.TEST.") == "a.test"
    assert address_domain("postmaster") is None
    assert address_domain("odd@") is None


def test_relay_recipients_grouped_deduplicated_and_filtered() -> None:
    grouped = relay_recipients(["a@a.test", "x@other.test", "b@B.test", "a@a.test", "c@a.test",
                                "nodomain", "d@sub.a.test"], DOMAINS)
    assert grouped == {"a.test": ("a@a.test", "c@a.test"), "b.test": ("b@B.test",)}


def test_no_relay_recipient_no_record() -> None:
    envelope = Envelope("s@x.test", ["x@other.test"], 10)
    assert build_record("Q", envelope, DOMAINS, 1.0) is None


def test_record_fields_and_journal_round_trip() -> None:
    envelope = Envelope("s@x.test", ["a@a.test", "b@b.test"], declared_size(["SIZE=21"]))
    record = build_record(" Q1 ", envelope, DOMAINS, 5.5, "192.0.2.1", "mx.x.test", "helo")
    assert record is not None
    assert (record.queue_id, record.size, record.received_at) == ("Q1", 21, 5.5)
    assert MessageRecord.from_json(record.to_json()) == record


def test_undecodable_bytes_become_storable_text() -> None:
    text = b"caf\xe9".decode("utf-8", "surrogateescape")
    assert clean_text(text) == "caf\\xe9"
    assert clean_text(b"caf\xe9") == "caf\\xe9"
    envelope = Envelope(clean_text(text), [f"{text}@a.test"])
    record = build_record("Q", envelope, DOMAINS, 1.0)
    assert record is not None
    record.to_json()["recipients"]["a.test"][0].encode("utf-8")


@pytest.mark.parametrize("params, expected", [
    ((), 0),
    (("SIZE=1234",), 1234),
    (("BODY=8BITMIME", "size=77", "SMTPUTF8"), 77),   # RFC 1870: keyword case-insensitive
    (("SIZE=",), 0), (("SIZE=-5",), 0), (("SIZE=12x",), 0), (("SIZE=\u0661\u0662",), 0),
    (("SIZE=" + "9" * 40,), 0),                        # absurd: the queue's figure decides
    ((b"SIZE=9",), 9),
])
def test_declared_size_from_mail_from_parameters(params: tuple, expected: int) -> None:
    assert declared_size(params) == expected
