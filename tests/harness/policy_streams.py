"""Policy delegation byte streams and what must come out of them, shared by the codec and the
protocol tests. Every row is replayed at several read sizes: framing must not depend on how
the bytes were split."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Tuple

READ_SIZES = (4096, 128, 16, 1)

# What Postfix 3.7 sends at RCPT (SMTPD_POLICY_README), plus one attribute from the future.
POSTFIX_RCPT: List[Tuple[str, str]] = [
    ("request", "smtpd_access_policy"), ("protocol_state", "RCPT"), ("protocol_name", "ESMTP"),
    ("client_address", "198.51.100.7"), ("client_name", "mail.sender.test"),
    ("client_port", "41234"), ("reverse_client_name", "mail.sender.test"),
    ("server_address", "127.0.0.1"), ("server_port", "25"), ("helo_name", "mail.sender.test"),
    ("sender", "someone@sender.test"), ("recipient", "alice@example.test"),
    ("recipient_count", "0"), ("queue_id", ""), ("instance", "1a2b.6571f3a1.c0ffe.0"),
    ("size", "1024"), ("etrn_domain", ""), ("stress", ""), ("sasl_method", ""),
    ("sasl_username", ""), ("sasl_sender", ""), ("ccert_subject", ""), ("ccert_issuer", ""),
    ("ccert_fingerprint", ""), ("ccert_pubkey_fingerprint", ""),
    ("encryption_protocol", "TLSv1.3"), ("encryption_cipher", "TLS_AES_256_GCM_SHA384"),
    ("encryption_keysize", "256"), ("policy_context", ""),
    ("some_future_attribute", "whatever=it is"),
]


def encode(pairs: List[Tuple[str, str]], eol: bytes = b"\n") -> bytes:
    """One request as Postfix writes it (bare LF unless told otherwise)."""
    return b"".join(f"{name}={value}".encode() + eol for name, value in pairs) + eol


def small(n: int) -> bytes:
    return encode([("request", "smtpd_access_policy"), ("n", str(n))])


@dataclass(frozen=True)
class Row:
    """A byte stream, the requests it must yield (in order), and whether it breaks the
    connection (closed without a reply to the broken request)."""

    name: str
    stream: bytes
    requests: Tuple[Dict[str, str], ...]
    broken: bool = False
    max_line_length: int = 8192
    max_attributes: int = 200


def _n(n: int) -> Dict[str, str]:
    return {"request": "smtpd_access_policy", "n": str(n)}


LONG_VALUE = "x" * 60  # with "a=" a 62 byte line
ROWS: Tuple[Row, ...] = (
    Row("one request", small(1), (_n(1),)),
    Row("two requests", small(1) + small(2), (_n(1), _n(2))),
    Row("many requests", b"".join(small(i) for i in range(60)), tuple(_n(i) for i in range(60))),
    Row("postfix 3.7 rcpt with unknown attribute", encode(POSTFIX_RCPT), (dict(POSTFIX_RCPT),)),
    Row("value with = and empty value", b"sender=a=b@x.test\nqueue_id=\n\n",
        ({"sender": "a=b@x.test", "queue_id": ""},)),
    Row("single attribute", b"a=1\n\n", ({"a": "1"},)),
    Row("non-utf8 value", b"sender=j\xfcrgen@x.test\nn=1\n\n",
        ({"sender": "j\ufffdrgen@x.test", "n": "1"},)),
    Row("utf8 value", "sender=jürgen@x.test\n\n".encode(), ({"sender": "jürgen@x.test"},)),
    Row("crlf", encode([("a", "1"), ("b", "2")], b"\r\n") + small(3),
        ({"a": "1", "b": "2"}, _n(3))),
    Row("crlf then lf end", b"a=1\r\nb=2\r\n\n", ({"a": "1", "b": "2"},)),
    Row("incomplete request waits", small(1) + b"request=smtpd_access_policy\nn=2\n", (_n(1),)),
    Row("line at the limit", f"a={LONG_VALUE}\n\n".encode(), ({"a": LONG_VALUE},),
        max_line_length=62),
    Row("line over the limit", small(1) + f"a=y{LONG_VALUE}\n\n".encode() + small(3), (_n(1),),
        broken=True, max_line_length=62),
    Row("unterminated line over the limit", small(1) + b"a=" + b"z" * 200, (_n(1),),
        broken=True, max_line_length=62),
    Row("multibyte line over the limit in bytes", ("a=" + "é" * 40 + "\n\n").encode(), (),
        broken=True, max_line_length=62),
    Row("attributes at the limit", encode([(f"k{i}", "v") for i in range(5)]),
        ({f"k{i}": "v" for i in range(5)},), max_attributes=5),
    Row("too many attributes", small(1) + encode([(f"k{i}", "v") for i in range(6)]) + small(3),
        (_n(1),), broken=True, max_attributes=5),
    Row("largest valid request", encode([(f"k{i}", "v" * 13) for i in range(3)]),
        ({f"k{i}": "v" * 13 for i in range(3)},), max_line_length=16, max_attributes=3),
    Row("largest valid crlf request", encode([(f"k{i}", "v" * 12) for i in range(3)], b"\r\n"),
        ({f"k{i}": "v" * 12 for i in range(3)},), max_line_length=16, max_attributes=3),
    Row("long line before the end of an unfinished request",
        small(1) + b"a=" + b"b" * 70 + b"\nc=d\n", (_n(1),), broken=True, max_line_length=62),
    Row("unterminated request over the size limit", b"k=v\n" * 200, (), broken=True,
        max_line_length=62, max_attributes=5),
    Row("garbage line", b"hello there\n\n", (), broken=True),
    Row("garbage among attributes", b"request=smtpd_access_policy\nGET / HTTP/1.0\n\n", (),
        broken=True),
    Row("request then garbage", small(1) + b"garbage\n\n" + small(3), (_n(1),), broken=True),
    Row("garbage then a request is ignored", b"garbage\n\n" + small(2), (), broken=True),
    Row("empty request", b"\n", (), broken=True),
    Row("request then empty request", small(1) + b"\n" + small(3), (_n(1),), broken=True),
    Row("crlf empty request", b"\r\n" + small(2), (), broken=True),
)


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]
