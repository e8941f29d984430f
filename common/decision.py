"""The policy decision: a pure function of (request, policy, primary states, now).

No I/O and no Twisted here, so every branch is unit tested with plain data. The order follows the
backup-MX logic: a domain not ours is none of our business (DUNNO); a recipient absent from a
loaded map that covers its domain is definitely unknown (5xx) while the domain's recipients are
fresh, and not verified (4xx) once they are stale (no source synced them within its
stale_after: the user may be new); a sender network on the allowlist
skips the primary check; a primary known to be up gets the client sent there (4xx by default);
anything else is accepted, because a backup MX exists for the day the checks cannot be made.

Recipient callouts (a ``callout`` source for the domain, ``policy.callout_domains``, and the
cached verdicts passed as ``callouts``): a recipient absent from the map is judged by what its
primary MX said of it. A positive verdict counts as found in the map. Otherwise, while the
primary is known up, the answer is the usual one (the client is sent to the primary) and the
decision asks for a callout (``Decision.verify``), which the caller makes in the background;
with the primary down or unknown, a negative verdict gets 550 5.1.1 and no verdict 450 4.1.1
(never accept what cannot be verified: no backscatter). A domain whose primary accepts every
address (``callouts.verdict`` gives None) is judged as if it had no callout source.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import FrozenSet, Mapping, NamedTuple, Optional, Protocol

from backupmx.common.addresses import split_address
from backupmx.common.callout_rules import NEGATIVE, POSITIVE, Verdict
from backupmx.common.primary_state import DOWN, UNKNOWN, UP, PrimaryState
from backupmx.common.recipient_map import RecipientMap
from backupmx.common.relay_scope import RelayScope
from backupmx.common.sender_networks import SenderNetworks

DUNNO = "DUNNO"
UNKNOWN_USER = "550 5.1.1 User unknown in relay recipient table"
NOT_VERIFIED = "450 4.1.1 Recipient not verified; try later"
CALLOUT_REFUSED = "550 5.1.1 User unknown (the primary MX refused this recipient)"
CALLOUT_NOT_VERIFIED = "450 4.1.1 Recipient not verified with the primary MX; try later"
ROUTING_REFUSED = "550 5.7.1 Source routing and % or ! addressing are not relayed"


class PrimaryStates(Protocol):
    """Where the decision reads primary states: policyd.primary_monitor.PrimaryMonitor."""

    def state(self, domain: str, now: float) -> PrimaryState: ...


class CalloutVerdicts(Protocol):
    """Where the decision reads recipient callout results: policyd.callouts.CalloutEngine
    (or, for ``backupmx query``, the stored cache)."""

    def verdict(self, domain: str, address: str, now: float) -> Optional[Verdict]:
        """The cached verdict of ``address`` (lower-case) of configured ``domain``; None when
        callouts are off for the domain (its primary accepts every address)."""
        ...


@dataclass(frozen=True)
class Policy:
    """Everything the decision needs from configuration and maps, swapped atomically on reload."""

    domains: FrozenSet[str]
    recipients: Optional[RecipientMap]  # None: no map loaded (yet)
    networks: Optional[SenderNetworks]
    primary_up_action: str = "defer"  # defer | reject | ignore
    scope: Optional[RelayScope] = None  # subdomains Postfix relays for a configured domain
    #: configured domain -> Unix time until which its recipients are fresh
    #: (common.recipient_sources.freshness); a domain absent here has no source and never
    #: goes stale. A recipient not found in a stale domain gets NOT_VERIFIED, not 5xx.
    fresh_until: Mapping[str, float] = field(default_factory=dict)
    #: configured domains a ``callout`` source speaks for
    callout_domains: FrozenSet[str] = frozenset()


class Decision(NamedTuple):
    """The action for Postfix plus why, for logs and metrics.

    An immutable NamedTuple rather than a frozen dataclass: one is built per request, and a
    frozen dataclass's __init__ (object.__setattr__ per field) costs three times as much.
    """

    action: str
    outcome: str  # short machine-readable word: see the OUTCOMES tuple
    domain: Optional[str] = None
    reason: str = ""
    #: an address to verify with a callout in the background (None: none)
    verify: Optional[str] = None

    @property
    def intervenes(self) -> bool:
        """True for a refusal or a deferral (anything but DUNNO): what gets logged."""
        return self.action != DUNNO


OUTCOMES = (
    "other_state", "not_ours", "unknown_user", "not_verified", "routing", "unmapped_domain",
    "allowlisted",
    "primary_up_defer", "primary_up_reject", "primary_up_ignored", "primary_down",
    "primary_unknown", "callout_refused", "callout_not_verified",
)


def _has_routing(local: str) -> bool:
    # three substring tests, not any() over a generator: this runs for most requests
    return "@" in local or "%" in local or "!" in local


def primary_action(kind: str, host: str) -> str:
    """The reply when the primary is up, per primary_up_action."""
    text = f"Primary MX {host} is up; deliver there"
    if kind == "reject":
        return f"550 5.7.1 {text}"
    return f"DEFER_IF_PERMIT 4.7.1 {text}"


def decide(
    request: Mapping[str, str],
    policy: Policy,
    primaries: PrimaryStates,
    now: float,
    callouts: Optional[CalloutVerdicts] = None,
) -> Decision:
    """Decide one policy request. Only RCPT-time requests for our domains are judged: a name
    in ``policy.domains``, or a subdomain Postfix relays for one (``policy.scope``); the
    decision's ``domain`` is then the configured domain it falls under. ``callouts``: the
    recipient callout verdicts (see the module docstring); None: no callouts."""
    if request.get("protocol_state", "").upper() != "RCPT":
        return Decision(DUNNO, "other_state")
    local, domain = split_address(request.get("recipient", ""))
    owner = domain
    if domain not in policy.domains:
        # a subdomain Postfix relays for one of ours is judged as that domain (its map, its
        # primary): answering "not ours" would let unknown users in, and bounce later
        scope = policy.scope
        found = scope.owner(domain) if scope is not None else None
        if found is None:
            return Decision(DUNNO, "not_ours", domain)
        owner = found
    if _has_routing(local):
        return Decision(ROUTING_REFUSED, "routing", owner, "routing characters in local part")
    recipients = policy.recipients
    covered = recipients is not None and (recipients.covers(owner) or recipients.covers(domain))
    if not covered or not recipients.accepts(local, domain):  # type: ignore[union-attr]
        if callouts is not None and owner in policy.callout_domains:
            address = f"{local}@{domain}".lower()
            verdict = callouts.verdict(owner, address, now)
            if verdict is not None:
                if verdict.status != POSITIVE:
                    return _unverified(request, policy, primaries, now, owner, address,
                                       verdict)
                decision = _known(request, policy, primaries, now, owner)
                if verdict.refresh and decision.outcome.startswith("primary_up"):
                    return decision._replace(verify=address)
                return decision
        deadline = policy.fresh_until.get(owner)
        if deadline is not None and deadline <= now:
            return Decision(NOT_VERIFIED, "not_verified", owner,
                            "not in the recipient map, whose sources are stale")
        if not covered:
            return Decision(DUNNO, "unmapped_domain", owner,
                            "no recipient map covers the domain")
        return Decision(UNKNOWN_USER, "unknown_user", owner, "not in the recipient map")
    return _known(request, policy, primaries, now, owner)


def _unverified(request: Mapping[str, str], policy: Policy, primaries: PrimaryStates,
                now: float, owner: str, address: str, verdict: Verdict) -> Decision:
    """A recipient of a callout domain that is neither in the map nor known valid."""
    state = primaries.state(owner, now)
    if state.status == UP:
        kind = policy.primary_up_action
        verify = address if verdict.refresh else None
        if kind != "ignore":
            return Decision(primary_action(kind, state.host), f"primary_up_{kind}", owner,
                            f"primary {state.host} up; recipient not verified yet", verify)
        return Decision(CALLOUT_NOT_VERIFIED, "callout_not_verified", owner,
                        f"primary {state.host} up; recipient not verified yet", verify)
    if verdict.status == NEGATIVE:
        return Decision(CALLOUT_REFUSED, "callout_refused", owner,
                        f"the primary refused it {int(verdict.age or 0)} s ago")
    return Decision(CALLOUT_NOT_VERIFIED, "callout_not_verified", owner,
                    f"primary {state.status}; no callout result for the recipient")


def _known(request: Mapping[str, str], policy: Policy, primaries: PrimaryStates, now: float,
           owner: str) -> Decision:
    """A recipient known valid: the allowlist, then the primary's state."""
    networks = policy.networks
    if networks is not None and networks.allows(
        request.get("sender", ""), request.get("client_address", "")
    ):
        return Decision(DUNNO, "allowlisted", owner, "client network allowed for sender")
    state = primaries.state(owner, now)
    status = state.status
    if status == UNKNOWN:
        return Decision(DUNNO, "primary_unknown", owner, "primary state unknown")
    if status == DOWN:
        return Decision(DUNNO, "primary_down", owner, f"primary {state.host} down")
    kind = policy.primary_up_action
    if kind == "ignore":
        return Decision(DUNNO, "primary_up_ignored", owner, f"primary {state.host} up")
    return Decision(
        primary_action(kind, state.host), f"primary_up_{kind}", owner, f"primary {state.host} up"
    )
