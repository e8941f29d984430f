"""What the admin's commands show of recipient callouts, read from policyd's callout cache
(common.callout_cache, read-only; the admin never imports backupmx.policyd).

- ``callout_rows``: one row per ``callout`` source for ``backupmx recipients status``;
- ``check_callouts``: ``backupmx check`` lines (a warning per domain whose primary accepts every
  address, so callouts for it are off); ``check_flush_learning``: where flushes learn from;
- ``cached_verdict``: what ``backupmx query`` shows for an address.
"""
from __future__ import annotations

import sqlite3
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from backupmx.admin.setup_checks import OK, WARN, Result
from backupmx.common.callout_cache import DomainCheck, read_store, store_path
from backupmx.common.callout_rules import Verdict, cache_key, verdict_of
from backupmx.common.config import Config
from backupmx.common.source_settings import CalloutSettings


def _sources(config: Config) -> List[Tuple[str, CalloutSettings, Tuple[str, ...]]]:
    return [(s.name, s.driver, s.domains) for s in config.sources
            if isinstance(s.driver, CalloutSettings)]


def read_cache(config: Config) -> Tuple[Dict[Tuple[str, str], int], Dict[str, DomainCheck],
                                        Optional[str]]:
    """(domain, status) -> stored entries, the accept-all checks, and an error text (None
    when fine; the cache not existing yet is fine)."""
    store = read_store(config.policyd.state_directory)
    if store is None:
        return {}, {}, None
    try:
        return store.counts(), store.checks(), None
    except sqlite3.Error as error:
        return {}, {}, f"{store_path(config.policyd.state_directory)}: {error}"
    finally:
        store.close()


def callout_rows(config: Config) -> List[Dict[str, Any]]:
    """``recipients status`` rows: ``{"name", "type": "callout", "domains": [{"domain",
    "valid", "invalid", "accept_all", "checked_at"}], "last_error"}``."""
    counts, checks, error = read_cache(config)
    rows = []
    for name, _, domains in _sources(config):
        rows.append({"name": name, "type": "callout", "last_error": error, "domains": [
            {"domain": d, "valid": counts.get((d, "valid"), 0),
             "invalid": counts.get((d, "invalid"), 0),
             "accept_all": bool(checks[d].accept_all) if d in checks else None,
             "checked_at": checks[d].checked_at if d in checks else None}
            for d in domains]})
    return rows


def check_callouts(config: Config, checks: Mapping[str, DomainCheck],
                   error: Optional[str]) -> List[Result]:
    """``check`` lines for the callout sources (pure)."""
    results: List[Result] = []
    if error:
        results.append(Result("callouts", WARN, f"the callout cache cannot be read: {error}",
                              "check the state_directory's permissions; a damaged file is "
                              "moved aside when policyd starts"))
    for name, _, domains in _sources(config):
        for domain in domains:
            check = checks.get(domain)
            if check is not None and check.accept_all:
                results.append(Result(
                    "callouts", WARN, f"[recipients {name}]: the primary of {domain} accepted a "
                    f"random address ({check.reply or 'accepted'}): it accepts every recipient, "
                    "so callouts for it are off and it is judged as if it had no callout source",
                    f"have the primary refuse unknown recipients at RCPT time, or list the "
                    f"recipients of {domain} in another source"))
            else:
                results.append(Result("callouts", OK, f"[recipients {name}]: callouts for "
                                      f"{domain}" + ("" if check else " (not checked yet)")))
    return results


#: the user backupmx-flush.service runs ``flush --auto`` as (its User=)
FLUSH_USER = "backupmx"


def check_flush_learning(postconf: Mapping[str, str],
                         readable: Callable[[str], Optional[bool]]) -> Result:
    """The ``check`` line saying where flushes learn recipients from (pure): Postfix's
    ``maillog_file`` (a warning when ``readable(path)`` says the flushing user may not read it,
    None: not known) or else the journal (backupmx-flush.service has the group systemd-journal).
    """
    maillog = postconf.get("maillog_file", "")
    if not maillog:
        return Result("callouts", OK, "flushes learn recipients from Postfix's log in the "
                      "journal (backupmx-flush.service has the group systemd-journal)")
    if maillog.startswith("/dev/"):
        return Result("callouts", WARN, f"Postfix logs to {maillog}, which cannot be read "
                      "back: flushes learn no recipients", "set maillog_file to a file, or "
                      "leave it empty to log to the journal")
    can = readable(maillog)
    if can is False:
        return Result("callouts", WARN, f"Postfix's maillog_file {maillog} is not readable by "
                      f"user {FLUSH_USER} (mode bits; an ACL is not seen here): flushes learn no "
                      "recipients from it", f"setfacl -m u:{FLUSH_USER}:r {maillog} (again after "
                      "each 'postfix logrotate', which makes a new file), or let Postfix log "
                      "to the journal (maillog_file empty)")
    return Result("callouts", OK, f"flushes learn recipients from Postfix's maillog_file "
                  f"{maillog}")


def readable_by_flush_user(path: str) -> Optional[bool]:
    """Whether FLUSH_USER (or, without that user, whoever runs this) may read ``path`` by its
    mode bits; None when the file or the user cannot be looked at."""
    import grp
    import os
    import pwd
    try:
        status = os.stat(path)
        try:
            user = pwd.getpwnam(FLUSH_USER)
        except KeyError:
            return os.access(path, os.R_OK)
    except OSError:
        return None
    if user.pw_uid == 0:
        return True
    if status.st_uid == user.pw_uid:
        return bool(status.st_mode & 0o400)
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if FLUSH_USER in g.gr_mem}
    if status.st_gid in groups:
        return bool(status.st_mode & 0o040)
    return bool(status.st_mode & 0o004)


def cached_verdict(config: Config, domain: Optional[str], address: str,
                   now: float) -> Optional[Dict[str, Any]]:
    """``query``'s view of the cache for ``address``: ``{"verdict", "status", "age",
    "accept_all", "reply"}`` or None when no callout source speaks for ``domain``."""
    source = next((s for s in _sources(config) if domain in s[2]), None)
    if source is None or domain is None:
        return None
    store = read_store(config.policyd.state_directory)
    if store is None:
        return {"verdict": "unverified", "status": None, "age": None, "accept_all": None,
                "reply": None}
    try:
        entry = store.get(cache_key(address)[0])
        check = store.checks().get(domain)
    except (sqlite3.Error, OSError) as error:
        return {"verdict": "unverified", "status": None, "age": None, "accept_all": None,
                "reply": None, "error": f"{store.path}: {error}"}
    finally:
        store.close()
    verdict = verdict_of(entry, source[1].lifetimes, now)
    return {"verdict": verdict.status, "refresh": verdict.refresh,
            "status": entry.status if entry else None,
            "age": None if entry is None else now - entry.verified_at,
            "accept_all": None if check is None else check.accept_all,
            "reply": entry.reply if entry else None}


class StoredVerdicts:
    """common.decision.CalloutVerdicts from the stored cache (for ``backupmx query``)."""

    def __init__(self, config: Config, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock

    def verdict(self, domain: str, address: str, now: float) -> Optional[Verdict]:
        found = cached_verdict(self.config, domain, address, now)
        if found is None or found["accept_all"]:
            return None
        return Verdict(found["verdict"], found.get("refresh", True), found["age"])
