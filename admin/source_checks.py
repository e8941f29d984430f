"""``backupmx check`` rules about the recipient sources and the Postfix recipient table, as pure
functions over the configuration, ``postconf -x`` values and the sources' recorded states.

- ``[postfix] recipient_table`` set: ``relay_recipient_maps`` must name ``hash:`` + that path
  (else a stopped policyd lets unknown recipients in: fail), and the table should exist (warn).
- Each pulled or pushed source: warn when it never synced, when its last sync failed to reach
  the source (unreachable, timeout, refused credentials: "cannot connect") or failed otherwise,
  when a domain is stale (no good sync within ``stale_after``) or has a held-back change.
- Each ``*_password_file``: warn when others may read it (sources.passwords).
"""
from __future__ import annotations

import os
from typing import Callable, List, Mapping, Optional

from backupmx.admin.setup_checks import FAIL, OK, WARN, Result
from backupmx.common.config import Config
from backupmx.common.postfix_values import split_list
from backupmx.common.snapshots import SourceState
from backupmx.sources.passwords import password_file_warning

#: error classes (sources.errors) meaning the source could not be reached or logged in to
CONNECT_ERRORS = ("SourceUnreachable", "SourceTimeout", "SourceAuthError", "PasswordFileError")


def check_recipient_table(config: Config, postconf: Mapping[str, str],
                          exists: Callable[[str], bool] = os.path.exists) -> List[Result]:
    table = config.postfix.recipient_table
    if table is None:
        return []
    wanted = f"hash:{table}"
    maps = split_list(postconf.get("relay_recipient_maps", ""))
    if wanted not in maps:
        return [Result("recipient table", FAIL,
                       f"relay_recipient_maps does not name {wanted}: while policyd is stopped, "
                       "Postfix accepts unknown recipients (and bounces them later)",
                       f"postconf -e 'relay_recipient_maps = {wanted}'; postfix reload")]
    if not exists(table + ".db"):
        return [Result("recipient table", WARN, f"{table}.db does not exist yet",
                       "run: backupmx recipients sync")]
    return [Result("recipient table", OK, f"relay_recipient_maps names {wanted}")]


def _password_files(config: Config) -> List[str]:
    files: List[str] = []
    for source in config.sources:
        for name in ("bind_password_file", "password_file"):
            path = getattr(source.driver, name, None)
            if path:
                files.append(path)
    return files


def check_sources(config: Config, states: Mapping[str, SourceState], now: float,
                  password_warning: Callable[[str], Optional[str]] = password_file_warning
                  ) -> List[Result]:
    results: List[Result] = []
    for source in config.sources:
        if source.type == "file":
            continue
        check = f"recipient source {source.name}"
        state = states.get(source.name)
        fix = f"see: backupmx recipients status; backupmx recipients sync {source.name}"
        if state is None or state.last_attempt is None:
            results.append(Result(check, WARN, "never synced" if source.type != "push"
                                  else "nothing imported yet",
                                  fix if source.type != "push"
                                  else f"backupmx recipients import {source.name} < LIST"))
            continue
        problems = 0
        if state.last_result == "error":
            problems += 1
            what = ("cannot connect" if state.error_kind in CONNECT_ERRORS
                    else "last sync failed")
            results.append(Result(check, WARN, f"{what}: {state.last_error}", fix))
        for domain in source.domains:
            domain_state = state.domains.get(domain)
            applied = domain_state.applied_at if domain_state else None
            if applied is None or now >= applied + source.stale_after:
                problems += 1
                age = "never synced" if applied is None else \
                    f"last good sync {int(now - applied)} s ago"
                results.append(Result(check, WARN, f"{domain} is stale ({age}, stale_after "
                                      f"{source.stale_after:g} s): unknown recipients get 450",
                                      fix))
            if domain_state is not None and domain_state.held_back is not None:
                problems += 1
                results.append(Result(check, WARN, f"change of {domain} held back: "
                                      f"{domain_state.held_back.reason}",
                                      f"check the source, then: backupmx recipients accept "
                                      f"{source.name}"))
        if not problems:
            results.append(Result(check, OK, f"synced {int(now - (state.last_success or now))}"
                                  " s ago, every domain fresh"))
    for path in _password_files(config):
        warning = password_warning(path)
        results.append(Result("password file", WARN, warning, "chmod 0640 and chown "
                              "root:backupmx") if warning else
                       Result("password file", OK, f"{path} is readable by its owner and "
                              "group only"))
    return results
