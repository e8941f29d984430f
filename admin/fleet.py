"""``backupmx fleet init`` and ``backupmx fleet push``, and the push that ends ``flush --auto``.

A push, in the command's own process: carry out the fleet flush requests this host has not
answered (each on its own queue, with the ordinary flush and its accounting, results recorded in
the store), reconcile the ledger with the queue, then push the outbox, the domain states and
retention (backupmx.fleet.push). A store that is down or slow costs the push only (bounded
waits); the ledger keeps the outbox and the next push catches up. The caller holds the flush lock.
"""
from __future__ import annotations

import argparse
import logging
import os
import sqlite3
from typing import Any, Dict, Mapping, Optional

from backupmx.admin.context import CommandContext
from backupmx.admin.flush import FlushRefused, flush_domain, flush_lock, lock_path
from backupmx.admin.primaries import PrimaryState
from backupmx.admin.queue import QueueFormatError, QueueSnapshot, reconcile
from backupmx.common.config import Config, FleetConfig
from backupmx.common.postfix import PostfixError
from backupmx.fleet import outbox, requests
from backupmx.fleet.push import PushResult, push
from backupmx.fleet.schema import migrate
from backupmx.fleet.store import StoreError, connect, driver, one_line
from backupmx.milter.ledger import LedgerError
from backupmx.milter.ledger import connect as ledger_connect

EXIT_OK, EXIT_FAILED = 0, 1
PUSH_LOCK_WAIT = 120.0
PUSH_NICENESS = 10  # the push is background work: the SMTP path (milter, smtpd) goes first


def lower_priority() -> None:
    """Run the rest of this command at a lower CPU priority (nice 10), like a batch job: a push
    of a large backlog then slows the backup MX's mail handling on the same cores less
    (bench/fleet_push.py measures it)."""
    try:
        os.nice(PUSH_NICENESS)
    except OSError as error:  # not permitted in some sandboxes: push anyway
        log.info("cannot lower the push's priority: %s", error)


log = logging.getLogger("backupmx.fleet")


class FleetUnavailable(Exception):
    """No [fleet] section, or no host name for this host; worded for the admin."""


def fleet_settings(ctx: CommandContext) -> FleetConfig:
    if ctx.config.fleet is None:
        raise FleetUnavailable(f"no [fleet] section in {ctx.config.path}")
    return ctx.config.fleet


def host_id(ctx: CommandContext) -> str:
    """[fleet] host_id, else Postfix's myhostname (FleetUnavailable when neither is known)."""
    fleet = fleet_settings(ctx)
    if fleet.host_id:
        return fleet.host_id
    try:
        return ctx.postfix.parameter("myhostname").strip().lower()
    except (PostfixError, KeyError) as error:
        raise FleetUnavailable(f"[fleet] host_id is empty and Postfix's myhostname is unknown "
                               f"({error}): set host_id") from None


def carry_out_requests(ctx: CommandContext, pg: Any, me: str,
                       reports: Mapping[str, PrimaryState]) -> int:
    """Flush what the fleet asked for and record each result; returns how many requests."""
    fleet = fleet_settings(ctx)
    pending = requests.pending(pg, me, fleet.retention)
    for request in pending:
        held_before = delivered = remaining = flush_id = None
        detail = ""
        report = reports.get(request.domain)
        try:
            outcome = flush_domain(ctx, request.domain, request.force, request.wait_seconds,
                                   trigger="fleet", report=report)
            assert outcome is not None  # None only with if_held
            result = outcome.result
            held_before, delivered, remaining = (outcome.held_before, outcome.delivered,
                                                 outcome.remaining)
            flush_id = outcome.flush_id
            ctx.out.write(f"fleet flush request #{request.id}: {outcome.describe()}\n")
        except FlushRefused as refusal:
            result, detail = "refused", str(refusal)
            ctx.out.write(f"fleet flush request #{request.id} {request.domain}: refused: "
                          f"{refusal}\n")
        except (PostfixError, QueueFormatError, LedgerError, sqlite3.Error, OSError) as error:
            result, detail = "failed", str(error)
            ctx.warn(f"fleet flush request #{request.id} {request.domain} failed: {error}")
        requests.record_result(pg, request.id, me, result, held_before, delivered, remaining,
                               flush_id, detail)
    return len(pending)


def run_push(ctx: CommandContext, reports: Mapping[str, PrimaryState],
             reconciled: bool = False) -> Optional[PushResult]:
    """The whole push (the caller holds the flush lock); None after a warning when it failed.

    ``reports``: the primaries as probed by the caller (the command probes once)."""
    try:
        fleet = fleet_settings(ctx)
        me = host_id(ctx)
        ledger = ctx.ledger()
        ledger.replay_journal()
        if not reconciled:
            try:
                reconcile(ledger, QueueSnapshot.from_text(ctx.postfix.queue_json()), ctx.clock(),
                          relay_domains=ctx.config.domains)
            except (PostfixError, QueueFormatError) as error:
                ctx.warn(f"fleet push: counts not reconciled with the queue: {error}")
        conn = ledger_connect(ctx.config.milter.ledger, create=False)
    except (FleetUnavailable, LedgerError, sqlite3.Error, OSError) as error:
        ctx.warn(f"fleet push: {error}")
        return None
    try:
        try:
            pg = connect(fleet)
        except StoreError as error:
            outbox.record_failure(conn, str(error), ctx.clock())
            ctx.warn(f"fleet push: {error}; the changes wait in the ledger for the next push")
            return None
        try:
            psycopg = driver()
            try:
                carry_out_requests(ctx, pg, me, reports)
            except psycopg.Error as error:
                ctx.warn(f"fleet push: flush requests: {one_line(error)}")
                pg.rollback()
            primaries = {d: (r.status, r.host) for d, r in reports.items()}
            return push(pg, conn, me, fleet.push_interval, fleet.retention, primaries,
                        clock=ctx.clock)
        except StoreError as error:
            ctx.warn(f"fleet push: {error}; the changes wait in the ledger for the next push")
            return None
        finally:
            pg.close()
    except sqlite3.Error as error:
        ctx.warn(f"fleet push: ledger {ctx.config.milter.ledger}: {error}")
        return None
    finally:
        conn.close()


def stop_recording(ctx: CommandContext) -> None:
    """Without [fleet], an outbox left from an earlier fleet set-up is dropped (else it grows)."""
    try:
        conn = ledger_connect(ctx.config.milter.ledger, create=False)
        try:
            outbox.disable(conn)
        finally:
            conn.close()
    except (LedgerError, sqlite3.Error) as error:
        ctx.warn(f"cannot stop the fleet outbox: {error}")


def local_push_state(ctx: CommandContext) -> Optional[Dict[str, Any]]:
    """For ``status``: this host's push lag as the ledger knows it; None without [fleet]."""
    if ctx.config.fleet is None:
        return None
    now = ctx.clock()
    conn = ledger_connect(ctx.config.milter.ledger, create=False)
    try:
        state = outbox.state(conn)
    finally:
        conn.close()
    last = state.last_success_at
    return {"enabled": state.enabled,
            "last_push_seconds": None if last is None else max(0, int(now - last)),
            "last_push_at": last, "pending_changes": state.pending_changes,
            "lag_seconds": int(state.lag_seconds(now)), "last_error": state.last_error}


# ---- command line -----------------------------------------------------------------------------

def add_arguments(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "fleet", help="the fleet store shared by several backup MXes ([fleet])",
        description="init: create or upgrade the fleet store's schema in PostgreSQL. push: "
                    "carry out the fleet's flush requests and push this host's ledger now "
                    "(backupmx flush --auto does it on every run).")
    actions = parser.add_subparsers(dest="fleet_action", metavar="ACTION")
    actions.required = True
    actions.add_parser("init", help="create or upgrade the schema")
    actions.add_parser("push", help="push this host's changes now")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    ctx = CommandContext.from_config(config)
    try:
        if args.fleet_action == "init":
            return init_command(ctx)
        return push_command(ctx)
    finally:
        ctx.close()


def init_command(ctx: CommandContext) -> int:
    try:
        pg = connect(fleet_settings(ctx))
        try:
            old, new = migrate(pg)
        finally:
            pg.close()
    except (FleetUnavailable, StoreError) as error:
        ctx.warn(f"fleet init: {error}")
        return EXIT_FAILED
    if old == new:
        ctx.out.write(f"fleet store schema is current (version {new})\n")
    else:
        ctx.out.write(f"fleet store schema upgraded from version {old} to {new}\n")
    return EXIT_OK


def push_command(ctx: CommandContext) -> int:
    if ctx.config.fleet is None:
        ctx.warn(f"fleet push: no [fleet] section in {ctx.config.path}")
        return EXIT_FAILED
    try:
        with flush_lock(lock_path(ctx.config.milter.ledger), PUSH_LOCK_WAIT, ctx) as locked:
            if not locked:
                ctx.warn("fleet push: a flush or push is still running: nothing done")
                return EXIT_FAILED
            reports = ctx.probe(ctx.config.domains, ctx.probe_timeout)
            lower_priority()
            result = run_push(ctx, reports)
    except OSError as error:
        ctx.warn(f"fleet push: {error}")
        return EXIT_FAILED
    if result is None:
        return EXIT_FAILED
    ctx.out.write(result.describe() + "\n")
    return EXIT_OK
