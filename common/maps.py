"""Loading the files policyd decides from: recipient maps and the sender networks allowlist.

All functions here block on disk (and on ``postconf`` for the recipient delimiter and the relay
domains): the daemon
calls them at start, before listening, and afterwards only from a worker thread.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from backupmx.common.config import Config
from backupmx.common.decision import Policy
from backupmx.common.postfix import Postfix, PostfixError
from backupmx.common.recipient_map import RecipientMap, load_recipient_map
from backupmx.common.recipient_sources import (
    callout_domains,
    file_paths,
    freshness,
    read_states,
    recipient_paths,
    snapshot_paths,
)
from backupmx.common.relay_scope import PARAMETERS, RelayScope
from backupmx.common.sender_networks import SenderNetworks, load_sender_networks
from backupmx.common.snapshots import SourceState

Signature = Tuple[Tuple[str, object], ...]


@dataclass(frozen=True)
class LoadedMaps:
    """The parsed files and the signature (mtime, size, inode) they were read at.

    ``warnings``: one line each about the files (a dropped byte-order mark, keys that do not
    match what they seem to name), for the caller to log once per load.
    """

    recipients: RecipientMap
    networks: Optional[SenderNetworks]
    signature: Signature
    delimiter_warning: str = ""
    warnings: Tuple[str, ...] = ()
    scope: Optional[RelayScope] = None  # None: only exact [domains] names are judged
    #: configured domain -> until when its recipients are fresh (common.recipient_sources)
    fresh_until: Mapping[str, float] = field(default_factory=dict)
    #: each snapshot source's state as read with the maps
    states: Mapping[str, SourceState] = field(default_factory=dict)


def map_paths(config: Config) -> Tuple[str, ...]:
    """Every file a map reload reads: the recipient files and source snapshots (existing or
    not yet), the sender networks, and Postfix's main.cf (its relay_domains and
    recipient_delimiter), so that an edit of any is picked up the same way."""
    networks = config.policyd.sender_networks
    main_cf = os.path.join(Postfix.from_setting(config.postfix.config_directory).directory(),
                           "main.cf")
    return (file_paths(config) + snapshot_paths(config) + ((networks,) if networks else ())
            + (main_cf,))


def current_freshness(config: Config, recipients: RecipientMap
                      ) -> Tuple[Dict[str, float], Dict[str, SourceState]]:
    """(domain -> fresh until, source states) read now: the cheap part of a map check, re-read
    on every check so that a source's sync or staleness changes the policy without a reload
    of the (large) map."""
    states = read_states(config)
    return freshness(config, states, recipients.source_domains), states


def file_signature(paths: Tuple[str, ...]) -> Signature:
    """What changes when a file is rewritten, replaced or removed; cheap to compare."""
    signature: List[Tuple[str, object]] = []
    for path in paths:
        try:
            stat = os.stat(path)
            signature.append((path, (stat.st_mtime_ns, stat.st_size, stat.st_ino)))
        except OSError as error:
            signature.append((path, error.strerror))
    return tuple(signature)


def recipient_delimiter(config: Config) -> Tuple[str, str]:
    """The delimiter set to use and a warning (empty if none): configured, else Postfix's."""
    configured = config.policyd.recipient_delimiter
    if configured is not None:
        return configured, ""
    try:
        return Postfix.from_setting(config.postfix.config_directory).parameter(
            "recipient_delimiter"), ""
    except (PostfixError, KeyError) as error:
        return "", f"cannot read Postfix's recipient_delimiter ({error}); using none"


def relay_scope(config: Config) -> Tuple[RelayScope, str]:
    """The RelayScope of the configured domains from Postfix's own settings, and a warning
    (empty if none). Postfix unreadable: a scope judging exact [domains] names only."""
    configured = frozenset(config.domains)
    try:
        postconf = Postfix.from_setting(config.postfix.config_directory).postconf(
            *PARAMETERS, expand=True)
    except PostfixError as error:
        return RelayScope(configured), (
            f"cannot read Postfix's relay_domains ({error}): only the names in [domains] are "
            "judged, not their subdomains")
    return RelayScope(configured, postconf), ""


def load_maps(config: Config, delimiter: Optional[str] = None,
              pause: Optional[Callable[[], None]] = None) -> LoadedMaps:
    """Read every map the configuration names. Raises MapError naming the file and line.

    ``pause``: see load_recipient_map (reloads in a worker thread pass one).
    """
    signature = file_signature(map_paths(config))
    warning = ""
    if delimiter is None:
        delimiter, warning = recipient_delimiter(config)
    recipients = load_recipient_map(recipient_paths(config), delimiter, pause)
    fresh, states = current_freshness(config, recipients)
    networks_path = config.policyd.sender_networks
    networks = load_sender_networks(networks_path) if networks_path else None
    scope, scope_warning = relay_scope(config)
    warnings = recipients.warnings + (networks.warnings if networks is not None else ()) + (
        (scope_warning,) if scope_warning else ())
    return LoadedMaps(recipients, networks, signature, warning, warnings, scope, fresh, states)


def load_recipients(config: Config, delimiter: str = "") -> Tuple[RecipientMap, Dict[str, float]]:
    """The merged recipient map (files and snapshots) and each domain's freshness, without
    Postfix's relay scope or the sender networks: what the recipient table is written from."""
    recipients = load_recipient_map(recipient_paths(config), delimiter)
    fresh, _ = current_freshness(config, recipients)
    return recipients, fresh


def build_policy(config: Config, maps: LoadedMaps) -> Policy:
    """The decision's view of a configuration and its loaded maps (policyd's, and the one
    ``backupmx query`` answers from)."""
    return Policy(
        domains=frozenset(config.domains),
        recipients=maps.recipients,
        networks=maps.networks,
        primary_up_action=config.policyd.primary_up_action,
        scope=maps.scope,
        fresh_until=dict(maps.fresh_until),
        callout_domains=frozenset(callout_domains(config)),
    )
