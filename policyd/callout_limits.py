"""The limits on recipient callouts, pure (times are arguments; tests use task.Clock's).

Per domain: at most ``max_connections`` sessions open at once and ``rate`` callouts (addresses
asked) in any 60 seconds; per SMTP client (the policy request's ``client_address``): at most
``client_rate`` callouts caused in any hour, so one dictionary attacker cannot make the backup
MX hammer the primary. A callout is charged when it is admitted (queued), so a burst can never
queue more than the limits allow.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Deque, Dict, Optional

DOMAIN_WINDOW = 60.0
CLIENT_WINDOW = 3600.0
#: clients remembered before the idle ones are dropped
MAX_CLIENTS = 10_000

DOMAIN_RATE, CLIENT_RATE = "domain_rate", "client_rate"


@dataclass(frozen=True)
class Limits:
    """One domain's limits (from its callout source's settings)."""

    max_connections: int = 2
    rate: int = 30
    client_rate: int = 10


def _trim(times: Deque[float], now: float, window: float) -> None:
    while times and times[0] <= now - window:
        times.popleft()


class CalloutLimits:
    """Counts sessions and callouts; ``admit`` and ``may_connect`` say whether one more may
    happen. Only the reactor thread uses it."""

    def __init__(self) -> None:
        self._domain_times: Dict[str, Deque[float]] = {}
        self._client_times: Dict[str, Deque[float]] = {}
        self._open: Dict[str, int] = {}

    def admit(self, domain: str, client: str, limits: Limits, now: float,
              charge_client: bool = True) -> Optional[str]:
        """Charge one callout of ``domain`` caused by ``client`` at ``now`` (Unix seconds) if
        both limits allow it: None, else the limit that refused it (DOMAIN_RATE or
        CLIENT_RATE; nothing is charged then). ``charge_client`` False: a callout of
        backupmx's own (the accept-all check) counts against the domain only."""
        domain_times = self._domain_times.setdefault(domain, deque())
        _trim(domain_times, now, DOMAIN_WINDOW)
        if len(domain_times) >= limits.rate:
            return DOMAIN_RATE
        client_times: Optional[Deque[float]] = None
        if charge_client:
            client_times = self._client_times.get(client)
            if client_times is None:
                if len(self._client_times) >= MAX_CLIENTS:
                    self._forget_idle_clients(now)
                client_times = self._client_times[client] = deque()
            _trim(client_times, now, CLIENT_WINDOW)
            if len(client_times) >= limits.client_rate:
                return CLIENT_RATE
            client_times.append(now)
        domain_times.append(now)
        return None

    def _forget_idle_clients(self, now: float) -> None:
        for client in [c for c, t in self._client_times.items()
                       if not t or t[-1] <= now - CLIENT_WINDOW]:
            del self._client_times[client]

    def may_connect(self, domain: str, limits: Limits) -> bool:
        return self._open.get(domain, 0) < limits.max_connections

    def opened(self, domain: str) -> None:
        self._open[domain] = self._open.get(domain, 0) + 1

    def closed(self, domain: str) -> None:
        left = self._open.get(domain, 0) - 1
        if left > 0:
            self._open[domain] = left
        else:
            self._open.pop(domain, None)

    def open_sessions(self, domain: str) -> int:
        return self._open.get(domain, 0)
