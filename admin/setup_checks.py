"""The rules of a correct backup MX, as pure functions over data read from Postfix and DNS.

``backupmx check`` gathers ``postconf -x`` values, ``postconf -M`` services, DNS answers and the
parsed maps, then calls these functions; each returns result rows, and every failing row carries
the fix. Nothing here runs a program or touches the network, so every rule is unit tested with
tables of plain dicts.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from backupmx.common.addresses import normalize_domain
from backupmx.common.config import Config, PrimarySpec
from backupmx.common.listen import ListenAddress, split_host_port
from backupmx.common.maps import LoadedMaps
from backupmx.common.postfix_values import (
    TableLookup,
    domain_list_matches,
    parent_matches_subdomains,
    parse_time,
    split_list,
)
from backupmx.common.relay_scope import unconfigured_relay_names

OK, WARN, FAIL = "ok", "warn", "fail"
WEEK = 7 * 86400
RELAY_GUARDS = ("reject_unauth_destination", "defer_unauth_destination")
# Postfix defaults when a parameter is not set (postconf -d, 3.7).
POLICY_TIMEOUT_DEFAULT = "100s"
POLICY_DEFAULT_ACTION_DEFAULT = "451 4.3.5 Server configuration problem"
MILTER_DEFAULT_ACTION_DEFAULT = "tempfail"
# A hung policy service stalls every RCPT for timeout x 2 tries.
POLICY_TIMEOUT_MAX = 30.0


@dataclass(frozen=True)
class Result:
    """One line of the report: what was checked, how it went, and the fix when it did not."""

    check: str
    status: str  # ok | warn | fail
    message: str
    fix: str = ""

    def as_dict(self) -> Dict[str, str]:
        return asdict(self)


# ---- Postfix value syntax (lists and times: common.postfix_values) -------------------------

def group_items(item: str) -> Tuple[str, Dict[str, str]]:
    """``{ inet:h:p, timeout=10s, default_action=DUNNO }`` -> (``inet:h:p``, options)."""
    if not item.startswith("{"):
        return item, {}
    parts = [p.strip() for p in item.strip("{} \t").split(",") if p.strip()]
    target = parts[0] if parts else ""
    options = {}
    for part in parts[1:]:
        name, _, value = part.partition("=")
        options[name.strip().lower()] = value.strip()
    return target, options


_TAKES_ARGUMENT = re.compile(r"^(check_\w+|reject_rbl_client|reject_rhsbl_\w+|"
                             r"permit_dnswl_client|permit_rhswl_client|reject_dnsbl_\w+)$")


def restrictions(value: str) -> List[Tuple[str, str]]:
    """A restriction list as (name, argument) pairs; the argument is empty for bare names."""
    items = split_list(value)
    pairs: List[Tuple[str, str]] = []
    index = 0
    while index < len(items):
        name = items[index].lower()
        argument = ""
        if _TAKES_ARGUMENT.match(name) and index + 1 < len(items):
            index += 1
            argument = items[index]
        pairs.append((name, argument))
        index += 1
    return pairs


def socket_key(text: str, queue_directory: str = "") -> Tuple[str, str]:
    """Normalise a Postfix service address (``inet:h:p``, ``unix:path``, ``private/x``)."""
    kind, sep, rest = text.partition(":")
    if not sep or kind not in ("inet", "unix"):
        kind, rest = ("unix", text) if "/" in text and ":" not in text else ("inet", text)
    if kind == "unix":
        path = rest if rest.startswith("/") else os.path.join(queue_directory, rest)
        return "unix", os.path.normpath(path)
    try:
        host, port, _ = split_host_port(rest, None)
    except ValueError:
        return "inet", rest  # not comparable: it will not match any listen address
    return "inet", f"{_host_key(host)}:{port}"


def listen_key(address: ListenAddress) -> Tuple[str, str]:
    if address.kind == "unix":
        return "unix", os.path.normpath(address.path)
    return "inet", f"{_host_key(address.host)}:{address.port}"


def _host_key(host: str) -> str:
    host = host.lower()
    if host in ("localhost", "localhost.localdomain"):
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


# ---- the checks -------------------------------------------------------------------------------

def check_domain_lists(domains: Sequence[str], postconf: Mapping[str, str],
                       lookup: Optional[TableLookup] = None) -> List[Result]:
    """Every domain must be relayed and flushable, and must not be delivered locally."""
    results = []
    for domain in domains:
        for name in ("relay_domains", "fast_flush_domains"):
            found = domain_list_matches(postconf.get(name, ""), domain,
                                        parent_matches_subdomains(postconf, name), lookup)
            if found:
                results.append(Result(name, OK, f"{domain} is in {name}"))
            else:
                why = "cannot tell (a table could not be queried)" if found is None else "missing"
                results.append(Result(name, FAIL if found is False else WARN,
                                      f"{domain} is not in {name}: {why}",
                                      f"postconf -e '{name} = ...' adding {domain}"
                                      + (" (or fast_flush_domains = $relay_domains)"
                                         if name == "fast_flush_domains" else "")))
        for name in ("mydestination", "virtual_mailbox_domains", "virtual_alias_domains"):
            if domain_list_matches(postconf.get(name, ""), domain,
                                   parent_matches_subdomains(postconf, name), lookup):
                results.append(Result(name, FAIL, f"{domain} is in {name}: Postfix would deliver "
                                      "it here instead of relaying it to the primary",
                                      f"remove {domain} from {name}"))
    missing, tables = unconfigured_relay_names(postconf.get("relay_domains", ""), domains)
    for name in missing:
        results.append(Result("relay_domains", FAIL, f"relay_domains lists {name}, which "
                              "[domains] does not: Postfix relays its mail but backupmx checks "
                              "none of its recipients (backscatter)",
                              f"add {name.lstrip('.')} to [domains] in backupmx.conf, or "
                              "remove it from relay_domains"))
    for table in tables:
        results.append(Result("relay_domains", WARN, f"relay_domains uses the table {table}: "
                              "backupmx cannot tell whether it lists domains [domains] does not",
                              "make sure every relay domain in it is in [domains]"))
    return results


def _find_policy(pairs: Sequence[Tuple[str, str]], wanted: Tuple[str, str], queue_dir: str
                 ) -> Optional[Tuple[int, Dict[str, str]]]:
    for index, (name, argument) in enumerate(pairs):
        if name == "check_policy_service":
            target, options = group_items(argument)
            if socket_key(target, queue_dir) == wanted:
                return index, options
    return None


def _guard_before(pairs: Sequence[Tuple[str, str]], stop: int) -> Tuple[bool, str]:
    """Whether a relay guard comes before position stop, and any unconditional permit first."""
    for name, _ in pairs[:stop]:
        if name in RELAY_GUARDS:
            return True, ""
        if name in ("permit", "permit_auth_destination"):
            return False, name
    return False, ""


def check_policy_service(config: Config, postconf: Mapping[str, str]) -> List[Result]:
    """check_policy_service must name our socket, after the relay guard, with sane options."""
    queue_dir = postconf.get("queue_directory", "")
    wanted = listen_key(config.policyd.listen)
    socket = str(config.policyd.listen)
    relay = restrictions(postconf.get("smtpd_relay_restrictions", ""))
    recipient = restrictions(postconf.get("smtpd_recipient_restrictions", ""))
    relay_guarded, relay_permit = _guard_before(relay, len(relay))
    results: List[Result] = []
    if not relay_guarded and not _guard_before(recipient, len(recipient))[0]:
        results.append(Result("open relay", FAIL, "neither smtpd_relay_restrictions nor "
                              "smtpd_recipient_restrictions has reject_unauth_destination: "
                              "this host is an open relay",
                              "add reject_unauth_destination to smtpd_relay_restrictions"))
    found_in, found = "smtpd_recipient_restrictions", _find_policy(recipient, wanted, queue_dir)
    pairs = recipient
    if found is None:
        found_in, found, pairs = ("smtpd_relay_restrictions",
                                  _find_policy(relay, wanted, queue_dir), relay)
    fix_line = (f"smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination, "
                f"check_policy_service {{ {socket}, timeout=10s }}")
    if found is None:
        results.append(Result("policy service", FAIL, f"no check_policy_service {socket} in "
                              "smtpd_recipient_restrictions or smtpd_relay_restrictions",
                              f"postconf -e '{fix_line}'"))
        return results
    index, options = found
    guarded, permit = _guard_before(pairs, index)
    earlier_relay = found_in == "smtpd_recipient_restrictions" and relay_guarded
    if guarded or (earlier_relay and not relay_permit):
        results.append(Result("policy service", OK, f"check_policy_service {socket} is in "
                              f"{found_in} after reject_unauth_destination"))
    else:
        why = f"after an unconditional {permit}" if permit else "before reject_unauth_destination"
        results.append(Result("policy service", FAIL, f"check_policy_service {socket} comes "
                              f"{why} in {found_in}: relaying is not guarded (open relay risk)",
                              f"postconf -e '{fix_line}'"))
    results.extend(_policy_options(options, postconf, socket))
    return results


def check_restriction_bypass(config: Config, postconf: Mapping[str, str]) -> List[Result]:
    """What may accept relay mail before policyd is asked (rules: backupmx.admin.restrictions)."""
    from backupmx.admin.restrictions import ALL_LISTS, review_restrictions
    queue_dir = postconf.get("queue_directory", "")
    wanted = listen_key(config.policyd.listen)
    rows = review_restrictions(
        {name: restrictions(postconf.get(name, "")) for name in ALL_LISTS},
        postconf.get("smtpd_relay_before_recipient_restrictions", ""),
        lambda argument: socket_key(group_items(argument)[0], queue_dir) == wanted,
        str(config.policyd.listen), split_list(postconf.get("smtpd_restriction_classes", "")))
    return [Result(row.check, row.status, row.message, row.fix) for row in rows]


def _policy_options(options: Mapping[str, str], postconf: Mapping[str, str], socket: str
                    ) -> List[Result]:
    results = []
    timeout_text = options.get("timeout") or postconf.get("smtpd_policy_service_timeout",
                                                          POLICY_TIMEOUT_DEFAULT)
    fix = f"check_policy_service {{ {socket}, timeout=10s }}"
    try:
        timeout = parse_time(timeout_text)
    except ValueError as error:
        results.append(Result("policy timeout", FAIL, str(error), fix))
    else:
        if timeout > POLICY_TIMEOUT_MAX:
            results.append(Result("policy timeout", WARN, f"policy service timeout {timeout_text}:"
                                  f" a hung policyd would stall each RCPT for {timeout * 2:.0f} s",
                                  fix))
        else:
            results.append(Result("policy timeout", OK, f"policy service timeout {timeout_text}"))
    action = options.get("default_action") or postconf.get(
        "smtpd_policy_service_default_action", POLICY_DEFAULT_ACTION_DEFAULT)
    word = action.split()[0].upper() if action.split() else ""
    if word.startswith("4") or word in ("DEFER", "DEFER_IF_PERMIT"):
        results.append(Result("policy default_action", OK,
                              f"with policyd down Postfix answers {action!r} (mail not lost)"))
    elif word == "DUNNO":
        # Unchecked recipients while policyd is down: the primary later bounces the unknown
        # ones to forged senders (backscatter). Postfix's default 451 makes senders retry.
        results.append(Result("policy default_action", FAIL, "with policyd down every recipient "
                              "is accepted unchecked (default_action=DUNNO): unknown ones bounce "
                              "later to forged senders (backscatter)", fix))
    else:
        results.append(Result("policy default_action", FAIL, f"with policyd down Postfix answers "
                              f"{action!r}: mail would be refused for good or let through "
                              "unchecked", fix))
    return results


def check_milter(config: Config, postconf: Mapping[str, str]) -> List[Result]:
    """The milter must be in smtpd_milters, with a default action that keeps mail flowing."""
    wanted = listen_key(config.milter.listen)
    socket = str(config.milter.listen)
    fix = f"postconf -e 'smtpd_milters = {{ {socket}, default_action=accept }}'"
    queue_dir = postconf.get("queue_directory", "")
    for item in split_list(postconf.get("smtpd_milters", "")):
        target, options = group_items(item)
        if socket_key(target, queue_dir) != wanted:
            continue
        action = (options.get("default_action") or postconf.get(
            "milter_default_action", MILTER_DEFAULT_ACTION_DEFAULT)).lower()
        if action == "accept":
            return [Result("milter", OK, f"{socket} is in smtpd_milters, default_action=accept")]
        return [Result("milter", FAIL, f"{socket} is in smtpd_milters with default action "
                       f"{action}: mail stops flowing whenever the milter is down", fix)]
    return [Result("milter", FAIL, f"milter {socket} is not in smtpd_milters: relayed mail "
                   "is not recorded in the ledger", fix)]


def check_queue_lifetime(postconf: Mapping[str, str]) -> List[Result]:
    """Held mail must outlive a long primary outage: warn under 7 days."""
    text = postconf.get("maximal_queue_lifetime", "5d")
    fix = "postconf -e 'maximal_queue_lifetime = 30d' 'bounce_queue_lifetime = 30d'"
    try:
        seconds = parse_time(text, default_unit="d")
    except ValueError as error:
        return [Result("maximal_queue_lifetime", FAIL, str(error), fix)]
    days = seconds / 86400
    if seconds < WEEK:
        return [Result("maximal_queue_lifetime", WARN, f"maximal_queue_lifetime {text} "
                       f"({days:g} days): mail bounces if the primary is down longer", fix)]
    return [Result("maximal_queue_lifetime", OK, f"maximal_queue_lifetime {text} ({days:g} days)")]


def check_flush_service(services: Sequence[str]) -> List[Result]:
    """``postqueue -s DOMAIN`` needs the flush service in master.cf."""
    for line in services:
        fields = line.split()
        if len(fields) >= 8 and fields[0] == "flush" and fields[1] == "unix" and \
                fields[7] == "flush":
            return [Result("flush service", OK, "flush service in master.cf")]
    return [Result("flush service", FAIL, "no flush service in master.cf: per-domain flush "
                   "(postqueue -s) cannot work",
                   "add to master.cf: flush unix n - n 1000? 0 flush")]


@dataclass(frozen=True)
class DomainDns:
    """What DNS says about one relay domain: its MX records and the addresses of hosts."""

    mx: Tuple[Tuple[int, str], ...]  # (preference, exchange) as found
    error: str = ""  # why the MX lookup failed, if it did
    addresses: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)  # host -> IPs


_norm = normalize_domain


def probed_addresses(spec: PrimarySpec, dns: DomainDns) -> Set[str]:
    """The addresses policyd probes for a domain: a fixed host (or its A/AAAA), else lowest MX."""
    addresses = dns.addresses or {}
    if spec.host is None:
        if not dns.mx:
            return set()
        lowest = min(dns.mx)[1]
        return set(addresses.get(_norm(lowest), ()))
    try:
        return {str(ipaddress.ip_address(spec.host))}
    except ValueError:
        return set(addresses.get(_norm(spec.host), ()))


def check_dns(domain: str, spec: PrimarySpec, dns: DomainDns, hostname: str) -> List[Result]:
    """This host must be an MX of the domain, less preferred than the primary policyd probes."""
    name = f"DNS {domain}"
    me = _norm(hostname)
    if dns.error or not dns.mx:
        return [Result(name, FAIL, f"no MX records for {domain}"
                       + (f" ({dns.error})" if dns.error else ""),
                       f"publish {domain}. MX 10 PRIMARY. and {domain}. MX 20 {me}.")]
    if any(not _norm(host) for _, host in dns.mx):
        return [Result(name, FAIL, f"{domain} publishes a null MX (RFC 7505): it accepts no "
                       "mail, so senders never come to a backup MX for it either",
                       f"replace the null MX of {domain} by its primary and {me}")]
    mine = [pref for pref, host in dns.mx if _norm(host) == me]
    others = sorted((pref, _norm(host)) for pref, host in dns.mx if _norm(host) != me)
    listed = ", ".join(f"{pref} {host}" for pref, host in sorted(dns.mx))
    if not mine:
        return [Result(name, FAIL, f"{me} is not an MX of {domain} (MX: {listed})",
                       f"publish {domain}. MX {max(p for p, _ in dns.mx) + 10} {me}.")]
    if not others:
        return [Result(name, FAIL, f"{me} is the only MX of {domain}: it is the primary, not a "
                       "backup", f"publish the primary with a lower preference number than "
                       f"{min(mine)}")]
    primary_pref = others[0][0]
    results = []
    if min(mine) <= primary_pref:
        results.append(Result(name, FAIL, f"{me} has preference {min(mine)}, not higher than the "
                              f"primary's {primary_pref} (MX: {listed}): senders would come here "
                              "first", f"give {me} a preference number above {primary_pref}"))
    else:
        results.append(Result(name, OK, f"{me} is a backup MX of {domain} (MX: {listed})"))
    primaries = [host for pref, host in others if pref == primary_pref]
    addresses = dns.addresses or {}
    published = {ip for host in primaries for ip in addresses.get(host, ())}
    probed = probed_addresses(spec, dns)
    if spec.host is None:
        results.append(Result(f"primary {domain}", OK, f"policyd probes every MX of the lowest "
                              f"preference, {', '.join(primaries)}"))
        results.extend(Result(f"primary {domain}", WARN, f"the primary MX {host} has no address "
                              "in DNS: senders skip it", f"publish an A or AAAA record for {host}")
                       for host in primaries if dns.addresses and not addresses.get(host))
    elif probed & published:
        results.append(Result(f"primary {domain}", OK, f"policyd probes {spec}, an address of "
                              f"the primary MX {', '.join(primaries)}"))
    else:
        results.append(Result(f"primary {domain}", FAIL, f"policyd probes {spec} "
                              f"({', '.join(sorted(probed)) or 'unresolved'}) but the primary MX "
                              f"{', '.join(primaries)} has "
                              f"{', '.join(sorted(published)) or 'no address'}",
                              f"set [domains] {domain} = mx, or the primary's address"))
    return results


def check_notify(config: Config, postconf: Mapping[str, str],
                 lookup: Optional[TableLookup] = None) -> List[Result]:
    """``[notify] mail_to`` must not be in a domain this host relays: the notice would be held
    here with the very mail it reports on. Nothing to say when mail_to is not set."""
    address = config.notify.mail_to
    if not address:
        return []
    domain = normalize_domain(address.rpartition("@")[2])
    relayed = domain in config.domains or domain_list_matches(
        postconf.get("relay_domains", ""), domain,
        parent_matches_subdomains(postconf, "relay_domains"), lookup)
    if relayed:
        return [Result("notify mail_to", FAIL,
                       f"{address} is in {domain}, a relay domain of this host: while its "
                       f"primary is down the notice would be held here too",
                       "[notify] mail_to = an address in a domain this host does not relay")]
    if relayed is None:
        return [Result("notify mail_to", WARN, f"cannot tell whether {domain} is in "
                       "relay_domains (a table could not be queried)")]
    return [Result("notify mail_to", OK, f"{address} is not in a relay domain of this host")]


def check_maps(config: Config, load: Callable[[Config], "LoadedMaps"]) -> List[Result]:
    """Recipient maps and the allowlist must parse; say which domains no map covers."""
    from backupmx.common.recipient_map import MapError
    try:
        maps = load(config)
    except MapError as error:
        return [Result("maps", FAIL, f"a map does not parse: {error}",
                       "fix the named line; policyd keeps its last good map until then")]
    recipients = maps.recipients
    results = [Result("maps", OK, f"{len(recipients)} recipient keys from "
                      f"{', '.join(config.policyd.recipients)}"
                      + (", sender networks parse" if config.policyd.sender_networks else ""))]
    for warning in getattr(maps, "warnings", ()):
        results.append(Result("maps", WARN, warning, "edit the named file as the warning says"))
    verified = {d for s in config.sources if s.type == "callout" for d in s.domains}
    for domain in config.domains:
        if not recipients.covers(domain) and domain not in verified:
            results.append(Result("maps", WARN, f"no recipient map covers {domain}: every "
                                  "recipient of it is accepted and may bounce later",
                                  f"add user@{domain} lines (or @{domain}) to a recipients file"))
    return results
