"""``[notify]``: tell the admin when mail is held, reminded, all clear, or near bouncing.

The thin adapter around admin/notify_events.py (which decides): it gathers each domain's status
row, reads and saves what was sent in the ledger (table ``notify_state``), and sends each due
event through ``mail_to`` (Postfix's ``sendmail`` of the ``[postfix] config_directory``
instance) and/or ``command`` (run with the event as JSON on standard input). A channel that
fails gives one log line (``backupmx: notify: ...`` on standard error, the journal under
systemd); mail is never affected, and ``flush --auto`` keeps its exit status.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
from typing import Any, Dict, List, Mapping, Optional

from backupmx.admin.context import CommandContext
from backupmx.admin.notify_events import NotifyState, Thresholds, due_events, subject
from backupmx.admin.primaries import PrimaryState
from backupmx.admin.status import domain_status
from backupmx.common.config import NotifyConfig
from backupmx.common.postfix import Postfix, PostfixError
from backupmx.common.postfix_values import parse_time
from backupmx.milter.ledger import LedgerError

COMMAND_TIMEOUT = 30.0


def mail_text(item: Mapping[str, Any], recipient: str) -> str:
    """The notice as a mail: a subject line, the facts, and the event JSON."""
    facts = "\n".join(f"{key}: {value}" for key, value in item.items() if value is not None)
    return (f"To: {recipient}\nSubject: {subject(item)}\nAuto-Submitted: auto-generated\n"
            f"Content-Type: text/plain; charset=utf-8\n\n{facts}\n\n"
            f"{json.dumps(item, sort_keys=True)}\n")


def send_event(item: Mapping[str, Any], settings: NotifyConfig, postfix: Postfix,
               timeout: float = COMMAND_TIMEOUT) -> List[str]:
    """Send one event through every configured channel; one line per channel that failed."""
    failures: List[str] = []
    what = f"{item['event']} of {item['domain']}"
    if settings.mail_to:
        try:
            postfix.sendmail(settings.mail_to, mail_text(item, settings.mail_to))
        except PostfixError as error:
            failures.append(f"notify: cannot mail {what} to {settings.mail_to}: {error}")
    if settings.command:
        failures.extend(_run_command(settings.command, item, what, timeout))
    return failures


def _run_command(command: str, item: Mapping[str, Any], what: str, timeout: float) -> List[str]:
    try:
        result = subprocess.run([command], input=json.dumps(item) + "\n", capture_output=True,
                                text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return [f"notify: command {command} for {what}: no exit in {timeout:g} s, killed"]
    except OSError as error:
        return [f"notify: cannot run command {command} for {what}: "
                f"{error.strerror or error}"]
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        why = f": {detail[-1][:200]}" if detail else ""
        return [f"notify: command {command} for {what} failed (exit status "
                f"{result.returncode}){why}"]
    return []


def _postconf(ctx: CommandContext) -> Dict[str, str]:
    try:
        return ctx.postfix.postconf("myhostname", "maximal_queue_lifetime")
    except PostfixError as error:
        ctx.warn(f"notify: cannot read myhostname and maximal_queue_lifetime: {error}")
        return {}


def notify(ctx: CommandContext, reports: Optional[Mapping[str, PrimaryState]] = None) -> int:
    """Evaluate and send the due events (the caller holds the flush lock and has reconciled).

    Returns how many events were decided. Never raises for a sending failure; ledger errors
    (LedgerError, sqlite3.Error) are logged in one line too: notifications never stop a flush.
    """
    settings = ctx.config.notify
    if not settings.enabled:
        return 0
    try:
        ledger = ctx.ledger()
        summaries = ledger.summaries()
        stored = ledger.notify_states()
        if not summaries and not stored:
            return 0
        postconf = _postconf(ctx)
        lifetime: Optional[int] = None
        try:
            lifetime = parse_time(postconf["maximal_queue_lifetime"], default_unit="d")
        except (KeyError, ValueError):
            lifetime = None
        now = ctx.clock()
        reports = reports or {}
        rows = [domain_status(d, summaries.get(d), reports.get(d), None, lifetime, now)
                for d in sorted(set(ctx.config.domains) | set(summaries))]
        states = {d: NotifyState(*values) for d, values in stored.items()}
        limits = Thresholds(settings.held_after, settings.repeat, settings.bounce_warning)
        events, new_states = due_events(rows, states, now, limits,
                                        postconf.get("myhostname", ""))
        # state first: an event is decided once, even if sending it fails below
        ledger.save_notify_states({d: (s.held_sent_at, s.last_sent_at, s.bounce_warned_at)
                                   for d, s in new_states.items()})
    except (LedgerError, sqlite3.Error, OSError) as error:
        ctx.warn(f"notify: cannot evaluate notifications: {error}")
        return 0
    for item in events:
        failures = send_event(item, settings, ctx.postfix)
        for failure in failures:
            ctx.warn(failure)
        if not failures:
            print(f"notify: {item['event']} of {item['domain']} sent "
                  f"({item['held_messages']} held)", file=ctx.out)
    return len(events)
