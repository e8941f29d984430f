"""The live Postfix queue (``postqueue -j``) and the one reconciliation of the ledger with it.

``postqueue -j`` prints one JSON object per queued message; its ``recipients`` are those still
undelivered. A ledger row (message, domain) is still held while the message is queued with at
least one recipient of that domain; otherwise it has left the queue (delivered, bounced, or
deleted). Status and flush both call ``reconcile``: there is one definition of "held".

The other way round, a queued message with recipients in a relay domain that the ledger does not
know (the milter was down or restarting, or libmilter ended its session before the message, as
after ``XCLIENT ADDR=[UNAVAILABLE]``) is adopted into the ledger from what ``postqueue -j`` says:
queue id, sender, the recipients still queued, size and arrival time, marked adopted. So the
accounting holds every message Postfix holds for a relay domain, whatever the milter saw.

Held bytes are Postfix's own figure: when reconciliation first sees a message in the queue it
records ``postqueue -j``'s ``message_size`` (header and body as the queue file counts them,
Postfix's Received: header included) in place of the milter's provisional ``SIZE=`` declaration,
which the milter takes because it never sees the content.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Collection, Dict, FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple

from backupmx.common.addresses import address_domain
from backupmx.milter.envelope import MessageRecord, relay_recipients
from backupmx.milter.ledger import HeldRow, KnownRow, Ledger

# postqueue -j shows the null sender so; the ledger stores it as the milter sees it: empty.
NULL_SENDER = "MAILER-DAEMON"
# A ledger message recorded this long before a queued message's arrival_time (whole seconds) may
# still be that message; one recorded earlier is a message that had the same queue id before.
ARRIVAL_SLACK_SECONDS = 1.0

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
    #: each message's ``postqueue -j`` line (from_text) or parsed form (from_messages), read
    #: again only for messages to adopt
    lines: Dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    parsed: Dict[str, QueuedMessage] = field(default_factory=dict, compare=False, repr=False)
    #: each message's ``message_size`` (bytes), when postqueue gave one
    sizes_by_id: Dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_messages(cls, messages: Iterable[QueuedMessage]) -> "QueueSnapshot":
        listed = list(messages)
        return cls({m.queue_id: m.domains for m in listed}, parsed={m.queue_id: m for m in listed},
                   sizes_by_id={m.queue_id: m.message_size for m in listed
                                if m.message_size is not None})

    def message(self, queue_id: str) -> Optional[QueuedMessage]:
        """The queued message in full, or None when the snapshot has only its domains."""
        found = self.parsed.get(queue_id)
        if found is None and queue_id in self.lines:
            found = parse_queue(self.lines[queue_id])[0]
        return found

    @classmethod
    def from_text(cls, text: str) -> "QueueSnapshot":
        """The snapshot of a ``postqueue -j`` output (QueueFormatError names a bad line).

        Each line is read with ``json.loads``, but only its queue id and recipient addresses
        are kept (no QueuedMessage is built), and equal domain sets share one frozenset: with
        100,000 queued messages, status spends its time here (bench/ledger_bench.py).
        """
        domains_by_id: Dict[str, FrozenSet[str]] = {}
        lines: Dict[str, str] = {}
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
                lines[queue_id] = line
                size = data.get("message_size")
                if isinstance(size, int):
                    sizes_by_id[queue_id] = size
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise QueueFormatError(f"postqueue -j line {number}: {error}: {line[:200]!r}"
                                       ) from None
        return cls(domains_by_id, lines, sizes_by_id=sizes_by_id)

    def holds(self, queue_id: str, domain: str) -> bool:
        return domain in self.domains_by_id.get(queue_id, ())

    def __contains__(self, queue_id: object) -> bool:
        return queue_id in self.domains_by_id


@dataclass(frozen=True)
class Reconciliation:
    """What one reconciliation found: rows that left the queue, messages first seen in it (with
    the queue's exact size of those: message id, bytes) and messages adopted from the queue."""

    gone: Tuple[Tuple[int, str], ...]
    seen: Tuple[int, ...]
    still_held: Dict[str, int]
    adopted: Tuple[Tuple[str, str], ...] = ()  # (queue id, domain) adopted from the queue
    sizes: Tuple[Tuple[int, int], ...] = ()


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
    return Reconciliation(tuple(gone), tuple(dict.fromkeys(seen)), still,
                          sizes=tuple(sizes.items()))


def _is_relay(domain: str, relay_domains: Collection[str]) -> bool:
    """The domain or one of its parents is a relay domain (the milter decides the rest)."""
    if domain in relay_domains:
        return True
    labels = domain.split(".")
    return any(".".join(labels[i:]) in relay_domains for i in range(1, len(labels)))


def adoption_candidates(snapshot: QueueSnapshot, rows: Sequence[HeldRow],
                        relay_domains: Collection[str],
                        only: Optional[str] = None) -> Dict[str, Dict[str, Tuple[str, ...]]]:
    """Queued messages with relay recipients that no held row covers (pure).

    queue id -> relay domain -> recipients still queued, grouped as the milter groups them
    (``relay_recipients``), without the domains held rows already cover; ``only``: that domain.
    Messages the snapshot has no details of are left out.
    """
    held: Set[Tuple[str, str]] = {(row.queue_id, row.domain) for row in rows}
    found: Dict[str, Dict[str, Tuple[str, ...]]] = {}
    # with ``only``, the rows are that domain's: look at no other domain's mail at all
    scope: Collection[str] = relay_domains if only is None else {only}
    # domain set -> (its relay domains, all of them configured as such): equal sets are one
    # object in a snapshot from_text, so this runs once per distinct set, not per message
    relay_of: Dict[FrozenSet[str], Tuple[Tuple[str, ...], bool]] = {}
    for queue_id, domains in snapshot.domains_by_id.items():
        known = relay_of.get(domains)
        if known is None:
            relay = tuple(d for d in domains if _is_relay(d, scope))
            known = relay_of[domains] = (relay, all(d in scope for d in relay))
        relay, exact = known
        if not relay:
            continue
        if exact:
            for domain in relay:
                if (queue_id, domain) not in held:
                    break
            else:
                continue  # every relay domain of it is held: the usual case
        message = snapshot.message(queue_id)
        if message is None:
            continue
        grouped = relay_recipients([address for address, _ in message.recipients],
                                   relay_domains)
        missing = {d: rcpts for d, rcpts in grouped.items()
                   if (queue_id, d) not in held and (only is None or d == only)}
        if missing:
            found[queue_id] = missing
    return found


def plan_adoptions(snapshot: QueueSnapshot,
                   candidates: Dict[str, Dict[str, Tuple[str, ...]]],
                   known: Sequence[KnownRow], now: float
                   ) -> List[Tuple[Optional[int], MessageRecord]]:
    """What to adopt, as ``Ledger.adopt`` takes it (pure).

    A ledger message with the same queue id that was recorded before the queued message
    arrived (ARRIVAL_SLACK_SECONDS) is an earlier message that had the id (Postfix reuses them):
    it does not count. A ledger row for the same message and domain in any state (it left the
    queue once) is not adopted again. Adopted messages arrive at their queue arrival time
    (``now`` when postqueue gives none).
    """
    plans: List[Tuple[Optional[int], MessageRecord]] = []
    by_id: Dict[str, List[KnownRow]] = {}
    for row in known:
        by_id.setdefault(row.queue_id, []).append(row)
    for queue_id, missing in sorted(candidates.items()):
        message = snapshot.message(queue_id)
        assert message is not None  # candidates come from messages the snapshot details
        arrival = float(message.arrival_time) if message.arrival_time is not None else None
        same = [row for row in by_id.get(queue_id, ())
                if arrival is None or row.received_at >= arrival - ARRIVAL_SLACK_SECONDS]
        recorded = {row.domain for row in same}
        left = {d: rcpts for d, rcpts in missing.items() if d not in recorded}
        if not left:
            continue
        sender = "" if message.sender == NULL_SENDER else message.sender
        record = MessageRecord(queue_id=queue_id, received_at=arrival if arrival else now,
                               sender=sender, size=message.message_size or 0, client_addr="",
                               client_name="", helo="", recipients=left)
        plans.append((max(row.message_id for row in same) if same else None, record))
    return plans


def reconcile(ledger: Ledger, snapshot: QueueSnapshot, now: float,
              flush_id: Optional[int] = None, domain: Optional[str] = None,
              grace: float = UNSEEN_GRACE_SECONDS,
              relay_domains: Optional[Collection[str]] = None) -> Reconciliation:
    """Mark held rows no longer in the queue as left (or flushed, during flush ``flush_id``),
    and adopt queued messages for ``relay_domains`` (or only ``domain``) the ledger lacks.

    The snapshot must be taken before this call: the milter records a message before Postfix
    commits its queue file, so every message the milter recorded is in the ledger (or in the
    journal, replayed here first) by the time it can appear in the snapshot.
    """
    ledger.replay_journal()
    rows = ledger.held_rows(domain)
    result = compare(rows, snapshot, now, grace)
    ledger.apply_reconciliation(result.gone, result.seen, now, flush_id, result.sizes)
    if not relay_domains:
        return result
    candidates = adoption_candidates(snapshot, rows, relay_domains, domain)
    if not candidates:
        return result
    plans = plan_adoptions(snapshot, candidates, ledger.known_rows(candidates), now)
    ledger.adopt(plans, now)
    still = dict(result.still_held)
    adopted = tuple((record.queue_id, d) for _, record in plans for d in record.recipients)
    for _, adopted_domain in adopted:
        still[adopted_domain] = still.get(adopted_domain, 0) + 1
    return Reconciliation(result.gone, result.seen, still, adopted, result.sizes)
