"""Learning from a flush: what the primary answered to held mail becomes callout results.

When a flush hands a domain's held mail to its primary, Postfix's SMTP client logs each
recipient's result (admin.delivery_log). For a domain with a ``callout`` source, the recipients
of the messages that left the queue during the flush that the primary accepted become ``valid``
entries of the callout cache, and the ones it refused with a 5xx reply to ``RCPT TO`` become
``invalid`` entries, under the same rule as a callout's answer (common.callout_rules.merged: an
unexpired valid entry is not replaced by an invalid one). Entries go to the file policyd keeps
(common.callout_cache, ``callouts.sqlite3`` in ``[policyd] state_directory``); policyd takes
what others added there within policyd.callout_follow.FOLLOW_INTERVAL seconds.

The flush learns at once when it can read the log; the ledger marks each flush learned from
(``flush_events.learned_at``). A flush whose process may not read the journal (the one policyd
runs when a primary returns) is learned from by the next ``flush --auto`` of
backupmx-flush.service, which has the group systemd-journal. Learning never changes a flush's
outcome: when the log cannot be read, the flush says why in one line and goes on.
"""
from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from functools import partial
from typing import Callable, Collection, Iterable, List, Optional, Tuple, cast

from backupmx.admin.context import CommandContext
from backupmx.admin.delivery_log import (
    Delivery,
    DeliveryLog,
    LogUnavailable,
    outcome,
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
from backupmx.milter.ledger import LedgerError

#: seconds to wait, once the mail left the queue, for Postfix's log lines about it
LOG_WAIT = 5.0
#: seconds back ``flush --auto`` looks for flushes not learned from yet
PENDING_WITHIN = 86400.0
#: Postfix's final results of a recipient (the others are retried)
FINAL = ("sent", "bounced")


@dataclass(frozen=True)
class Learning:
    """What a flush of ``domain`` is learned with: its primary, its callout lifetimes and the
    log, read from where it stood at the flush's start."""

    domain: str
    primary: PrimarySpec
    lifetimes: Lifetimes
    log: DeliveryLog


def cache_key(address: str) -> Tuple[str, str]:
    """(the address as the callout cache keys it, its domain): lower-case, the domain
    normalised, as the decision looks it up (common.decision)."""
    local, domain = split_address(address)
    return f"{local}@{domain}", domain


def learned_entries(deliveries: Iterable[Delivery], domain: str, primary: PrimarySpec,
                    queue_ids: Collection[str], now: float) -> List[Entry]:
    """The entries the log lines of one flush give (pure): only lines of the held messages
    (``queue_ids``), of recipients in ``domain``, that prove something (delivery_log.outcome);
    the last line of a recipient wins. ``now``: Unix seconds, the entries' ``verified_at``."""
    found = {}
    for delivery in deliveries:
        if delivery.queue_id not in queue_ids or is_probe(delivery.recipient):
            continue
        address, recipient_domain = cache_key(delivery.recipient)
        if recipient_domain != domain and not recipient_domain.endswith("." + domain):
            continue
        status = outcome(delivery, primary)
        if status is not None:
            found[address] = Entry(address, domain, status, now, delivery.reply[:200])
    return list(found.values())


def _learning(ctx: CommandContext, domain: str, log: Callable[[str], DeliveryLog]
              ) -> Optional[Learning]:
    """A Learning for a domain with a callout source (else None); raises LogUnavailable."""
    source = callout_sources(ctx.config).get(domain)
    if source is None:
        return None
    try:
        maillog = ctx.postfix.postconf("maillog_file", expand=True).get("maillog_file", "")
    except PostfixError as error:
        raise LogUnavailable(str(error)) from None
    settings = cast(CalloutSettings, source.driver)
    return Learning(domain, ctx.config.domains[domain], settings.lifetimes, log(maillog))


def start(ctx: CommandContext, domain: str) -> Optional[Learning]:
    """Before ``postqueue -s``: a Learning, or None when the domain has no callout source or
    this process cannot read the log (said in one line: the next ``flush --auto``, run by
    backupmx-flush.service with the group systemd-journal, learns from the flush then)."""
    try:
        return _learning(ctx, domain, lambda maillog: DeliveryLog.open(maillog, ctx.clock()))
    except LogUnavailable as error:
        print(f"{domain}: recipients are learned from this flush by the next "
              f"'backupmx flush --auto' ({error})", file=ctx.out)
        return None


def finish(ctx: CommandContext, learning: Learning,
           flush_id: int) -> Optional[Tuple[int, int]]:
    """After the flush: read the log (waiting up to LOG_WAIT seconds for the lines of every
    message that left), store what it proves and mark the flush learned. (valid, invalid)
    entries stored, or None when nothing could be stored (said in one line)."""
    try:
        ledger = ctx.ledger()
        learned = learn(ctx, learning, ledger.flushed_queue_ids(flush_id), LOG_WAIT)
        if learned is not None:
            ledger.mark_learned(flush_id, ctx.clock())
    except LogUnavailable as error:
        print(f"{learning.domain}: recipients are learned from this flush by the next "
              f"'backupmx flush --auto' ({error})", file=ctx.out)
        return None
    except (LedgerError, sqlite3.Error) as error:  # the flush is done and recorded: only say
        ctx.warn(f"{learning.domain}: not learning recipients from this flush: {error}")
        return None
    return learned


def learn_pending(ctx: CommandContext) -> None:
    """What ``flush --auto`` does last: learn from the flushes of the last PENDING_WITHIN
    seconds no process could learn from (a flush policyd ran, whose user may not read the
    journal). Prints a line per flush learned; never raises."""
    domains = callout_sources(ctx.config)
    try:
        ledger = ctx.ledger()
        pending = ledger.unlearned_flushes(domains, ctx.clock() - PENDING_WITHIN)
        for flush_id, domain, started_at in pending:
            learning = _learning(ctx, domain,
                                 partial(DeliveryLog.open, since=started_at, at_end=False))
            if learning is None:
                continue
            learned = learn(ctx, learning, ledger.flushed_queue_ids(flush_id), 0.0)
            if learned is None:
                return
            ledger.mark_learned(flush_id, ctx.clock())
            print(f"{domain}: learned {learned[0]} valid and {learned[1]} invalid recipients "
                  f"from flush #{flush_id}", file=ctx.out)
    except LogUnavailable as error:
        ctx.warn(f"not learning recipients from earlier flushes: {error}")
    except (LedgerError, sqlite3.Error, OSError) as error:
        ctx.warn(f"not learning recipients from earlier flushes: {error}")


def learn(ctx: CommandContext, learning: Learning, queue_ids: Collection[str],
          wait: float) -> Optional[Tuple[int, int]]:
    """Read the log (for up to ``wait`` seconds, until every message of ``queue_ids`` has a
    final line), store what it proves; (valid, invalid) stored, or None (said in one line).
    Raises LogUnavailable."""
    deadline = ctx.clock() + wait
    while True:
        deliveries = learning.log.deliveries(queue_ids)
        logged = {d.queue_id for d in deliveries if d.status in FINAL}
        if set(queue_ids) <= logged or ctx.clock() >= deadline:
            break
        ctx.sleep(0.2)
    entries = learned_entries(deliveries, learning.domain, learning.primary, queue_ids,
                              ctx.clock())
    try:
        kept = store(ctx, entries, learning.lifetimes)
    except (sqlite3.Error, OSError) as error:
        ctx.warn(f"{learning.domain}: the recipients learned from a flush were not "
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
