"""What the milter remembers of one message, and the ledger record made of it.

Pure code, no pymilter: the milter callbacks only feed an ``Envelope``; ``build_record`` decides
what goes into the ledger. Only recipients of configured relay domains count (a backup MX holds
mail for those alone); a message without any is not recorded at all.

The milter never sees the message content (it negotiates no headers and no body), so the size
it records is the one the client declared with the ``SIZE=`` parameter of MAIL FROM (RFC 1870),
or 0 when none was given; the exact size Postfix stores (``postqueue -j``'s ``message_size``)
replaces it when reconciliation first sees the message in the queue (admin/queue.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection, Dict, List, Mapping, Optional, Sequence, Tuple

from backupmx.common.addresses import address_domain


def clean_text(value: Any) -> str:
    """Text safe to store: pymilter hands undecodable bytes over as lone surrogates (or bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    text = str(value)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def bare_address(value: Any) -> str:
    """``<user@Example.TEST>`` -> ``user@Example.TEST`` (the null sender stays empty)."""
    text = clean_text(value).strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    return text.strip()


@dataclass(frozen=True)
class MessageRecord:
    """One accepted message as the ledger stores it: one row, plus one row per relay domain."""

    queue_id: str
    received_at: float
    sender: str
    size: int
    client_addr: str
    client_name: str
    helo: str
    recipients: Mapping[str, Tuple[str, ...]]  # relay domain -> its recipients

    def to_json(self) -> Dict[str, Any]:
        """The journal's form of the record (plain JSON types)."""
        return {
            "queue_id": self.queue_id, "received_at": self.received_at, "sender": self.sender,
            "size": self.size, "client_addr": self.client_addr,
            "client_name": self.client_name, "helo": self.helo,
            "recipients": {d: list(r) for d, r in self.recipients.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "MessageRecord":
        return cls(
            queue_id=str(data["queue_id"]), received_at=float(data["received_at"]),
            sender=str(data["sender"]), size=int(data["size"]),
            client_addr=str(data["client_addr"]), client_name=str(data["client_name"]),
            helo=str(data["helo"]),
            recipients={str(d): tuple(str(r) for r in rcpts)
                        for d, rcpts in dict(data["recipients"]).items()},
        )


@dataclass
class Envelope:
    """What the callbacks collected for the current message of one SMTP session; ``size`` is
    the client's ``SIZE=`` declaration in bytes (0: none)."""

    sender: str = ""
    recipients: List[str] = field(default_factory=list)
    size: int = 0


#: the largest SIZE= value taken (Postfix's own message_size_limit cannot exceed it either)
MAX_DECLARED_SIZE = 2**53


def declared_size(params: Sequence[Any]) -> int:
    """The ``SIZE=`` value among MAIL FROM parameters (RFC 1870, keyword case-insensitive), in
    bytes; 0 when absent or not a plain decimal number (the queue's figure replaces it later)."""
    for param in params:
        keyword, sep, value = clean_text(param).partition("=")
        if sep and keyword.strip().upper() == "SIZE":
            value = value.strip()
            if value.isascii() and value.isdigit() and int(value) <= MAX_DECLARED_SIZE:
                return int(value)
            return 0
    return 0


def relay_recipients(recipients: List[str], domains: Collection[str]) -> Dict[str, Tuple[str, ...]]:
    """Recipients grouped by configured relay domain, first-seen order, duplicates dropped."""
    grouped: Dict[str, List[str]] = {}
    for recipient in recipients:
        domain = address_domain(recipient)
        if domain is None or domain not in domains:
            continue
        rcpts = grouped.setdefault(domain, [])
        recipient = clean_text(recipient)
        if recipient not in rcpts:
            rcpts.append(recipient)
    return {domain: tuple(rcpts) for domain, rcpts in grouped.items()}


def build_record(
    queue_id: Optional[str],
    envelope: Envelope,
    domains: Collection[str],
    received_at: float,
    client_addr: str = "",
    client_name: str = "",
    helo: str = "",
) -> Optional[MessageRecord]:
    """The ledger record for a message, or None when no recipient is in a relay domain."""
    grouped = relay_recipients(envelope.recipients, domains)
    if not grouped:
        return None
    return MessageRecord(
        queue_id=clean_text(queue_id or "").strip(),
        received_at=received_at,
        sender=clean_text(envelope.sender),
        size=envelope.size,
        client_addr=clean_text(client_addr),
        client_name=clean_text(client_name),
        helo=clean_text(helo),
        recipients=grouped,
    )
