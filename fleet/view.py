"""``backupmx status --fleet``: what every host of the fleet holds for each relay domain.

Held counts come from the message rows the hosts pushed (``message_domains`` still held), the
primary state from each host's last domain states; ages use the database server's clock, so the
hosts' clocks never matter. A host whose last push is older than three of its push intervals is
stale: its rows are its last known counts.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from backupmx.fleet.schema import require_current
from backupmx.fleet.store import StoreError, driver, one_line

STALE_AFTER_INTERVALS = 3
RECENT_REQUESTS = 10

_HOSTS = ("SELECT host_id, last_push_at, push_interval, pending_changes, lag_seconds,"
          " extract(epoch FROM now()) FROM hosts ORDER BY host_id")
_HELD = ("SELECT md.domain, md.host_id, count(*), coalesce(sum(m.size), 0), min(m.received_at)"
         " FROM message_domains md JOIN messages m USING (host_id, local_id)"
         " WHERE md.state = 'held' GROUP BY md.domain, md.host_id")
_STATES = "SELECT domain, host_id, primary_state, primary_host FROM domain_states"
_REQUESTS = ("SELECT id, domain, requested_at, requested_by, force FROM flush_requests"
             " ORDER BY id DESC LIMIT %s")
_RESULTS = ("SELECT request_id, host_id, finished_at, result, held_before, delivered,"
            " remaining, detail FROM flush_request_results WHERE request_id = ANY(%s)"
            " ORDER BY request_id, host_id")


def host_summary(row: Sequence[Any]) -> Dict[str, Any]:
    """A ``hosts`` row (and the server's now) as the document's host entry (pure)."""
    host_id, last_push_at, interval, pending, lag, now = row
    age = None if last_push_at is None else max(0, int(float(now) - last_push_at))
    return {"host_id": host_id, "last_push_seconds": age, "push_interval": interval,
            "stale": age is None or age > STALE_AFTER_INTERVALS * interval,
            "pending_changes": int(pending), "lag_seconds": int(lag)}


def build_fleet_status(hosts: Sequence[Sequence[Any]],
                       held: Sequence[Tuple[str, str, int, int, Optional[float]]],
                       states: Sequence[Tuple[str, str, str, str]],
                       requests: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The ``status --fleet --json`` document from the store's rows (pure): one entry per
    domain (sorted) with totals and one row per host that holds mail for it or reported it."""
    host_info = {row[0]: host_summary(row) for row in hosts}
    now = float(hosts[0][5]) if hosts else None
    per: Dict[str, Dict[str, Dict[str, Any]]] = {}

    def cell(domain: str, host_id: str) -> Dict[str, Any]:
        info = host_info.get(host_id, {"last_push_seconds": None, "stale": True})
        return per.setdefault(domain, {}).setdefault(host_id, {
            "host_id": host_id, "held_messages": 0, "held_bytes": 0,
            "oldest_held_seconds": None, "primary": "unknown", "primary_host": "",
            "last_push_seconds": info["last_push_seconds"], "stale": info["stale"]})

    for domain, host_id, primary, primary_host in states:
        entry = cell(domain, host_id)
        entry["primary"], entry["primary_host"] = primary, primary_host
    for domain, host_id, count, size, oldest in held:
        entry = cell(domain, host_id)
        entry["held_messages"], entry["held_bytes"] = int(count), int(size)
        if oldest is not None and now is not None:
            entry["oldest_held_seconds"] = max(0, int(now - oldest))
    domains: List[Dict[str, Any]] = []
    for domain in sorted(per):
        rows = [per[domain][h] for h in sorted(per[domain])]
        ages = [r["oldest_held_seconds"] for r in rows if r["oldest_held_seconds"] is not None]
        domains.append({"domain": domain,
                        "held_messages": sum(r["held_messages"] for r in rows),
                        "held_bytes": sum(r["held_bytes"] for r in rows),
                        "oldest_held_seconds": max(ages) if ages else None,
                        "hosts": rows})
    return {"domains": domains, "hosts": list(host_info.values()),
            "flush_requests": requests, "generated_at": now}


def fleet_status(pg: Any) -> Dict[str, Any]:
    """Read the store and build the document (StoreError, one line)."""
    psycopg = driver()
    try:
        require_current(pg)
        with pg.transaction():
            hosts = pg.execute(_HOSTS).fetchall()
            held = pg.execute(_HELD).fetchall()
            states = pg.execute(_STATES).fetchall()
            request_rows = pg.execute(_REQUESTS, (RECENT_REQUESTS,)).fetchall()
            ids = [r[0] for r in request_rows]
            results = pg.execute(_RESULTS, (ids,)).fetchall() if ids else []
    except psycopg.Error as error:
        raise StoreError(f"fleet store: {one_line(error)}") from None
    return build_fleet_status(hosts, held, states, _requests(request_rows, results))


def _requests(rows: Sequence[Sequence[Any]],
              results: Sequence[Sequence[Any]]) -> List[Dict[str, Any]]:
    by_request: Dict[int, List[Dict[str, Any]]] = {}
    for r in results:
        by_request.setdefault(r[0], []).append(
            {"host_id": r[1], "finished_at": r[2], "result": r[3], "held_before": r[4],
             "delivered": r[5], "remaining": r[6], "detail": r[7]})
    return [{"id": r[0], "domain": r[1], "requested_at": r[2], "requested_by": r[3],
             "force": r[4], "results": by_request.get(r[0], [])} for r in rows]


def render_fleet_table(status: Mapping[str, Any]) -> str:
    """The fleet status for people: one line per domain and host, then the domain's total."""
    header = ("DOMAIN", "HOST", "PRIMARY", "HELD", "BYTES", "LAST PUSH")
    lines = [header]
    for domain in status["domains"]:
        for row in domain["hosts"]:
            push = _age(row["last_push_seconds"]) + (" (stale)" if row["stale"] else "")
            lines.append((domain["domain"], row["host_id"], row["primary"],
                          str(row["held_messages"]), str(row["held_bytes"]), push))
        lines.append((domain["domain"], "(total)", "", str(domain["held_messages"]),
                      str(domain["held_bytes"]), ""))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    text = "\n".join("  ".join([*(c.ljust(w) for c, w in zip(line, widths)), line[-1]]).rstrip()
                     for line in lines)
    for request in status.get("flush_requests", [])[:3]:
        done = ", ".join(f"{r['host_id']}: {r['result']}" for r in request["results"]) \
            or "no host yet"
        text += f"\nflush request #{request['id']} {request['domain']}: {done}"
    return text + "\n"


def _age(seconds: Optional[int]) -> str:
    return "never" if seconds is None else f"{seconds}s ago"
