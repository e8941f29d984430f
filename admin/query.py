"""``backupmx query ADDRESS [--client IP] [--sender S] [--no-probe]``: what policyd would answer
now for a RCPT of ADDRESS, and why (the admin's ``postmap -q``).

It loads the same maps and snapshots policyd loads (common.maps), probes the domain's primary
now with policyd's own probe (unless ``--no-probe``: primary unknown), and runs the same pure
decision (common.decision.decide). Output: the action, then ``outcome``, ``domain``, ``reason``
and the domain's recipient freshness; for a domain with a ``callout`` source also the cached
callout result of the address and its age (``callout``); ``--json`` prints them as one
object. Exit 0 when the
answer could be worked out, 2 for a map that cannot be loaded.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict

from backupmx.admin.callouts import StoredVerdicts, cached_verdict
from backupmx.admin.context import CommandContext
from backupmx.admin.primaries import not_probed
from backupmx.common.addresses import split_address
from backupmx.common.cli import EXIT_CONFIG, EXIT_OK
from backupmx.common.config import Config
from backupmx.common.decision import decide
from backupmx.common.maps import build_policy, load_maps
from backupmx.common.primary_state import PrimaryState
from backupmx.common.recipient_map import MapError


def add_arguments(subparsers: Any) -> None:
    parser = subparsers.add_parser("query", help="what policyd would answer now for a "
                                   "recipient, and why")
    parser.add_argument("address", help="the recipient address")
    parser.add_argument("--client", default="192.0.2.1",
                        help="client IP address (default 192.0.2.1, on no allowlist)")
    parser.add_argument("--sender", default="", help="envelope sender (default: <>)")
    parser.add_argument("--no-probe", action="store_true",
                        help="do not probe the primary (its state counts as unknown)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(run=run)


class _States:
    def __init__(self, states: Dict[str, PrimaryState]) -> None:
        self.states = states

    def state(self, domain: str, now: float) -> PrimaryState:
        return self.states.get(domain) or PrimaryState("unknown", "")


def run(args: argparse.Namespace, config: Config) -> int:
    context = CommandContext.from_config(config)
    try:
        maps = load_maps(config)
    except MapError as error:
        context.warn(str(error))
        return EXIT_CONFIG
    policy = build_policy(config, maps)
    now = context.clock()
    request = {"request": "smtpd_access_policy", "protocol_state": "RCPT",
               "recipient": args.address, "sender": args.sender,
               "client_address": args.client}
    _, domain = split_address(args.address)
    owner = domain if domain in config.domains else (
        maps.scope.owner(domain) if maps.scope is not None else None)
    states: Dict[str, PrimaryState] = {}
    if owner is not None:
        chosen = {owner: config.domains[owner]}
        prober = not_probed if args.no_probe else context.probe
        states = prober(chosen, context.probe_timeout)
    verdicts = StoredVerdicts(config, context.clock)
    decision = decide(request, policy, _States(states), now, verdicts)
    callout = cached_verdict(config, owner, args.address, now)
    deadline = policy.fresh_until.get(owner or "")
    freshness = ("no source" if deadline is None else
                 "fresh" if deadline > now else "stale")
    result = {"address": args.address, "action": decision.action, "outcome": decision.outcome,
              "domain": decision.domain, "reason": decision.reason,
              "recipients": freshness,
              "primary": states[owner].status if owner in states else None,
              "callout": callout}
    if args.json:
        json.dump(result, context.out)
        print(file=context.out)
        return EXIT_OK
    print(decision.action, file=context.out)
    for key in ("outcome", "domain", "reason", "recipients", "primary"):
        if result[key] not in (None, ""):
            print(f"  {key}: {result[key]}", file=context.out)
    if callout is not None:
        print(f"  callout: {_callout_text(callout)}", file=context.out)
    return EXIT_OK


def _callout_text(callout: Dict[str, Any]) -> str:
    if callout.get("error"):
        return f"the cache cannot be read ({callout['error']})"
    if callout["accept_all"]:
        return "off (the primary accepts every address)"
    if callout["status"] is None:
        return "no cached result"
    age = int(callout["age"])
    state = callout["verdict"] if callout["verdict"] != "unverified" else "expired"
    return f"{callout['status']}, {state}, verified {age} s ago ({callout['reply']})"
