"""``backupmx status [--json]``: what the backup MX holds for whom, and for how long it can.

One row per relay domain: its primary probed now, held messages and bytes (a message for two
relay domains counts for each), the oldest held message and how long until Postfix's
``maximal_queue_lifetime`` bounces it, and the last flush. The ledger is reconciled with the live
queue first, with the same function flush uses.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
from typing import Any, Dict, List, Mapping, Optional

from backupmx.admin.context import CommandContext
from backupmx.admin.primaries import PrimaryState, not_probed
from backupmx.admin.queue import QueueFormatError, QueueSnapshot, reconcile
from backupmx.common.config import Config
from backupmx.common.postfix import PostfixError
from backupmx.common.postfix_values import parse_time
from backupmx.milter.ledger import DomainSummary, FlushEvent, LedgerError


def domain_status(domain: str, summary: Optional[DomainSummary], report: Optional[PrimaryState],
                  last_flush: Optional[FlushEvent], lifetime: Optional[int], now: float,
                  configured: bool = True) -> Dict[str, Any]:
    """One domain's row in the shape of the JSON output (pure)."""
    held = summary.held_messages if summary else 0
    oldest_at = summary.oldest_received_at if summary and held else None
    oldest = None if oldest_at is None else max(0, int(now - oldest_at))
    bounces_in = None
    if oldest is not None and lifetime is not None:
        bounces_in = max(0, lifetime - oldest)
    return {
        "domain": domain,
        "primary": report.status if report else "unknown",
        "primary_host": report.host if report else "",
        "configured": configured,
        "held_messages": held,
        "held_bytes": summary.held_bytes if summary and held else 0,
        # of held_messages: adopted from Postfix's queue because the milter never recorded them
        "adopted_messages": summary.adopted_messages if summary and held else 0,
        "oldest_held_seconds": oldest,
        "bounces_in_seconds": bounces_in,
        "last_flush": last_flush.to_json() if last_flush else None,
    }


def build_status(domains: List[str], summaries: Mapping[str, DomainSummary],
                 reports: Mapping[str, PrimaryState], flushes: Mapping[str, FlushEvent],
                 lifetime: Optional[int], now: float,
                 warnings: Optional[List[str]] = None) -> Dict[str, Any]:
    """The whole status document: configured domains first (sorted), then domains that still have
    held mail in the ledger but are no longer configured."""
    rows = [domain_status(d, summaries.get(d), reports.get(d), flushes.get(d), lifetime, now)
            for d in sorted(domains)]
    for gone in sorted(set(summaries) - set(domains)):
        rows.append(domain_status(gone, summaries[gone], None, flushes.get(gone), lifetime, now,
                                  configured=False))
    return {"domains": rows, "generated_at": now,
            "maximal_queue_lifetime_seconds": lifetime, "warnings": list(warnings or [])}


def _duration(seconds: Optional[float]) -> str:
    """3d04h, 2h05m, 7m03s, 42s; "-" when there is nothing to measure."""
    if seconds is None:
        return "-"
    total = int(seconds)
    if total >= 86400:
        return f"{total // 86400}d{(total % 86400) // 3600:02d}h"
    if total >= 3600:
        return f"{total // 3600}h{(total % 3600) // 60:02d}m"
    if total >= 60:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total}s"


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def _flush_text(flush: Optional[Dict[str, Any]], now: float) -> str:
    if not flush:
        return "never"
    age = _duration(now - flush["started_at"])
    if flush["result"] == "running":
        return f"running since {age}"
    return (f"{age} ago, {flush['trigger']}: {flush['result']}, "
            f"{flush['delivered']} left, {flush['remaining']} remain")


def recipient_snapshots(config: Config, states: Mapping[str, Any],
                        now: float) -> Dict[str, Dict[str, Any]]:
    """Per configured domain: how old its newest applied recipient snapshot is
    (``snapshot_age_seconds``, None when no pulled or pushed source ever delivered it, or
    only ``file`` sources speak for it) and whether it is ``fresh`` (None: no source syncs it)."""
    rows: Dict[str, Dict[str, Any]] = {}
    for domain in config.domains:
        newest: Optional[float] = None
        fresh: Optional[bool] = None
        for source in config.sources:
            if source.type == "file" or domain not in source.domains:
                continue
            state = states.get(source.name)
            current = state.domains.get(domain) if state is not None else None
            applied = current.applied_at if current is not None else None
            fresh = bool(fresh) or (applied is not None and now < applied + source.stale_after)
            if applied is not None and (newest is None or applied > newest):
                newest = applied
        rows[domain] = {"snapshot_age_seconds": None if newest is None else max(0, now - newest),
                        "fresh": fresh}
    return rows


def _recipients_text(row: Mapping[str, Any]) -> str:
    recipients = row.get("recipients") or {}
    if recipients.get("fresh") is None:
        return "-"
    age = _duration(recipients.get("snapshot_age_seconds"))
    return age if recipients["fresh"] else f"STALE {age}"


def render_table(status: Mapping[str, Any]) -> str:
    """The status for people: aligned columns, durations like 2d03h or 5m07s."""
    now = status["generated_at"]
    header = ("DOMAIN", "PRIMARY", "HELD", "BYTES", "OLDEST", "BOUNCES IN", "RECIPIENTS",
              "LAST FLUSH")
    lines = [header]
    for row in status["domains"]:
        name = row["domain"] if row["configured"] else f"{row['domain']} (not configured)"
        held = str(row["held_messages"])
        if row.get("adopted_messages"):
            held += f" ({row['adopted_messages']} adopted)"
        lines.append((name, row["primary"], held, _size(row["held_bytes"]),
                      _duration(row["oldest_held_seconds"]), _duration(row["bounces_in_seconds"]),
                      _recipients_text(row), _flush_text(row["last_flush"], now)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    text = "\n".join("  ".join([*(c.ljust(w) for c, w in zip(line, widths)), line[-1]]).rstrip()
                     for line in lines)
    fleet = status.get("fleet")
    if fleet:
        last = fleet["last_push_seconds"]
        text += (f"\nfleet push: last {'never' if last is None else _duration(last) + ' ago'}, "
                 f"{fleet['pending_changes']} changes pending (lag "
                 f"{_duration(fleet['lag_seconds'])})")
        if fleet["last_error"]:
            text += f"; last error: {fleet['last_error']}"
    notes = "".join(f"\nwarning: {w}" for w in status.get("warnings", []))
    return text + notes + "\n"


def collect_status(ctx: CommandContext, probe: bool = True) -> Dict[str, Any]:
    """Reconcile, read the ledger, ask Postfix and probe the primaries; problems become warnings
    in the document (status is what an admin runs when things are broken)."""
    warnings: List[str] = []
    now = ctx.clock()
    summaries: Dict[str, DomainSummary] = {}
    flushes: Dict[str, FlushEvent] = {}
    try:
        ledger = ctx.ledger()
        try:
            snapshot = QueueSnapshot.from_text(ctx.postfix.queue_json())
            reconcile(ledger, snapshot, now, relay_domains=ctx.config.domains)
        except (PostfixError, QueueFormatError) as error:
            warnings.append(f"counts not reconciled with the queue: {error}")
        summaries = ledger.summaries()
        flushes = ledger.last_flushes()
    except (LedgerError, sqlite3.Error, OSError) as error:
        warnings.append(f"ledger {ctx.config.milter.ledger}: {error}")
    lifetime: Optional[int] = None
    try:
        lifetime = parse_time(ctx.postfix.parameter("maximal_queue_lifetime"), default_unit="d")
    except (PostfixError, KeyError, ValueError) as error:
        warnings.append(f"maximal_queue_lifetime unknown: {error}")
    prober = ctx.probe if probe else not_probed
    reports = prober(ctx.config.domains, ctx.probe_timeout)
    status = build_status(list(ctx.config.domains), summaries, reports, flushes, lifetime, now,
                          warnings)
    from backupmx.common.recipient_sources import read_states
    snapshots = recipient_snapshots(ctx.config, read_states(ctx.config), now)
    for row in status["domains"]:
        row["recipients"] = snapshots.get(row["domain"])
    if ctx.config.fleet is not None:
        from backupmx.admin.fleet import local_push_state
        try:
            status["fleet"] = local_push_state(ctx)
        except (LedgerError, sqlite3.Error) as error:
            warnings.append(f"fleet push state unknown: {error}")
    return status


def add_arguments(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status", help="what is held for each relay domain",
        description="Per relay domain: primary state (probed now), held messages and bytes, "
                    "oldest held message, time until Postfix bounces it, last flush.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--prometheus", action="store_true",
                        help="Prometheus text format (for node_exporter's textfile collector)")
    parser.add_argument("--fleet", action="store_true",
                        help="every host of the fleet ([fleet]), read from the fleet store")
    parser.add_argument("--no-probe", action="store_true",
                        help="do not probe the primaries (reported as unknown)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    ctx = CommandContext.from_config(config)
    try:
        if getattr(args, "fleet", False):
            return show_fleet_status(ctx, as_json=args.json)
        return show_status(ctx, as_json=args.json, probe=not args.no_probe,
                           as_prometheus=getattr(args, "prometheus", False))
    finally:
        ctx.close()


def show_status(ctx: CommandContext, as_json: bool = False, probe: bool = True,
                as_prometheus: bool = False) -> int:
    status = collect_status(ctx, probe)
    if as_prometheus:
        from backupmx.admin.status_metrics import render_prometheus
        ctx.out.write(render_prometheus(status))
    elif as_json:
        ctx.out.write(json.dumps(status, indent=2, sort_keys=False) + "\n")
    else:
        ctx.out.write(render_table(status))
    return 0


def show_fleet_status(ctx: CommandContext, as_json: bool = False) -> int:
    """``status --fleet``: the fleet store's view; exit 1 with one line when it cannot be read."""
    from backupmx.fleet.store import StoreError, connect
    from backupmx.fleet.view import fleet_status, render_fleet_table
    if ctx.config.fleet is None:
        ctx.warn(f"status --fleet: no [fleet] section in {ctx.config.path}")
        return 1
    try:
        pg = connect(ctx.config.fleet)
        try:
            status = fleet_status(pg)
        finally:
            pg.close()
    except StoreError as error:
        ctx.warn(f"status --fleet: {error}")
        return 1
    if as_json:
        ctx.out.write(json.dumps(status, indent=2) + "\n")
    else:
        ctx.out.write(render_fleet_table(status))
    return 0
