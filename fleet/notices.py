"""``[notify]`` for a fleet: events judged on the fleet's totals, state kept in the store.

Called by admin/notify.py under the leader lock (fleet/leader.py), so hosts take turns and a
domain held on several backup MXes makes one notice. The rows have the shape of
admin/status.py ``domain_status`` (what admin/notify_events.py ``due_events`` reads), built from
the fleet view: held messages and bytes summed over the hosts, the oldest held message of any
host, the primary as the host calling sees it.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

from backupmx.fleet.schema import require_current
from backupmx.fleet.store import StoreError, driver, one_line
from backupmx.fleet.view import fleet_status

#: (held_sent_at, last_sent_at, bounce_warned_at) per domain, Unix seconds or None
States = Dict[str, Tuple[Optional[float], Optional[float], Optional[float]]]


def fleet_rows(document: Mapping[str, Any], primaries: Mapping[str, Tuple[str, str]],
               lifetime: Optional[int]) -> List[Dict[str, Any]]:
    """Status rows of the fleet view's domains (pure). ``primaries``: domain -> (state, host)
    as this host probed them; ``lifetime``: Postfix's maximal_queue_lifetime in seconds."""
    rows = []
    for domain in document.get("domains", ()):
        oldest = domain.get("oldest_held_seconds")
        primary, host = primaries.get(domain["domain"], ("unknown", ""))
        rows.append({
            "domain": domain["domain"], "primary": primary, "primary_host": host,
            "held_messages": int(domain.get("held_messages") or 0),
            "held_bytes": int(domain.get("held_bytes") or 0),
            "oldest_held_seconds": oldest,
            "bounces_in_seconds": None if oldest is None or lifetime is None
            else max(0, lifetime - oldest),
        })
    return rows


def read(pg: Any) -> Tuple[Dict[str, Any], States]:
    """The fleet view and the stored notify states (StoreError, one line)."""
    psycopg = driver()
    document = fleet_status(pg)
    try:
        rows = pg.execute("SELECT domain, held_sent_at, last_sent_at, bounce_warned_at"
                          " FROM notify_state").fetchall()
        pg.commit()
    except psycopg.Error as error:
        raise StoreError(f"fleet store: {one_line(error)}") from None
    return document, {row[0]: (row[1], row[2], row[3]) for row in rows}


def save(pg: Any, states: States) -> None:
    """Replace the stored notify states with ``states`` (StoreError, one line)."""
    psycopg = driver()
    try:
        require_current(pg)
        pg.commit()  # end the check's implicit transaction: the block below commits its own
        with pg.transaction():
            pg.execute("DELETE FROM notify_state")
            for domain, (held, last, bounce) in sorted(states.items()):
                pg.execute("INSERT INTO notify_state (domain, held_sent_at, last_sent_at,"
                           " bounce_warned_at) VALUES (%s, %s, %s, %s)",
                           (domain, held, last, bounce))
    except psycopg.Error as error:
        raise StoreError(f"fleet store: {one_line(error)}") from None
