"""Fleet flush requests: ``backupmx flush DOMAIN --fleet`` records one; every host carries it out
on its own queue at its next push and records its result.

A host carries out the requests made since it first pushed (a host joining later does not replay
old ones) that it has no result for yet, oldest first. Results: those of ``backupmx flush``
(complete, partial, failed) or ``refused`` (primary down, not configured here) with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from backupmx.fleet.store import StoreError, driver, one_line


@dataclass(frozen=True)
class FlushRequest:
    id: int
    domain: str
    force: bool
    wait_seconds: float
    requested_by: str


def record(pg: Any, domain: str, requested_by: str, force: bool, wait: float) -> int:
    """Store a request; returns its id (StoreError)."""
    psycopg = driver()
    try:
        with pg.transaction():
            row = pg.execute("INSERT INTO flush_requests (domain, requested_at, requested_by,"
                             " force, wait_seconds) VALUES (%s, extract(epoch FROM now()), %s,"
                             " %s, %s) RETURNING id",
                             (domain, requested_by, force, wait)).fetchone()
    except psycopg.Error as error:
        raise StoreError(f"fleet store: {one_line(error)}") from None
    return int(row[0])


def pending(pg: Any, host_id: str, max_age: float) -> List[FlushRequest]:
    """Requests this host has not answered, made since it joined and within ``max_age``
    seconds, oldest first (psycopg.Error)."""
    with pg.transaction():
        rows = pg.execute(
            "SELECT r.id, r.domain, r.force, r.wait_seconds, r.requested_by"
            " FROM flush_requests r JOIN hosts h ON h.host_id = %s"
            " WHERE r.requested_at >= h.first_seen_at"
            " AND r.requested_at >= extract(epoch FROM now()) - %s"
            " AND NOT EXISTS (SELECT 1 FROM flush_request_results x"
            "                 WHERE x.request_id = r.id AND x.host_id = %s)"
            " ORDER BY r.id", (host_id, max_age, host_id)).fetchall()
    return [FlushRequest(r[0], r[1], bool(r[2]), float(r[3]), r[4]) for r in rows]


def record_result(pg: Any, request_id: int, host_id: str, result: str,
                  held_before: Optional[int], delivered: Optional[int],
                  remaining: Optional[int], flush_id: Optional[int], detail: str) -> None:
    """This host's answer to a request (the first answer stays; psycopg.Error)."""
    with pg.transaction():
        pg.execute("INSERT INTO flush_request_results (request_id, host_id, finished_at, result,"
                   " held_before, delivered, remaining, flush_id, detail)"
                   " VALUES (%s, %s, extract(epoch FROM now()), %s, %s, %s, %s, %s, %s)"
                   " ON CONFLICT DO NOTHING",
                   (request_id, host_id, result, held_before, delivered, remaining, flush_id,
                    detail))
