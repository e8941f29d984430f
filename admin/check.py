"""``backupmx check``: is this host a correct backup MX? One line per rule, with the fix.

This module gathers the facts (``postconf -x``, ``postconf -M``, ``postmap -q`` for table-valued
domain lists, DNS through twisted.names, the maps) and hands them to the pure rules in
``checks.py``. Exit status 0 when nothing failed (warnings allowed), 1 otherwise.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from backupmx.admin.callouts import (
    check_callouts,
    check_flush_learning,
    read_cache,
    readable_by_flush_user,
)
from backupmx.admin.setup_checks import (
    FAIL,
    OK,
    WARN,
    DomainDns,
    Result,
    check_dns,
    check_domain_lists,
    check_flush_service,
    check_maps,
    check_milter,
    check_notify,
    check_policy_service,
    check_queue_lifetime,
    check_restriction_bypass,
)
from backupmx.common.addresses import normalize_domain
from backupmx.common.config import Config, PrimarySpec
from backupmx.common.listen import split_host_port
from backupmx.common.postfix import Postfix, PostfixError, parse_postconf

DNS_TIMEOUT = 5.0


def add_arguments(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``check`` on the ``backupmx`` command's subparsers."""
    parser = subparsers.add_parser(
        "check", help="check that Postfix and DNS make this host a correct backup MX",
        description="Check Postfix settings, master.cf, DNS MX records and the maps; "
                    "exit 1 if any check fails.")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--hostname", help="this host's MX name (default: Postfix's myhostname)")
    parser.add_argument("--nameserver", metavar="HOST:PORT",
                        help="ask this DNS server (default: /etc/resolv.conf)")
    parser.add_argument("--no-dns", action="store_true", help="skip the DNS checks")
    parser.set_defaults(run=run)
    return parser


def parse_nameserver(text: str) -> Tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``HOST`` or a bare IPv6 address (port 53); ValueError."""
    try:
        ipaddress.ip_address(text)
        return text, 53  # a bare IPv6 address, as resolv.conf writes it
    except ValueError:
        pass
    host, port, _ = split_host_port(text, 53)
    return host, port


# ---- facts ------------------------------------------------------------------------------------

def table_lookup(postfix: Postfix) -> Any:
    """``postmap -q KEY TABLE`` as a (table, key) -> found?/None callable."""
    def lookup(table: str, key: str) -> Optional[bool]:
        try:
            result = postfix.run("postmap", "-q", key, table, check=False)
        except PostfixError:
            return None
        return {0: True, 1: False}.get(result.returncode)
    return lookup


def gather_dns(resolver: Any, domains: Mapping[str, PrimarySpec], timeout: float) -> Any:
    """Deferred firing {domain: DomainDns}: MX records and the addresses of the hosts named."""
    from twisted.internet import defer

    async def addresses(host: str) -> Tuple[str, ...]:
        found: List[str] = []
        for lookup in (resolver.lookupAddress, resolver.lookupIPV6Address):
            try:
                answers, _, _ = await lookup(host, timeout=(timeout,))
            except Exception:  # noqa: BLE001 (any DNS failure means "no address of that type")
                continue
            for record in answers:
                dotted = getattr(record.payload, "dottedQuad", None)
                address = dotted() if dotted else getattr(record.payload, "_address", None)
                if isinstance(address, bytes):
                    address = str(ipaddress.ip_address(address))
                if address:
                    found.append(str(address))
        return tuple(found)

    async def one(domain: str, spec: PrimarySpec) -> DomainDns:
        try:
            answers, _, _ = await resolver.lookupMailExchange(domain, timeout=(timeout,))
        except Exception as error:  # noqa: BLE001 (reported as the reason for "no MX")
            return DomainDns(mx=(), error=type(error).__name__, addresses={})
        mx = tuple((r.payload.preference, normalize_domain(str(r.payload.name)))
                   for r in answers if hasattr(r.payload, "preference"))
        hosts = {host for _, host in mx}
        if spec.host is not None and not _is_ip(spec.host):
            hosts.add(normalize_domain(spec.host))
        resolved = {host: await addresses(host) for host in sorted(hosts)}
        return DomainDns(mx=mx, addresses=resolved)

    async def everything() -> Dict[str, DomainDns]:
        return {domain: await one(domain, spec) for domain, spec in domains.items()}

    return defer.ensureDeferred(everything())


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def make_resolver(nameserver: Optional[str]) -> Any:
    from twisted.names import client
    if nameserver:
        return client.Resolver(servers=[parse_nameserver(nameserver)])
    return client.Resolver(resolv="/etc/resolv.conf")


def lookup_dns_blocking(nameserver: Optional[str], domains: Mapping[str, PrimarySpec],
                        timeout: float = DNS_TIMEOUT) -> Dict[str, DomainDns]:
    """Run the reactor once for all lookups (a command runs it once per process)."""
    from twisted.internet import reactor

    outcome: Dict[str, Any] = {}

    def start() -> None:
        done = gather_dns(make_resolver(nameserver), domains, timeout)
        done.addCallbacks(lambda value: outcome.setdefault("value", value),
                          lambda failure: outcome.setdefault("error", failure.getErrorMessage()))
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=False)
    if "value" not in outcome:
        error = outcome.get("error", "no answer")
        return {d: DomainDns(mx=(), error=error, addresses={}) for d in domains}
    return outcome["value"]


# ---- the whole check --------------------------------------------------------------------------

def run_checks(config: Config, postconf: Mapping[str, str], services: Sequence[str],
               dns: Optional[Mapping[str, DomainDns]], hostname: str,
               lookup: Any = None, load: Any = None, states: Any = None,
               now: Optional[float] = None, readable: Any = None) -> List[Result]:
    """Every rule over already gathered facts (pure when ``load`` and ``readable`` are pure
    functions and the sources' ``states`` and ``now`` are given; else they are read now)."""
    import time

    from backupmx.admin.source_checks import check_recipient_table, check_sources
    from backupmx.common.maps import load_maps
    from backupmx.common.recipient_sources import read_states
    results = check_domain_lists(list(config.domains), postconf, lookup)
    results += check_policy_service(config, postconf)
    results += check_restriction_bypass(config, postconf)
    results += check_milter(config, postconf)
    results += check_queue_lifetime(postconf)
    results += check_flush_service(services)
    if dns is not None:
        for domain, spec in config.domains.items():
            results += check_dns(domain, spec, dns[domain], hostname)
    results += check_maps(config, load or load_maps)
    results += check_notify(config, postconf, lookup)
    results += check_recipient_table(config, postconf)
    results += check_sources(config, read_states(config) if states is None else states,
                             time.time() if now is None else now)
    if any(source.type == "callout" for source in config.sources):
        _, checks, error = read_cache(config)  # policyd's callout cache, read-only
        results += check_callouts(config, checks, error)
        results.append(check_flush_learning(postconf, readable or readable_by_flush_user))
    return results


def render_text(results: Sequence[Result]) -> str:
    lines = []
    for result in results:
        lines.append(f"{result.status.upper():4}  {result.check}: {result.message}")
        if result.fix and result.status != OK:
            lines.append(f"      fix: {result.fix}")
    failed = sum(r.status == FAIL for r in results)
    warned = sum(r.status == WARN for r in results)
    lines.append(f"{failed} failed, {warned} warnings, {len(results)} checks")
    return "\n".join(lines)


def render_json(results: Sequence[Result]) -> str:
    return json.dumps({"ok": not any(r.status == FAIL for r in results),
                       "checks": [r.as_dict() for r in results]}, indent=2)


def run(args: argparse.Namespace, config: Config) -> int:
    """The ``check`` subcommand: gather, check, print; 0 if nothing failed, else 1."""
    postfix = Postfix.from_setting(config.postfix.config_directory)
    try:
        postconf = parse_postconf(postfix.run("postconf", "-x").stdout.splitlines())
        services = postfix.master_services()
    except PostfixError as error:
        results = [Result("postfix", FAIL, str(error), "point [postfix] config_directory at "
                          "the Postfix instance, or set MAIL_CONFIG")]
    else:
        hostname = (getattr(args, "hostname", None) or postconf.get("myhostname", "")).lower()
        dns = None if getattr(args, "no_dns", False) else lookup_dns_blocking(
            getattr(args, "nameserver", None), config.domains)
        results = run_checks(config, postconf, services, dns, hostname, table_lookup(postfix))
    from backupmx.admin.fleet_check import check_fleet
    results += check_fleet(config)
    print(render_json(results) if getattr(args, "json", False) else render_text(results))
    return 1 if any(r.status == FAIL for r in results) else 0
