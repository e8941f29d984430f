"""The merged recipients as a Postfix lookup table (``[postfix] recipient_table``), so that
Postfix's own ``relay_recipient_maps = hash:TABLE`` refuses unknown recipients while policyd is
stopped or stuck (``check_policy_service { ..., default_action=DUNNO }``).

The table holds exactly what policyd loads (the ``file`` sources and every snapshot), so it is
never emptier than policyd's own view, plus ``@domain OK`` (every recipient valid) for each
configured domain that policyd would not refuse unknown recipients of: a stale domain (policyd
answers 450 4.1.1; Postfix would answer 550, and a user added just before the outage would be
bounced), a domain no source lists (policyd accepts them) and a domain with a ``callout``
source (policyd accepts the recipients its primary confirmed, which no snapshot lists; with
policyd stopped and ``default_action=DUNNO`` Postfix then accepts every recipient of such a
domain, as for a domain no source lists). Stale subdomains listed in the snapshots get their
own ``@sub.domain`` line.

Written by ``backupmx recipients sync``/``import``/``accept``: the text into a temporary file
beside the table, ``postmap hash:TEMP``, then ``TEMP.db`` renamed over ``TABLE.db`` and the text
over ``TABLE``. A table whose content did not change is left alone (Postfix's smtpd processes
restart when the .db file changes).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterable, List, Mapping

from backupmx.common.postfix import Postfix
from backupmx.common.recipient_map import RecipientMap
from backupmx.common.snapshots import write_temporary


def table_lines(recipients: RecipientMap, domains: Iterable[str],
                fresh_until: Mapping[str, float], now: float,
                verified: Iterable[str] = ()) -> List[str]:
    """The table's lines (``key OK``), sorted; see the module docstring for what is in it.
    ``verified``: the domains a callout source speaks for."""
    configured = tuple(domains)
    stale = {d for d in configured if fresh_until.get(d, float("inf")) <= now}
    catch_all = set(recipients.catch_all) | set(verified)
    for domain in configured:
        if domain in stale or not recipients.covers(domain):
            catch_all.add(domain)
    for domain in recipients.users:
        if any(domain.endswith("." + owner) for owner in stale):
            catch_all.add(domain)
    lines = [f"@{domain} OK" for domain in sorted(catch_all)]
    for domain in sorted(recipients.users):
        if domain in catch_all:
            continue
        lines.extend(f"{local}@{domain} OK" for local in sorted(recipients.users[domain]))
    return lines


def write_table(path: str, lines: List[str], postfix: Postfix) -> bool:
    """Build ``hash:path`` from ``lines`` unless its text is already exactly that; True when
    written. Raises PostfixError (postmap failed) or OSError; a failure leaves the old table."""
    text = "# written by backupmx from its recipient sources; do not edit\n" + "".join(
        f"{line}\n" for line in lines)
    data = text.encode("utf-8")
    try:
        with open(path, "rb") as file:
            if file.read() == data and os.path.exists(path + ".db"):
                return False
    except FileNotFoundError:
        pass
    temporary = write_temporary(path, data, 0o644)
    try:
        postfix.run("postmap", f"hash:{temporary}")
        os.replace(temporary + ".db", path + ".db")
        os.replace(temporary, path)
    finally:
        for leftover in (temporary, temporary + ".db"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
    return True
