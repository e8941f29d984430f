"""Probe primaries "now" for the command, with the policy service's own prober.

One definition of "up" for the whole project: ``PrimaryProber`` (SMTP greeting 220 within the
timeout; ``mx`` domains resolved to their lowest-preference MX first). The command is a short-lived
program, so it runs the Twisted reactor once, for all the domains it needs at the same time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Mapping

from backupmx.policyd.config import PrimarySpec

UP, DOWN, UNKNOWN = "up", "down", "unknown"


@dataclass(frozen=True)
class PrimaryReport:
    state: str  # up | down | unknown
    host: str


Prober = Callable[[Mapping[str, PrimarySpec], float], Dict[str, PrimaryReport]]


def probe_primaries(domains: Mapping[str, PrimarySpec], timeout: float) -> Dict[str, PrimaryReport]:
    """Probe every domain's primary concurrently; blocks at most about 2 x timeout.

    Runs the global reactor, which can only run once per process: call this once per command.
    """
    if not domains:
        return {}
    from twisted.internet import defer, reactor

    from backupmx.policyd.prober import PrimaryProber

    prober = PrimaryProber(reactor, domains, interval=timeout, timeout=timeout)
    reports: Dict[str, PrimaryReport] = {}

    def probe_all() -> None:
        probes = [prober.probe_domain(domain) for domain in domains]
        done = defer.DeferredList(probes, consumeErrors=True)
        done.addBoth(lambda _: reactor.stop())
        reactor.callLater(timeout * 2 + 1, lambda: reactor.stop() if not done.called else None)

    reactor.callWhenRunning(probe_all)
    reactor.run(installSignalHandlers=False)
    for domain, spec in domains.items():
        state = prober.states.get(domain)
        if state is None:
            reports[domain] = PrimaryReport(UNKNOWN, str(spec))
        else:
            reports[domain] = PrimaryReport(UP if state.up else DOWN, _host(state.host, spec))
    return reports


def _host(host: str, spec: PrimarySpec) -> str:
    return f"[{host}]:{spec.port}" if host and not host.startswith("(") else str(spec)


def not_probed(domains: Mapping[str, PrimarySpec], timeout: float) -> Dict[str, PrimaryReport]:
    """For ``--no-probe``: every primary is "unknown"."""
    return {domain: PrimaryReport(UNKNOWN, str(spec)) for domain, spec in domains.items()}
