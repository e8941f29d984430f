"""The policy decision: a pure function of (request, policy, primary states, now).

No I/O and no Twisted here, so every branch is unit tested with plain data. The order follows the
backup-MX logic: a domain not ours is none of our business (DUNNO); a recipient absent from a
loaded map that covers its domain is definitely unknown (5xx) while the domain's recipients are
fresh, and not verified (4xx) once they are stale (no source synced them within its
stale_after: the user may be new); a sender network on the allowlist
skips the primary check; a primary known to be up gets the client sent there (4xx by default);
anything else is accepted, because a backup MX exists for the day the checks cannot be made.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import FrozenSet, Mapping, NamedTuple, Optional, Protocol

from backupmx.common.addresses import split_address
from backupmx.common.recipient_map import RecipientMap
from backupmx.common.relay_scope import RelayScope
from backupmx.common.sender_networks import SenderNetworks
from backupmx.common.smtp_probe import DOWN, UNKNOWN, PrimaryState

DUNNO = "DUNNO"
UNKNOWN_USER = "550 5.1.1 User unknown in relay recipient table"
NOT_VERIFIED = "450 4.1.1 Recipient not verified; try later"
ROUTING_REFUSED = "550 5.7.1 Source routing and % or ! addressing are not relayed"


class PrimaryStates(Protocol):
    """Where the decision reads primary states: policyd.primary_monitor.PrimaryMonitor."""

    def state(self, domain: str, now: float) -> PrimaryState: ...


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


class Decision(NamedTuple):
    """The action for Postfix plus why, for logs and metrics.

    An immutable NamedTuple rather than a frozen dataclass: one is built per request, and a
    frozen dataclass's __init__ (object.__setattr__ per field) costs three times as much.
    """

    action: str
    outcome: str  # short machine-readable word: see the OUTCOMES tuple
    domain: Optional[str] = None
    reason: str = ""

    @property
    def intervenes(self) -> bool:
        """True for a refusal or a deferral (anything but DUNNO): what gets logged."""
        return self.action != DUNNO


OUTCOMES = (
    "other_state", "not_ours", "unknown_user", "not_verified", "routing", "unmapped_domain",
    "allowlisted",
    "primary_up_defer", "primary_up_reject", "primary_up_ignored", "primary_down",
    "primary_unknown",
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
) -> Decision:
    """Decide one policy request. Only RCPT-time requests for our domains are judged: a name
    in ``policy.domains``, or a subdomain Postfix relays for one (``policy.scope``); the
    decision's ``domain`` is then the configured domain it falls under."""
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
        deadline = policy.fresh_until.get(owner)
        if deadline is not None and deadline <= now:
            return Decision(NOT_VERIFIED, "not_verified", owner,
                            "not in the recipient map, whose sources are stale")
        if not covered:
            return Decision(DUNNO, "unmapped_domain", owner,
                            "no recipient map covers the domain")
        return Decision(UNKNOWN_USER, "unknown_user", owner, "not in the recipient map")
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
