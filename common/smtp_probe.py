"""Is a domain's primary MX up? One probe, as a sending MTA would find out.

A probe of one address connects, waits for a ``220`` greeting, says QUIT and hangs up, all within
the timeout. A primary given as ``[host]:port`` is that one host. A primary given as ``mx`` is the
set of MX hosts of the lowest preference (RFC 5321 section 5.1: a sender tries every one of them,
in any order): it is up when any address of any of them greets with 220. The special answers are
the ones RFC 5321 and RFC 7505 define: no MX record means the domain itself is the implicit MX; a
null MX (``MX 0 .``) means the domain accepts no mail at all, which for a relay domain of ours is
a configuration error, never a silent "down". An MX host that is this host itself is an error too:
this host would be probing itself.

Twisted is imported here at module top: only policyd and the ``backupmx`` command load this
module, never the milter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection, List, Optional, Sequence, Tuple

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver

from backupmx.common.addresses import normalize_domain
from backupmx.common.config import PrimarySpec


@dataclass(frozen=True)
class ProbeResult:
    """One probe of a domain's primary: up or not, which host(s), any configuration error, and
    ``detail``: why there was no host to try (the MX lookup failed), empty otherwise."""

    up: bool
    host: str
    error: Optional[str] = None
    detail: str = ""


class ConfigurationProblem(Exception):
    """The MX set cannot be a primary of ours (null MX, this host); the message says why."""


class _GreetingProbe(LineOnlyReceiver):
    """Reads the first line of the SMTP greeting, answers QUIT, reports whether it was 220."""

    delimiter = b"\n"
    MAX_LENGTH = 4096

    def __init__(self) -> None:
        # cancelled when another host of the MX set has already answered: hang up at once
        self.greeted: defer.Deferred = defer.Deferred(lambda _: self._hang_up())

    def _hang_up(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def lineReceived(self, line: bytes) -> None:
        if self.greeted.called:
            return
        self.greeted.callback(line[:3] == b"220")
        self.sendLine(b"QUIT\r")
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.greeted.called:
            self.greeted.callback(False)


def probe_smtp(reactor: Any, host: str, port: int, timeout: float) -> defer.Deferred:
    """Deferred firing True if host:port greets with 220 within timeout (seconds), else False.

    Never fails: refused, timed out, closed or a non-220 greeting (RFC 5321 section 3.1: 554 or
    421 mean "no service") all fire False; so does cancelling it (the connection is dropped).
    """
    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    factory = Factory.forProtocol(_GreetingProbe)
    factory.noisy = False
    connected = endpoint.connect(factory)

    def greeting(protocol: _GreetingProbe) -> defer.Deferred:
        def silent(failure: Any) -> bool:
            failure.trap(defer.TimeoutError)
            protocol.transport.abortConnection()
            return False
        return protocol.greeted.addTimeout(timeout, reactor).addErrback(silent)

    connected.addCallback(greeting)
    connected.addErrback(lambda failure: False)
    return connected


def mx_hosts(domain: str, answers: Sequence[Any]) -> List[str]:
    """The primary MX hosts from MX answers (twisted.names RRHeaders): every host of the lowest
    preference, lower-case, without the trailing dot, in the order given.

    No MX record: ``[domain]`` itself (RFC 5321 section 5.1, the implicit MX). A null MX
    (RFC 7505: one MX record with exchange ``.``) raises ConfigurationProblem.
    """
    records = [r.payload for r in answers if hasattr(getattr(r, "payload", None), "preference")]
    if not records:
        return [domain]
    names = [(record.preference, normalize_domain(str(record.name))) for record in records]
    if any(not name for _, name in names):
        raise ConfigurationProblem(f"{domain} has a null MX record (RFC 7505): it accepts no "
                                   "mail, so it cannot be relayed by a backup MX")
    lowest = min(preference for preference, _ in names)
    hosts: List[str] = []
    for preference, name in names:
        if preference == lowest and name not in hosts:
            hosts.append(name)
    return hosts


def _bracket(host: str, port: int) -> str:
    # the bare host: it is what the deferral tells a sending client ("Primary MX HOST is up")
    return host


def probe_hosts(reactor: Any, hosts: Sequence[str], port: int,
                timeout: float) -> defer.Deferred:
    """Probe every host at once; fires ProbeResult: up with the first host that greeted 220
    (the other probes are then cancelled), else down naming every host tried.
    HostnameEndpoint tries each address of a name."""
    probes = [probe_smtp(reactor, host, port, timeout) for host in hosts]
    done: defer.Deferred = defer.Deferred()
    remaining = [len(probes)]

    def one(up: bool, host: str) -> None:
        remaining[0] -= 1
        if done.called:
            return
        if up:
            done.callback(ProbeResult(True, _bracket(host, port)))
            for other in probes:
                if not other.called:
                    other.cancel()
        elif remaining[0] == 0:
            done.callback(ProbeResult(False, ", ".join(_bracket(h, port) for h in hosts)))

    for host, probe in zip(hosts, probes):
        probe.addCallback(one, host)
    return done


def probe_primary(reactor: Any, domain: str, spec: PrimarySpec, timeout: float,
                  resolver: Any = None,
                  local_names: Collection[str] = ()) -> defer.Deferred:
    """Probe a domain's primary now; a Deferred firing a ProbeResult (never failing).

    ``resolver`` is a twisted.names resolver (default: the system's, created on first use);
    ``local_names`` are this host's own names (Postfix's myhostname, lower-case): an MX among
    them is reported as an error, not probed. A failed MX lookup is "down" with the reason:
    a sending MTA could not find the primary either.
    """
    if not spec.lookup_mx:
        assert spec.host is not None
        return probe_hosts(reactor, [spec.host], spec.port, timeout)
    if resolver is None:
        from twisted.names import client
        resolver = client.createResolver()
    lookup = resolver.lookupMailExchange(domain, timeout=(timeout,))

    def chosen(result: Tuple[Any, Any, Any]) -> Any:
        hosts = mx_hosts(domain, result[0])
        mine = [host for host in hosts if host in local_names]
        if mine:
            raise ConfigurationProblem(
                f"MX host {mine[0]} of {domain} is this host: it cannot be the primary")
        return probe_hosts(reactor, hosts, spec.port, timeout)

    def failed(failure: Any) -> ProbeResult:
        if failure.check(ConfigurationProblem):
            return ProbeResult(False, "", failure.getErrorMessage())
        return ProbeResult(False, "", detail=f"MX lookup failed: {failure.getErrorMessage()}")

    return lookup.addCallback(chosen).addErrback(failed)

