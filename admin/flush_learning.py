"""Learning from a flush: what the primary answered to held mail becomes callout results.

When a flush hands a domain's held mail to its primary, Postfix's SMTP client logs each
recipient's result (admin.delivery_log). For a domain with a ``callout`` source, the recipients
the primary accepted become ``valid`` entries of the callout cache and the ones it refused with
a 5xx reply to ``RCPT TO`` become ``invalid`` entries, under the same rule as a callout's answer
(common.callout_rules.merged: an unexpired valid entry is not replaced by an invalid one).
Entries go to the file policyd keeps (common.callout_cache, ``callouts.sqlite3`` in ``[policyd]
state_directory``); policyd reads what others added there within ``FOLLOW_INTERVAL`` seconds
(policyd.callout_follow).

Learning never changes a flush's outcome: when the log cannot be read, the flush says why in
one line and goes on.
"""
from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from typing import Collection, FrozenSet, Iterable, List, Optional, Tuple, cast

from backupmx.admin.context import CommandContext
from backupmx.admin.delivery_log import (
    Delivery,
    DeliveryLog,
    LogUnavailable,
    outcome,
    parse_delivery,
)
from backupmx.common.addresses import split_address
from backupmx.common.callout_cache import CalloutStore, store_path
from backupmx.common.callout_rules import (
    INVALID,
    VALID,
    Entry,
    Lifetimes,
    callout_sources,
    is_probe,
    merged,
)
from backupmx.common.config import PrimarySpec
from backupmx.common.postfix import PostfixError
from backupmx.common.source_settings import CalloutSettings

#: seconds to wait, once the mail left the queue, for Postfix's log lines about it
LOG_WAIT = 5.0
#: Postfix's final results of a recipient (the others are retried)
FINAL = ("sent", "bounced")


@dataclass(frozen=True)
class Learning:
    """A flush being learned from: the domain, its primary, its callout lifetimes, the queue
    ids held at the start and where the log stood then."""

    domain: str
    primary: PrimarySpec
    lifetimes: Lifetimes
    queue_ids: FrozenSet[str]
    log: DeliveryLog


def in_domain(address: str, domain: str) -> bool:
    """Whether ``address`` is of ``domain`` or of one of its subdomains."""
    found = split_address(address)[1]
    return found == domain or found.endswith("." + domain)


def learned_entries(deliveries: Iterable[Delivery], domain: str, primary: PrimarySpec,
                    queue_ids: Collection[str], now: float) -> List[Entry]:
    """The entries the log lines of one flush give (pure): only lines of the held messages
    (``queue_ids``), of recipients in ``domain``, that prove something (delivery_log.outcome);
    the last line of a recipient wins. ``now``: Unix seconds, the entries' ``verified_at``."""
    found = {}
    for delivery in deliveries:
        if delivery.queue_id not in queue_ids or is_probe(delivery.recipient):
            continue
        if not in_domain(delivery.recipient, domain):
            continue
        status = outcome(delivery, primary)
        if status is not None:
            address = delivery.recipient.lower()
            found[address] = Entry(address, domain, status, now, delivery.reply[:200])
    return list(found.values())


def start(ctx: CommandContext, domain: str, queue_ids: Collection[str]) -> Optional[Learning]:
    """Before ``postqueue -s``: a Learning, or None when the domain has no callout source or
    the log cannot be read (said in one line)."""
    source = callout_sources(ctx.config).get(domain)
    if source is None or not queue_ids:
        return None
    try:
        maillog = ctx.postfix.postconf("maillog_file", expand=True).get("maillog_file", "")
        log = DeliveryLog.open(maillog, ctx.clock())
    except (LogUnavailable, PostfixError) as error:
        ctx.warn(f"{domain}: not learning recipients from this flush: {error}")
        return None
    settings = cast(CalloutSettings, source.driver)
    return Learning(domain, ctx.config.domains[domain], settings.lifetimes, frozenset(queue_ids),
                    log)


def finish(ctx: CommandContext, learning: Learning,
           left: Collection[str]) -> Optional[Tuple[int, int]]:
    """After the flush: read the log (waiting up to LOG_WAIT seconds for the lines of every
    message in ``left``, the queue ids that left the queue) and store what it proves.
    (valid, invalid) entries stored, or None when nothing could be learned (said in one line)."""
    deadline = ctx.clock() + LOG_WAIT
    while True:
        try:
            deliveries = [d for d in map(parse_delivery, learning.log.lines()) if d is not None]
        except LogUnavailable as error:
            ctx.warn(f"{learning.domain}: not learning recipients from this flush: {error}")
            return None
        logged = {d.queue_id for d in deliveries if d.status in FINAL}
        if set(left) <= logged or ctx.clock() >= deadline:
            break
        ctx.sleep(0.2)
    entries = learned_entries(deliveries, learning.domain, learning.primary,
                              learning.queue_ids, ctx.clock())
    try:
        kept = store(ctx, entries, learning.lifetimes)
    except (sqlite3.Error, OSError) as error:
        ctx.warn(f"{learning.domain}: the recipients learned from this flush were not "
                 f"stored: {error}")
        return None
    return (sum(1 for e in kept if e.status == VALID), sum(1 for e in kept if e.status == INVALID))


def store(ctx: CommandContext, entries: List[Entry], lifetimes: Lifetimes) -> List[Entry]:
    """Merge ``entries`` into policyd's callout cache file; the entries written. Raises
    FileNotFoundError when policyd has not made the file yet (it does at its start),
    sqlite3.Error or OSError when it cannot be written."""
    path = store_path(ctx.config.policyd.state_directory)
    if not entries:
        return []
    if not os.path.exists(path):
        # created by policyd, so it belongs to policyd's user even when root flushes
        raise FileNotFoundError(f"{path} does not exist yet (backupmx-policyd creates it)")
    cache = CalloutStore(path)
    try:
        kept = [e for e in (merged(cache.get(new.address), new, lifetimes) for new in entries)
                if e is not None]
        cache.put(kept)
    finally:
        cache.close()
    return kept
