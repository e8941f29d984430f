"""Probe primaries "now" for the command, with the same probe policyd uses.

One definition of "up" for the whole project: common.smtp_probe.probe_primary (a 220 greeting
within the timeout from any lowest-preference MX host). The command is a short-lived program, so
it runs the Twisted reactor once, for all the domains it needs at the same time.
"""
from __future__ import annotations

from typing import Callable, Collection, Dict, Mapping

from backupmx.common.config import PrimarySpec
from backupmx.common.primary_state import DOWN, UNKNOWN, UP, PrimaryState

__all__ = ["DOWN", "UNKNOWN", "UP", "PrimaryState", "Prober", "probe_primaries", "not_probed"]

#: (domains, timeout in seconds) -> state per domain
Prober = Callable[[Mapping[str, PrimarySpec], float], Dict[str, PrimaryState]]


def probe_primaries(domains: Mapping[str, PrimarySpec], timeout: float,
                    local_names: Collection[str] = ()) -> Dict[str, PrimaryState]:
    """Probe every domain's primary concurrently; blocks at most about 2 x timeout seconds.

    Runs the global reactor, which can only run once per process: call this once per command.
    A domain whose probe did not finish in time is ``unknown``.
    """
    if not domains:
        return {}
    from twisted.internet import defer, reactor

    from backupmx.common.smtp_probe import ProbeResult, probe_primary

    reports: Dict[str, PrimaryState] = {}

    def probe_all() -> None:
        probes = []
        for domain, spec in domains.items():
            now = reactor.seconds()

            def keep(result: ProbeResult, domain: str = domain, now: float = now) -> None:
                status = UNKNOWN if result.error else (UP if result.up else DOWN)
                reports[domain] = PrimaryState(status, result.host or str(domains[domain]),
                                               now, None, result.error)
            probes.append(probe_primary(reactor, domain, spec, timeout, None,
                                        local_names).addCallback(keep))
        done = defer.DeferredList(probes, consumeErrors=True)
        done.addBoth(lambda _: reactor.stop())
        reactor.callLater(timeout * 2 + 1, lambda: reactor.stop() if not done.called else None)

    reactor.callWhenRunning(probe_all)
    reactor.run(installSignalHandlers=False)
    for domain, spec in domains.items():
        reports.setdefault(domain, PrimaryState(UNKNOWN, str(spec)))
    return reports


def not_probed(domains: Mapping[str, PrimarySpec], timeout: float) -> Dict[str, PrimaryState]:
    """For ``--no-probe``: every primary is "unknown"."""
    return {domain: PrimaryState(UNKNOWN, str(spec)) for domain, spec in domains.items()}
