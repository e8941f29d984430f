"""``backupmx recipients sync|status|accept|import``: the recipient sources by hand.

- ``sync [NAME] [--due]``: sync every pulled source (or NAME) now and store the results as
  snapshots (backupmx.sources.sync); ``--due`` only those whose ``interval`` has passed since
  their last attempt (what the timer runs). Exit 1 when a source failed.
- ``status [--json]``: per source and domain: addresses, last success, last attempt, last
  error, freshness, held-back change (JSON: ``recipient_status``).
- ``accept NAME``: apply the held-back changes of NAME.
- ``import NAME [--domain D] < FILE``: replace a ``push`` source's snapshot from standard input
  (one address or ``@domain`` a line; the last line must be ``# end COUNT``), with the same
  shrink rule.
- ``table``: rewrite the Postfix table only (policyd runs it at start, after a map reload and
  when a domain turns stale or fresh).

After each change the Postfix table (``[postfix] recipient_table``) is rewritten.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, TextIO

from backupmx.admin.callouts import callout_rows
from backupmx.admin.context import CommandContext
from backupmx.common.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from backupmx.common.config import Config
from backupmx.common.maps import load_recipients
from backupmx.common.postfix import PostfixError
from backupmx.common.recipient_map import MapError, load_recipient_map
from backupmx.common.recipient_sources import callout_domains, store
from backupmx.common.recipient_table import table_lines, write_table
from backupmx.common.source_settings import FileSettings, SourceSettings
from backupmx.sources import FETCH_TYPES, require_driver
from backupmx.sources.errors import DriverMissing
from backupmx.sources.sync import accept, apply_rows, sync_source


def add_arguments(subparsers: Any) -> None:
    parser = subparsers.add_parser("recipients", help="recipient sources: sync, status, "
                                   "accept a held-back change, import a pushed list")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    sync = actions.add_parser("sync", help="sync the pulled sources now (exit 1 if one failed)")
    sync.add_argument("name", nargs="?", help="only this source")
    sync.add_argument("--due", action="store_true",
                      help="only sources whose interval has passed since their last attempt")
    status = actions.add_parser("status", help="per source and domain: addresses, last "
                                "success and error, freshness, held-back changes")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    accepting = actions.add_parser("accept", help="apply the held-back changes of a source")
    accepting.add_argument("name")
    importing = actions.add_parser("import", help="replace a push source's snapshot from "
                                   "standard input (last line: '# end COUNT')")
    importing.add_argument("name")
    importing.add_argument("--domain", help="replace only this domain's addresses")
    actions.add_parser("table", help="rewrite the Postfix recipient table ([postfix] "
                       "recipient_table) from the current snapshots and files")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    context = CommandContext.from_config(config)
    if args.action == "sync":
        return run_sync(context, args.name, args.due)
    if args.action == "status":
        return run_status(context, args.json)
    if args.action == "accept":
        return run_accept(context, args.name)
    if args.action == "table":
        return EXIT_OK if refresh_table(context) else EXIT_FAILED
    return run_import(context, args.name, args.domain, sys.stdin)


def _log(context: CommandContext) -> Any:
    def log(line: str) -> None:
        print(f"backupmx: {line}", file=context.err, flush=True)
    return log


def _source(context: CommandContext, name: str, types: Sequence[str]) -> Optional[SourceSettings]:
    source = context.config.source(name)
    if source is None:
        names = ", ".join(s.name for s in context.config.sources if s.type != "file") or "none"
        context.warn(f"no recipient source {name} (sources: {names})")
        return None
    if source.type not in types:
        context.warn(f"recipient source {name} is of type {source.type}: "
                     + ("it is filled by 'backupmx recipients import'" if source.type == "push"
                        else "nothing to do for it here"))
        return None
    return source


def refresh_table(context: CommandContext) -> bool:
    """Rewrite ``[postfix] recipient_table`` from the current snapshots (when configured);
    False (after a message) when it could not be written."""
    path = context.config.postfix.recipient_table
    if path is None:
        return True
    try:
        recipients, fresh = load_recipients(context.config)
        lines = table_lines(recipients, context.config.domains, fresh, context.clock(),
                            callout_domains(context.config))
        if write_table(path, lines, context.postfix):
            print(f"backupmx: recipient table {path} written: {len(lines)} keys",
                  file=context.err)
    except (MapError, PostfixError, OSError) as error:
        context.warn(f"recipient table {path} not written, the old one stays: {error}")
        return False
    return True


#: the sync's CPU priority (nice): reading a million rows is background work that must not
#: take the CPU from policyd's answers on a small machine
SYNC_NICENESS = 10


def run_sync(context: CommandContext, name: Optional[str], due: bool) -> int:
    config = context.config
    os.nice(SYNC_NICENESS)
    if name is not None:
        one = _source(context, name, FETCH_TYPES)
        if one is None:
            return EXIT_CONFIG
        sources: List[SourceSettings] = [one]
    else:
        sources = [s for s in config.sources if s.type in FETCH_TYPES]
    snapshots = store(config)
    failed = False
    for source in sources:
        try:
            require_driver(source.type)
        except DriverMissing as error:
            context.warn(f"recipient source {source.name}: {error}")
            return EXIT_CONFIG
        if due:
            state = snapshots.read_state(source.name, source.type)
            if state.last_attempt is not None and \
                    context.clock() < state.last_attempt + source.interval:
                continue
        outcome = sync_source(source, snapshots, _log(context), clock=context.clock)
        if outcome.ok:
            held = f", held back: {', '.join(outcome.held_back)}" if outcome.held_back else ""
            print(f"{source.name}: synced{held}", file=context.out)
        else:
            failed = True
            print(f"{source.name}: failed: {outcome.error}", file=context.out)
    table_ok = refresh_table(context)
    return EXIT_FAILED if failed or not table_ok else EXIT_OK


def run_accept(context: CommandContext, name: str) -> int:
    source = _source(context, name, (*FETCH_TYPES, "push"))
    if source is None:
        return EXIT_CONFIG
    applied = accept(source, store(context.config), _log(context), context.clock)
    if not applied:
        print(f"{name}: nothing held back", file=context.out)
        return EXIT_OK
    print(f"{name}: applied the held-back change of {', '.join(applied)}", file=context.out)
    return EXIT_OK if refresh_table(context) else EXIT_FAILED


def parse_import(text: str) -> List[str]:
    """The address lines of an import; ValueError unless the last line is ``# end COUNT``
    with COUNT the number of address lines (blank lines and other ``#`` lines not counted)."""
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines or not lines[-1].startswith("# end"):
        raise ValueError("the input does not end with a line '# end COUNT': incomplete?")
    count_text = lines[-1][len("# end"):].strip()
    rows = [line for line in lines[:-1] if line and not line.startswith("#")]
    if not count_text.isdigit() or int(count_text) != len(rows):
        raise ValueError(f"the input has {len(rows)} address lines but its last line says "
                         f"{lines[-1]!r}: incomplete?")
    return rows


def run_import(context: CommandContext, name: str, domain: Optional[str], stdin: TextIO) -> int:
    source = _source(context, name, ("push",))
    if source is None:
        return EXIT_CONFIG
    if domain is not None and domain.lower().rstrip(".") not in source.domains:
        context.warn(f"{domain} is not a domain of recipient source {name} "
                     f"({', '.join(source.domains)})")
        return EXIT_CONFIG
    try:
        rows = parse_import(stdin.read())
    except (ValueError, UnicodeDecodeError) as error:
        context.warn(f"import into {name} refused, the snapshot stays: {error}")
        return EXIT_FAILED
    only = [domain.lower().rstrip(".")] if domain is not None else None
    outcome = apply_rows(source, store(context.config), rows, _log(context), only,
                         context.clock)
    held = f", held back: {', '.join(outcome.held_back)}" if outcome.held_back else ""
    print(f"{name}: imported {len(rows)} lines{held}", file=context.out)
    table_ok = refresh_table(context)
    return EXIT_FAILED if outcome.held_back or not table_ok else EXIT_OK


def recipient_status(config: Config, now: float) -> Dict[str, Any]:
    """The ``recipients status --json`` document: ``{"sources": [{"name", "type",
    "last_success", "last_attempt", "last_error", "last_result", "malformed", "ignored",
    "domains": [{"domain", "addresses", "fresh", "held_back", "applied_at",
    "held_back_change"}]}]}``; times in Unix seconds, null when never."""
    snapshots = store(config)
    rows: List[Dict[str, Any]] = []
    callouts = {row["name"]: row for row in callout_rows(config)}
    for source in config.sources:
        if isinstance(source.driver, FileSettings):
            rows.append(_file_status(source, source.driver.path, config))
            continue
        if source.name in callouts:
            rows.append(callouts[source.name])
            continue
        state = snapshots.read_state(source.name, source.type)
        domains = []
        for domain in source.domains:
            current = state.domains.get(domain)
            applied = current.applied_at if current else None
            held = current.held_back if current else None
            domains.append({
                "domain": domain,
                "addresses": current.addresses if current else 0,
                "fresh": applied is not None and now < applied + source.stale_after,
                "held_back": held is not None,
                "applied_at": applied,
                "held_back_change": None if held is None else {
                    "addresses": held.addresses, "reason": held.reason, "since": held.since},
            })
        rows.append({"name": source.name, "type": source.type,
                     "last_success": state.last_success, "last_attempt": state.last_attempt,
                     "last_error": state.last_error, "last_result": state.last_result,
                     "malformed": state.malformed, "ignored": state.ignored,
                     "stale_after": source.stale_after, "domains": domains})
    return {"sources": rows, "generated_at": now}


def _file_status(source: SourceSettings, path: str, config: Config) -> Dict[str, Any]:
    error = None
    counts: Dict[str, int] = {}
    try:
        loaded = load_recipient_map([path])
        for domain, users in loaded.users.items():
            counts[domain] = len(users)
        for domain in loaded.catch_all:
            counts.setdefault(domain, 0)
    except MapError as failure:
        error = str(failure)
    return {"name": source.name, "type": "file", "last_success": None, "last_attempt": None,
            "last_error": error, "last_result": "error" if error else "ok",
            "malformed": 0, "ignored": 0, "stale_after": None,
            "domains": [{"domain": d, "addresses": n, "fresh": error is None,
                         "held_back": False, "applied_at": None, "held_back_change": None}
                        for d, n in sorted(counts.items())
                        if not source.domains or d in source.domains]}


def _when(value: Optional[float], now: float) -> str:
    if value is None:
        return "never"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(value))} " \
           f"({max(0, int(now - value))} s ago)"


def _print_callout(row: Dict[str, Any], now: float, out: Any) -> None:
    print(f"{row['name']} (callout): verification by the primary MX", file=out)
    if row["last_error"]:
        print(f"  last error: {row['last_error']}", file=out)
    for domain in row["domains"]:
        state = ("OFF: the primary accepts every address" if domain["accept_all"] else
                 "on" if domain["accept_all"] is not None else "on, accept-all not checked yet")
        print(f"  {domain['domain']}: {domain['valid']} valid, {domain['invalid']} invalid "
              f"cached; callouts {state}", file=out)


def run_status(context: CommandContext, as_json: bool) -> int:
    now = context.clock()
    document = recipient_status(context.config, now)
    if as_json:
        json.dump(document, context.out, indent=2)
        print(file=context.out)
        return EXIT_OK
    out = context.out
    if not document["sources"]:
        print("no recipient sources configured", file=out)
    for row in document["sources"]:
        if row["type"] == "callout":
            _print_callout(row, now, out)
            continue
        print(f"{row['name']} ({row['type']}): last success {_when(row['last_success'], now)}, "
              f"last attempt {_when(row['last_attempt'], now)}", file=out)
        if row["last_error"]:
            print(f"  last error: {row['last_error']}", file=out)
        for domain in row["domains"]:
            held = domain["held_back_change"]
            note = (f"; HELD BACK: {held['reason']} (backupmx recipients accept {row['name']})"
                    if held else "")
            print(f"  {domain['domain']}: {domain['addresses']} addresses, "
                  f"{'fresh' if domain['fresh'] else 'STALE'}{note}", file=out)
    return EXIT_OK
