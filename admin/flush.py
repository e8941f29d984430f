"""``backupmx flush DOMAIN [--force] [--wait SECONDS]`` and ``backupmx flush --auto``.

A flush is an accounted operation: refuse when the primary is unreachable (unless --force) or when
Postfix cannot flush the domain (not in fast_flush_domains), reconcile, run ``postqueue -s``,
reconcile until the domain's held mail has left or --wait expires, record the event, say what
left and what remains. ``--auto`` flushes every domain with held mail whose primary is up; it
holds a lock so a timer and an admin never flush at the same time.
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import os
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from backupmx.admin import flush_learning
from backupmx.admin.context import CommandContext
from backupmx.admin.primaries import UP, PrimaryState
from backupmx.admin.queue import QueueFormatError, QueueSnapshot, reconcile
from backupmx.common.addresses import normalize_domain
from backupmx.common.config import Config
from backupmx.common.postfix import PostfixError
from backupmx.common.postfix_values import domain_list_matches, parent_matches_subdomains
from backupmx.milter.ledger import DomainSummary, LedgerError

DEFAULT_WAIT = 30.0
POLL_INTERVAL = 0.2
LOCK_WAIT = 120.0
EXIT_OK, EXIT_REFUSED = 0, 1


class FlushRefused(Exception):
    """The flush was not started; the message says why and what to do."""


@dataclass(frozen=True)
class FlushOutcome:
    domain: str
    flush_id: int
    held_before: int
    delivered: int
    remaining: int
    result: str  # complete | partial | failed
    #: (valid, invalid) recipients learned for the callout cache (admin.flush_learning)
    learned: Optional[Tuple[int, int]] = None

    def describe(self) -> str:
        noun = "message" if self.delivered == 1 else "messages"
        learned = ""
        if self.learned is not None:
            learned = (f"; learned {self.learned[0]} valid and {self.learned[1]} invalid "
                       f"recipients")
        return (f"{self.domain}: {self.delivered} {noun} left the queue, {self.remaining} "
                f"still queued (held before: {self.held_before}; flush #{self.flush_id}, "
                f"{self.result}{learned})")


# ---- pure decisions ---------------------------------------------------------------------------

def fast_flush_fix(domain: str, config_directory: Optional[str]) -> str:
    where = f" -c {config_directory}" if config_directory else ""
    return (f"{domain} is not in Postfix's fast_flush_domains, so postqueue -s cannot flush it. "
            f"Fix: postconf{where} -e 'fast_flush_domains = $relay_domains' && "
            f"postfix{where} reload")


def choose_auto(summaries: Mapping[str, DomainSummary], reports: Mapping[str, PrimaryState],
                configured: Mapping[str, Any]) -> List[str]:
    """Domains ``--auto`` flushes: configured, with held mail, primary up now. Sorted."""
    return sorted(d for d, s in summaries.items()
                  if d in configured and s.held_messages > 0
                  and reports.get(d) is not None and reports[d].status == UP)


# ---- the lock ---------------------------------------------------------------------------------

def lock_path(ledger_path: str) -> str:
    return f"{ledger_path}.flush.lock"


def give_to_folder_owner(fd: int, folder: str) -> None:
    """As root, chown the open file to the owner and group of ``folder`` if they differ."""
    if os.geteuid() != 0:
        return
    owner, current = os.stat(folder), os.fstat(fd)
    if (current.st_uid, current.st_gid) != (owner.st_uid, owner.st_gid):
        os.fchown(fd, owner.st_uid, owner.st_gid)


@contextmanager
def flush_lock(path: str, wait: Optional[float], ctx: CommandContext) -> Iterator[bool]:
    """Hold an flock on path; yields False when wait is None (don't wait) and it is taken.

    The lock file belongs to the owner of its folder (the daemons' user) even when root runs
    ``backupmx flush``, as SQLite does with the ledger's -wal and -shm files: else every later
    run of the flush timer, as that user, would fail with "Permission denied".
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        give_to_folder_owner(fd, os.path.dirname(os.path.abspath(path)))
        deadline = None if wait is None else ctx.clock() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if deadline is None or ctx.clock() >= deadline:
                    yield False
                    return
                ctx.sleep(POLL_INTERVAL)
        yield True
    finally:
        os.close(fd)


# ---- the operation ----------------------------------------------------------------------------

def snapshot(ctx: CommandContext) -> QueueSnapshot:
    return QueueSnapshot.from_text(ctx.postfix.queue_json())


def check_flushable(ctx: CommandContext, domain: str) -> None:
    """Refuse early, with the fix, when Postfix would answer 'Flush service is not configured'."""
    postconf = ctx.postfix.postconf("fast_flush_domains", "parent_domain_matches_subdomains",
                                    expand=True)
    listed = domain_list_matches(postconf.get("fast_flush_domains", ""), domain,
                                 parent_matches_subdomains(postconf, "fast_flush_domains"))
    if listed is False:
        raise FlushRefused(fast_flush_fix(domain, ctx.postfix.config_directory))


def flush_domain(ctx: CommandContext, domain: str, force: bool = False, wait: float = DEFAULT_WAIT,
                 trigger: str = "manual", report: Optional[PrimaryState] = None,
                 if_held: bool = False) -> Optional[FlushOutcome]:
    """Flush one relay domain (the caller holds the flush lock). Raises FlushRefused before
    anything changed; PostfixError, LedgerError, sqlite3.Error if a tool or the ledger fails.
    With ``if_held``, a domain holding nothing is not flushed at all (None; nothing recorded)."""
    spec = ctx.config.domains.get(domain)
    if spec is None:
        raise FlushRefused(f"{domain} is not a relay domain of {ctx.config.path} ([domains])")
    check_flushable(ctx, domain)
    if report is None:
        report = ctx.probe({domain: spec}, ctx.probe_timeout)[domain]
    if report.status != UP and not force:
        raise FlushRefused(f"the primary of {domain} ({report.host}) is {report.status}: not "
                           f"flushing, the mail would only be deferred again. --force flushes "
                           f"anyway.")
    ledger = ctx.ledger()
    held_before = reconcile(ledger, snapshot(ctx), ctx.clock(), domain=domain,
                            relay_domains=ctx.config.domains).still_held.get(domain, 0)
    if if_held and held_before == 0:
        return None
    started = ctx.clock()
    flush_id = ledger.start_flush(domain, trigger, force, report.status, held_before, started)
    learning = flush_learning.start(ctx, domain, started)
    result = ctx.postfix.flush_domain(domain)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"
        if "not configured" in detail.lower():
            detail = f"{detail}. {fast_flush_fix(domain, ctx.postfix.config_directory)}"
        ledger.finish_flush(flush_id, 0, held_before, "failed", detail, ctx.clock())
        return FlushOutcome(domain, flush_id, held_before, 0, held_before, "failed")
    remaining = wait_until_left(ctx, domain, flush_id, wait)
    delivered = ledger.count_flushed(flush_id)
    outcome = "complete" if remaining == 0 else "partial"
    ledger.finish_flush(flush_id, delivered, remaining, outcome, "", ctx.clock())
    learned = None if learning is None else flush_learning.finish(
        ctx, learning, flush_id, complete=outcome == "complete")
    return FlushOutcome(domain, flush_id, held_before, delivered, remaining, outcome, learned)


def wait_until_left(ctx: CommandContext, domain: str, flush_id: int, wait: float) -> int:
    """Reconcile until the domain holds nothing or wait expires; returns what is still held."""
    deadline = ctx.clock() + wait
    while True:
        now = ctx.clock()
        still = reconcile(ctx.ledger(), snapshot(ctx), now, flush_id=flush_id, domain=domain,
                          relay_domains=ctx.config.domains)
        remaining = still.still_held.get(domain, 0)
        if remaining == 0 or now >= deadline:
            return remaining
        ctx.sleep(POLL_INTERVAL)


def flush_auto(ctx: CommandContext, wait: float = DEFAULT_WAIT,
               probed: Optional[Dict[str, PrimaryState]] = None) -> int:
    """Flush every domain with held mail whose primary is up, then send the ``[notify]``
    events now due (admin/notify.py); exit status (notifications never change it).

    With [fleet] every configured primary is probed (the push reports them all; the reactor
    runs once per process) and the reports are left in ``probed`` for it."""
    reports: Dict[str, PrimaryState] = {}
    status = _flush_auto(ctx, wait, reports)
    flush_learning.learn_pending(ctx)
    if probed is not None:
        probed.update(reports)
    from backupmx.admin.notify import notify
    notify(ctx, reports)
    return status


def _flush_auto(ctx: CommandContext, wait: float, reports: Dict[str, PrimaryState]) -> int:
    ledger = ctx.ledger()
    reconcile(ledger, snapshot(ctx), ctx.clock(), relay_domains=ctx.config.domains)
    summaries = ledger.summaries()
    candidates = {d: ctx.config.domains[d] for d, s in summaries.items()
                  if d in ctx.config.domains and s.held_messages > 0}
    to_probe = ctx.config.domains if ctx.config.fleet is not None else candidates
    reports.update(ctx.probe(to_probe, ctx.probe_timeout) if to_probe else {})
    if not candidates:
        print("nothing held: nothing to flush", file=ctx.out)
        return EXIT_OK
    chosen = choose_auto(summaries, reports, ctx.config.domains)
    status = EXIT_OK
    for domain in sorted(candidates):
        if domain not in chosen:
            report = reports.get(domain)
            print(f"{domain}: {summaries[domain].held_messages} held, primary "
                  f"{report.status if report else 'unknown'}: not flushed", file=ctx.out)
            continue
        try:
            outcome = flush_domain(ctx, domain, wait=wait, trigger="auto", report=reports[domain])
        except FlushRefused as refusal:
            ctx.warn(str(refusal))
            status = EXIT_REFUSED
            continue
        assert outcome is not None  # only if_held flushes return None
        print(outcome.describe(), file=ctx.out)
        if outcome.result == "failed":
            status = EXIT_REFUSED
    return status


def after_auto(ctx: CommandContext, probed: Dict[str, PrimaryState]) -> None:
    """The end of every ``flush --auto`` run: the fleet push (a failed push is only warned
    about: flushing never depends on the fleet store), or dropping a leftover outbox."""
    from backupmx.admin import fleet
    if ctx.config.fleet is None:
        fleet.stop_recording(ctx)
        return
    fleet.lower_priority()  # the flushing is done; the push is background work
    result = fleet.run_push(ctx, probed, reconciled=False)
    if result is not None:
        print(result.describe(), file=ctx.out)


def request_fleet_flush(ctx: CommandContext, domain: str, force: bool, wait: float) -> int:
    """``flush DOMAIN --fleet``: record the request every host carries out at its next push."""
    from backupmx.admin import fleet as fleet_command
    from backupmx.fleet import requests
    from backupmx.fleet.schema import require_current
    from backupmx.fleet.store import StoreError, connect
    try:
        settings = fleet_command.fleet_settings(ctx)
        me = fleet_command.host_id(ctx)
        pg = connect(settings)
        try:
            require_current(pg)
            pg.commit()
            request_id = requests.record(pg, domain, me, force, wait)
        finally:
            pg.close()
    except (fleet_command.FleetUnavailable, StoreError) as error:
        ctx.warn(f"flush --fleet: {error}")
        return EXIT_REFUSED
    print(f"{domain}: fleet flush request #{request_id} recorded: every host flushes it at its "
          f"next push (within about {settings.push_interval:g} s); backupmx status --fleet "
          f"shows each host's result", file=ctx.out)
    return EXIT_OK


# ---- command line -----------------------------------------------------------------------------

def add_arguments(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "flush", help="hand a domain's held mail to its primary",
        description="Run postqueue -s for a relay domain whose primary is reachable, then report "
                    "how many held messages left the queue. --auto does it for every domain "
                    "with held mail whose primary is up (for a timer).")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("domain", nargs="?", help="relay domain to flush")
    target.add_argument("--auto", action="store_true",
                        help="flush every domain with held mail whose primary is up")
    parser.add_argument("--force", action="store_true",
                        help="flush even when the primary does not answer our probe")
    parser.add_argument("--on-return", action="store_true",
                        help="what policyd runs when the domain's primary is up again: do "
                             "nothing when the domain holds no mail, record the flush with "
                             "trigger 'return'")
    parser.add_argument("--fleet", action="store_true",
                        help="ask every host of the fleet ([fleet]) to flush DOMAIN at its next "
                             "push, instead of flushing here now")
    parser.add_argument("--wait", type=float, default=DEFAULT_WAIT, metavar="SECONDS",
                        help=f"how long to wait for the mail to leave (default {DEFAULT_WAIT:g})")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    ctx = CommandContext.from_config(config)
    try:
        if getattr(args, "fleet", False):
            if args.auto:
                ctx.warn("flush: --fleet takes a DOMAIN, not --auto")
                return EXIT_REFUSED
            return request_fleet_flush(ctx, normalize_domain(args.domain), args.force,
                                       max(0.0, args.wait))
        return flush_command(ctx, args.domain, args.auto, args.force, max(0.0, args.wait),
                             on_return=args.on_return and not args.auto)
    finally:
        ctx.close()


def flush_command(ctx: CommandContext, domain: Optional[str], auto: bool, force: bool,
                  wait: float, on_return: bool = False) -> int:
    try:
        with flush_lock(lock_path(ctx.config.milter.ledger), None if auto else LOCK_WAIT,
                        ctx) as locked:
            if not locked:
                print("another flush is running: nothing done", file=ctx.out)
                return EXIT_OK if auto else EXIT_REFUSED
            if auto:
                probed: Dict[str, PrimaryState] = {}
                try:
                    return flush_auto(ctx, wait, probed)
                finally:
                    after_auto(ctx, probed)
            assert domain is not None
            domain = normalize_domain(domain)
            outcome = flush_domain(ctx, domain, force, wait,
                                   trigger="return" if on_return else "manual", if_held=on_return)
            if outcome is None:
                print(f"{domain}: nothing held: nothing to flush", file=ctx.out)
                return EXIT_OK
            print(outcome.describe(), file=ctx.out)
            return EXIT_OK if outcome.result != "failed" else EXIT_REFUSED
    except FlushRefused as refusal:
        ctx.warn(f"flush refused: {refusal}")
    except (PostfixError, QueueFormatError, LedgerError, sqlite3.Error, OSError) as error:
        ctx.warn(f"flush failed: {error}")
    return EXIT_REFUSED
