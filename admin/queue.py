"""The live Postfix queue (``postqueue -j``) and the one reconciliation of the ledger with it.

``postqueue -j`` prints one JSON object per queued message; its ``recipients`` are those still
undelivered. A ledger row (message, domain) is still held while the message is queued with at
least one recipient of that domain; otherwise it has left the queue (delivered, bounced, or
deleted). Status and flush both call ``reconcile``: there is one definition of "held".

Held bytes are Postfix's own figure: when reconciliation first sees a message in the queue it
records ``postqueue -j``'s ``message_size`` (the bytes of header and body in the queue file,
Postfix's Received: header included: what the primary will receive) in place of the milter's
provisional ``SIZE=`` declaration, which the milter takes because it never sees the content.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from backupmx.common.addresses import address_domain
from backupmx.milter.ledger import HeldRow, Ledger

# A row never seen in the queue is only declared gone after this many seconds: the milter records
# at end-of-message, a moment before Postfix commits the queue file that postqueue can list.
UNSEEN_GRACE_SECONDS = 60.0


class QueueFormatError(ValueError):
    """postqueue -j printed something that is not its JSON lines."""


@dataclass(frozen=True)
class QueuedMessage:
    queue_id: str
    queue_name: str
    arrival_time: Optional[int]
    message_size: Optional[int]
    sender: str
    recipients: Tuple[Tuple[str, str], ...]  # (address, delay_reason)

    @property
    def domains(self) -> FrozenSet[str]:
        """Domains that still have undelivered recipients in this message."""
        found = (address_domain(address) for address, _ in self.recipients)
        return frozenset(d for d in found if d)


def parse_queue(text: str) -> List[QueuedMessage]:
    """Parse ``postqueue -j`` output; QueueFormatError names the bad line."""
    messages: List[QueuedMessage] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            recipients = tuple((str(r["address"]), str(r.get("delay_reason", "")))
                               for r in data.get("recipients", []))
            messages.append(QueuedMessage(
                queue_id=str(data["queue_id"]), queue_name=str(data.get("queue_name", "")),
                arrival_time=_optional_int(data.get("arrival_time")),
                message_size=_optional_int(data.get("message_size")),
                sender=str(data.get("sender", "")), recipients=recipients))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise QueueFormatError(f"postqueue -j line {number}: {error}: {line[:200]!r}") from None
    return messages


def _optional_int(value: object) -> Optional[int]:
    return int(value) if isinstance(value, (int, float)) else None


@dataclass(frozen=True)
class QueueSnapshot:
    """Which relay domains each queued message still waits for."""

    domains_by_id: Dict[str, FrozenSet[str]] = field(default_factory=dict)
    sizes_by_id: Dict[str, int] = field(default_factory=dict)  # message_size, bytes

    @classmethod
    def from_messages(cls, messages: Iterable[QueuedMessage]) -> "QueueSnapshot":
        listed = list(messages)
        return cls({m.queue_id: m.domains for m in listed},
                   {m.queue_id: m.message_size for m in listed if m.message_size is not None})

    @classmethod
    def from_text(cls, text: str) -> "QueueSnapshot":
        """The snapshot of a ``postqueue -j`` output (QueueFormatError names a bad line).

        Each line is read with ``json.loads``, but only its queue id and recipient addresses
        are kept (no QueuedMessage is built), and equal domain sets share one frozenset: with
        100,000 queued messages, status spends its time here (bench/ledger_bench.py).
        """
        domains_by_id: Dict[str, FrozenSet[str]] = {}
        sizes_by_id: Dict[str, int] = {}
        interned: Dict[FrozenSet[str], FrozenSet[str]] = {}
        loads = json.loads
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data = loads(line)
                found = (address_domain(str(r["address"])) for r in data.get("recipients", ()))
                key = frozenset(domain for domain in found if domain)
                queue_id = str(data["queue_id"])
                domains_by_id[queue_id] = interned.setdefault(key, key)
                size = data.get("message_size")
                if isinstance(size, int):
                    sizes_by_id[queue_id] = size
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise QueueFormatError(f"postqueue -j line {number}: {error}: {line[:200]!r}"
                                       ) from None
        return cls(domains_by_id, sizes_by_id)

    def holds(self, queue_id: str, domain: str) -> bool:
        return domain in self.domains_by_id.get(queue_id, ())

    def __contains__(self, queue_id: object) -> bool:
        return queue_id in self.domains_by_id


@dataclass(frozen=True)
class Reconciliation:
    """What one reconciliation found: rows that left the queue, messages first seen in it, and
    the queue's exact size of those (message id, bytes)."""

    gone: Tuple[Tuple[int, str], ...]
    seen: Tuple[int, ...]
    still_held: Dict[str, int]
    sizes: Tuple[Tuple[int, int], ...] = ()

    def gone_by_domain(self) -> Dict[str, int]:
        counts: Dict[str, int] = {}
        for _, domain in self.gone:
            counts[domain] = counts.get(domain, 0) + 1
        return counts


def compare(rows: Sequence[HeldRow], snapshot: QueueSnapshot, now: float,
            grace: float = UNSEEN_GRACE_SECONDS) -> Reconciliation:
    """Pure decision: which held rows left the queue, which messages are seen in it for the first
    time (with their message_size). A row never seen queued and younger than ``grace`` stays
    held (UNSEEN_GRACE_SECONDS)."""
    gone: List[Tuple[int, str]] = []
    seen: List[int] = []
    sizes: Dict[int, int] = {}
    still: Dict[str, int] = {}
    for row in rows:
        if row.queue_id in snapshot:
            if not row.seen_in_queue:
                seen.append(row.message_id)
                size = snapshot.sizes_by_id.get(row.queue_id)
                if size is not None:
                    sizes[row.message_id] = size
            if snapshot.holds(row.queue_id, row.domain):
                still[row.domain] = still.get(row.domain, 0) + 1
                continue
            gone.append((row.message_id, row.domain))
        elif row.seen_in_queue or now - row.received_at >= grace:
            gone.append((row.message_id, row.domain))
        else:
            still[row.domain] = still.get(row.domain, 0) + 1
    return Reconciliation(tuple(gone), tuple(dict.fromkeys(seen)), still, tuple(sizes.items()))


def reconcile(ledger: Ledger, snapshot: QueueSnapshot, now: float,
              flush_id: Optional[int] = None, domain: Optional[str] = None,
              grace: float = UNSEEN_GRACE_SECONDS) -> Reconciliation:
    """Mark held rows no longer in the queue as left (or flushed, during flush ``flush_id``)."""
    ledger.replay_journal()
    result = compare(ledger.held_rows(domain), snapshot, now, grace)
    ledger.apply_reconciliation(result.gone, result.seen, now, flush_id, result.sizes)
    return result
