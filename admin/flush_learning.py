"""Learning from a flush: what the primary answered to held mail becomes callout results.

When a flush hands held mail to the primary, Postfix's SMTP client logs each recipient's result
(admin.delivery_log). For every recipient of a domain with a ``callout`` source, of the messages
of the flushed domain that left the queue since the flush started, and recorded by the ledger for
that message: ``status=sent`` through the domain's primary gives a ``valid`` entry, a reply to
``RCPT TO`` saying the mailbox does not exist (common.callout_rules.rcpt_verdict, the callouts'
own rule) an ``invalid`` one. Entries are dated by the flush's start and merged under the
callouts' rule (common.callout_rules.merged); valid ones only for a domain whose primary was seen
to refuse a random address (common.callout_cache.trusts_valid). They go to the file policyd keeps
(``callouts.sqlite3`` in ``[policyd] state_directory``), which policyd follows
(policyd.callout_follow).

The flush learns at once when it can read the log; the ledger marks each flush learned from
(``flush_events.learned_at``) once it is complete. A flush no process could learn from (the one
policyd runs when a primary returns: policyd's user may not read the journal) or that left mail
behind is learned from again by each ``flush --auto`` of the next PENDING_WITHIN seconds
(backupmx-flush.service has the group systemd-journal). Learning never changes a flush's
outcome: when the log cannot be read, the flush says why in one line and goes on.
"""
from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Set, Tuple, cast

from backupmx.admin.context import CommandContext
from backupmx.admin.delivery_log import Delivery, DeliveryLog, LogUnavailable, outcome
from backupmx.common.callout_cache import CalloutStore, store_path, trusts_valid
from backupmx.common.callout_rules import (
    INVALID,
    VALID,
    Entry,
    Lifetimes,
    cache_key,
    callout_sources,
    is_probe,
    merged,
)
from backupmx.common.config import Config, PrimarySpec
from backupmx.common.postfix import PostfixError
from backupmx.common.source_rules import owner_of
from backupmx.common.source_settings import CalloutSettings
from backupmx.milter.ledger import LedgerError

#: seconds to wait, once the mail left the queue, for Postfix's log lines about it
LOG_WAIT = 5.0
#: seconds back ``flush --auto`` looks for flushes not learned from yet
PENDING_WITHIN = 86400.0
#: Postfix's final results of a recipient (the others are retried)
FINAL = ("sent", "bounced")

#: callout domain -> (its primary, its cache lifetimes)
CalloutDomains = Mapping[str, Tuple[PrimarySpec, Lifetimes]]


@dataclass(frozen=True)
class Learning:
    """A flush of ``domain`` being learned from: when it started (Unix seconds), the callout
    domains, and the log."""

    domain: str
    started_at: float
    domains: CalloutDomains
    log: DeliveryLog


def learned_entries(deliveries: Iterable[Delivery], recorded: Mapping[str, Iterable[str]],
                    domains: CalloutDomains, when: float) -> List[Entry]:
    """The entries the log lines of a flush give (pure). ``recorded``: queue id -> the
    recipients the ledger holds for that message (only they are learned: a line of another
    message that had the same queue id, or an address crafted to look like a log field, is
    not); ``domains``: the callout domains; ``when``: the entries' ``verified_at``. Lines of
    one recipient are merged under the callouts' rule (a refusal never replaces an acceptance
    of the same flush)."""
    wanted = {queue_id: {cache_key(r)[0] for r in recipients}
              for queue_id, recipients in recorded.items()}
    names = list(domains)
    found: Dict[str, Entry] = {}
    for delivery in deliveries:
        keys = wanted.get(delivery.queue_id, set())
        address, domain = cache_key(delivery.recipient)
        if address not in keys and cache_key(delivery.orig_to)[0] not in keys:
            continue
        callout_domain = owner_of(domain, names)
        if callout_domain is None or is_probe(address):
            continue
        primary, lifetimes = domains[callout_domain]
        status = outcome(delivery, primary)
        if status is None:
            continue
        new = Entry(address, callout_domain, status, when, delivery.reply[:200])
        kept = merged(found.get(address), new, lifetimes)
        if kept is not None:
            found[address] = kept
    return list(found.values())


def callout_domains(config: Config) -> Dict[str, Tuple[PrimarySpec, Lifetimes]]:
    return {domain: (config.domains[domain], cast(CalloutSettings, source.driver).lifetimes)
            for domain, source in callout_sources(config).items()}


def _open(ctx: CommandContext, domain: str, started_at: float,
          at_end: bool) -> Optional[Learning]:
    """A Learning when callout sources exist (else None); raises LogUnavailable."""
    domains = callout_domains(ctx.config)
    if not domains:
        return None
    try:
        maillog = ctx.postfix.postconf("maillog_file", expand=True).get("maillog_file", "")
    except PostfixError as error:
        raise LogUnavailable(str(error)) from None
    return Learning(domain, started_at, domains, DeliveryLog.open(maillog, started_at, at_end))


def start(ctx: CommandContext, domain: str, started_at: float) -> Optional[Learning]:
    """Before ``postqueue -s``: a Learning, or None when no callout source exists or this
    process cannot read the log (said in one line: a later ``flush --auto`` learns then)."""
    try:
        return _open(ctx, domain, started_at, at_end=True)
    except LogUnavailable as error:
        _learned_later(ctx, domain, str(error))
        return None


def _learned_later(ctx: CommandContext, domain: str, why: str) -> None:
    print(f"{domain}: recipients are learned from this flush by the next "
          f"'backupmx flush --auto' ({why})", file=ctx.out)


def finish(ctx: CommandContext, learning: Learning, flush_id: int,
           complete: bool) -> Optional[Tuple[int, int]]:
    """After the flush: read the log (waiting up to LOG_WAIT seconds for the lines of the
    recipients of every message that left), store what it proves, and mark the flush learned
    when it is ``complete``. (valid, invalid) stored, or None (said in one line)."""
    try:
        ledger = ctx.ledger()
        learned = learn(ctx, learning, LOG_WAIT)
        if learned is None:
            _learned_later(ctx, learning.domain, "no delivery line of it in Postfix's log yet")
        elif complete:
            ledger.mark_learned(flush_id, ctx.clock())
    except LogUnavailable as error:
        _learned_later(ctx, learning.domain, str(error))
        return None
    except (LedgerError, sqlite3.Error) as error:  # the flush is done and recorded: only say
        ctx.warn(f"{learning.domain}: not learning recipients from this flush: {error}")
        return None
    return learned


def learn_pending(ctx: CommandContext) -> None:
    """What ``flush --auto`` does last: learn from the flushes of the last PENDING_WITHIN
    seconds not learned from yet; one is marked learned once it was complete or its domain
    holds nothing any more. Prints a line per flush learned from; never raises."""
    if not callout_sources(ctx.config):
        return
    try:
        ledger = ctx.ledger()
        for flush_id, domain, started_at, result in ledger.unlearned_flushes(
                ctx.clock() - PENDING_WITHIN):
            learning = _open(ctx, domain, started_at, at_end=False)
            if learning is None:
                return
            learned = learn(ctx, learning, 0.0)
            if learned is None:
                return
            summary = ledger.summaries().get(domain)
            if result == "complete" or summary is None or summary.held_messages == 0:
                ledger.mark_learned(flush_id, ctx.clock())
            if learned != (0, 0):
                print(f"{domain}: learned {learned[0]} valid and {learned[1]} invalid "
                      f"recipients from flush #{flush_id}", file=ctx.out)
    except (LogUnavailable, LedgerError, sqlite3.Error, OSError) as error:
        ctx.warn(f"not learning recipients from earlier flushes: {error}")


def learn(ctx: CommandContext, learning: Learning, wait: float) -> Optional[Tuple[int, int]]:
    """Read the log (for up to ``wait`` seconds, until every recorded callout-domain recipient
    of the messages that left has a final line), store what it proves; (valid, invalid)
    stored, or None when the log has no line of those messages or the results could not be
    stored (that is said in one line). Raises LogUnavailable, LedgerError, sqlite3.Error."""
    recorded = ctx.ledger().left_since(learning.domain, learning.started_at)
    if not recorded:
        return (0, 0)
    names = list(learning.domains)
    expected = {(queue_id, cache_key(r)[0]) for queue_id, recipients in recorded.items()
                for r in recipients if owner_of(cache_key(r)[1], names)}
    deadline = ctx.clock() + wait
    while True:
        deliveries = learning.log.deliveries(recorded)
        logged: Set[Tuple[str, str]] = set()
        for d in deliveries:
            if d.status in FINAL:
                logged.update({(d.queue_id, cache_key(d.recipient)[0]),
                               (d.queue_id, cache_key(d.orig_to)[0])})
        if expected <= logged or ctx.clock() >= deadline:
            break
        ctx.sleep(0.2)
    if not logged:
        return None  # rotated away, or not written yet: the flush stays to learn from
    entries = learned_entries(deliveries, recorded, learning.domains, learning.started_at)
    try:
        kept = store(ctx, entries, learning.domains)
    except (sqlite3.Error, OSError) as error:
        ctx.warn(f"{learning.domain}: the recipients learned from a flush were not "
                 f"stored: {error}")
        return None
    return (sum(1 for e in kept if e.status == VALID), sum(1 for e in kept if e.status == INVALID))


def store(ctx: CommandContext, entries: List[Entry], domains: CalloutDomains) -> List[Entry]:
    """Merge ``entries`` into policyd's callout cache file; the entries written. Valid ones
    only for domains whose primary refused a random address (common.callout_cache.
    trusts_valid). Raises FileNotFoundError when policyd has not made the file yet (it does at
    its start), sqlite3.Error or OSError when it cannot be written."""
    path = store_path(ctx.config.policyd.state_directory)
    if not entries:
        return []
    if not os.path.exists(path):
        # created by policyd, so it belongs to policyd's user even when root flushes
        raise FileNotFoundError(f"{path} does not exist yet (backupmx-policyd creates it)")
    cache = CalloutStore(path)
    try:
        checks = cache.checks()
        kept = []
        for new in entries:
            if new.status == VALID and not trusts_valid(checks.get(new.domain)):
                continue  # the primary may accept every address: a delivery proves nothing
            entry = merged(cache.get(new.address), new, domains[new.domain][1])
            if entry is not None:
                kept.append(entry)
        cache.put(kept)
    finally:
        cache.close()
    return kept
