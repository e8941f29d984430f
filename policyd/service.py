"""policyd's running state: the current policy, the responder, and reloads.

``PolicyService.respond`` is the request path: one ``decide`` call on the current policy and the
primary monitor's states, one log line when the answer is not a plain accept. Reloads (SIGHUP, or
a map file that changed and then stayed the same for one check interval) are built entirely in a
worker thread and swapped in with one assignment; a failed reload logs why and keeps the last good
state, and so does an automatic one that would cut a domain's keys by more than ``max_shrink``.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import (
    AbstractSet,
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Set,
    Tuple,
)

from twisted.internet import threads
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from backupmx.common.config import Config, ConfigError, load_config
from backupmx.common.decision import Decision, decide
from backupmx.common.maps import (
    LoadedMaps,
    Signature,
    build_policy,
    current_freshness,
    file_signature,
    load_maps,
    map_paths,
    recipient_delimiter,
)
from backupmx.common.recipient_map import MapError, RecipientMap, release_in_steps
from backupmx.common.recipient_sources import snapshot_paths
from backupmx.common.source_rules import loses_too_much
from backupmx.policyd.codec import Request
from backupmx.policyd.decision_log import DecisionLog
from backupmx.policyd.primary_monitor import PrimaryMonitor

DecisionObserver = Callable[[Request, Decision], None]
ConfigListener = Callable[[Config], None]

#: [policyd] settings a running policyd cannot change: a reload names them when they changed
RESTART_SETTINGS = ("listen", "metrics", "user")


def settings_needing_restart(old: Config, new: Config) -> List[str]:
    """The ``[policyd]`` settings in RESTART_SETTINGS whose value differs between two configs."""
    return [name for name in RESTART_SETTINGS
            if getattr(old.policyd, name) != getattr(new.policyd, name)]


def stale_domains(fresh_until: Mapping[str, float], now: float) -> FrozenSet[str]:
    """The domains whose recipients are stale at ``now``."""
    return frozenset(d for d, deadline in fresh_until.items() if deadline <= now)


#: how long a reload in a worker thread sleeps at each pause (see load_recipient_map)
RELOAD_PAUSE_SECONDS = 0.001


def yield_to_reactor() -> None:
    """Sleep briefly, releasing the GIL, so the reactor thread runs during a long map load."""
    time.sleep(RELOAD_PAUSE_SECONDS)


def lost_domains(old: RecipientMap, new: RecipientMap, domains: Iterable[str]) -> List[str]:
    """Configured domains the old recipient map covered and the new one says nothing about.

    A map file caught half-written or truncated to nothing would otherwise switch those domains
    to "no map: accept every recipient" without a word.
    """
    return sorted(d for d in domains if old.covers(d) and not new.covers(d))


def _under(domain: str, configured: Iterable[str]) -> bool:
    return any(domain == parent or domain.endswith("." + parent) for parent in configured)


@dataclass(frozen=True)
class Shrink:
    """One domain whose keys a new map would cut by more than ``[policyd] max_shrink``.

    ``before`` is None when the old map had an ``@domain`` catch-all (every address valid).
    """

    domain: str
    before: Optional[int]
    after: int

    def __str__(self) -> str:
        before = f"@{self.domain} (every address)" if self.before is None else str(self.before)
        return f"{self.domain} {before} -> {self.after} keys"


def only_changed(old: Signature, new: Signature, paths: Iterable[str]) -> bool:
    """True when every file whose signature differs is one of ``paths``. Recipient sources
    write their snapshots whole and rename them into place, so such a change needs no wait."""
    allowed = frozenset(paths)
    before = dict(old)
    return all(path in allowed for path, stat in new if before.get(path) != stat) \
        and len(old) == len(new)


def snapshot_domains(recipients: RecipientMap, snapshots: Iterable[str]) -> FrozenSet[str]:
    """The domains some recipient source's snapshot file has keys for, in this map."""
    paths = frozenset(snapshots)
    return frozenset(domain for path, domains in recipients.source_domains if path in paths
                     for domain in domains)


def shrunk_domains(old: RecipientMap, new: RecipientMap, domains: Iterable[str],
                   max_shrink: float, exempt: AbstractSet[str] = frozenset()) -> List[Shrink]:
    """Domains (configured ones and their subdomains) whose valid addresses would drop by more
    than ``max_shrink`` (a fraction, 0 to 1; 1 never refuses; the rule is
    common.source_rules.loses_too_much). A map file being rewritten in place (truncated, then
    written again) looks like this while it is read half-way.

    Addresses are counted as keys; a new ``@domain`` catch-all never shrinks anything, and the
    loss of an old one counts as losing every address (it accepted them all). ``exempt``: the
    domains fed by a recipient source's snapshot, which its sync already judged with the
    source's own ``max_shrink`` and writes whole (renamed into place), never half-way.
    """
    if max_shrink >= 1:
        return []
    configured = tuple(domains)
    found = []
    for domain in sorted(old.domains()):
        if not _under(domain, configured) or domain in new.catch_all or domain in exempt:
            continue
        after = new.count(domain)
        if domain in old.catch_all:
            found.append(Shrink(domain, None, after))
            continue
        before = old.count(domain)
        if loses_too_much(before, after, max_shrink):
            found.append(Shrink(domain, before, after))
    return found


class PolicyService:
    """Answers policy requests from the current policy; reloads it without blocking."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        config: Config,
        maps: LoadedMaps,
        primaries: PrimaryMonitor,
        run_in_thread: Callable[..., Deferred] = threads.deferToThread,
    ) -> None:
        self.log_decision = DecisionLog(self.log)
        #: starts the recipient source syncs (policyd.recipient_sync.SyncScheduler), if any
        self.scheduler: Optional[Any] = None
        self.reactor = reactor
        self.primaries = primaries
        self.run_in_thread = run_in_thread
        self.observers: List[DecisionObserver] = []
        #: called with the new configuration after each applied SIGHUP reload (the protocol
        #: factory takes its connection limits from it)
        self.reconfigured: List[ConfigListener] = []
        self._reloading: Optional[Deferred] = None
        self._reload_again = False
        self._map_check: Optional[LoopingCall] = None
        self._failed_signature: Optional[Signature] = None
        # the signature the last map check saw, not loaded yet: a file is loaded once two
        # checks in a row see the same signature (it has stopped changing)
        self._pending_signature: Optional[Signature] = None
        #: the domains whose shrink held back the last changed map (empty: none held back)
        self.held_back: Tuple[Shrink, ...] = ()
        #: recipient callouts (policyd.callouts.CalloutEngine), when a callout source exists
        self.callouts: Optional[Any] = None
        #: a reload is starting the callouts (policyd.callout_start.configure)
        self.starting_callouts = False
        # (succeeded, when) of the last reload attempt, for metrics; start counts as one.
        self.last_reload: Tuple[bool, float] = (True, reactor.seconds())
        self._install(config, maps)

    # ---- request path ----------------------------------------------------------------------

    def respond(self, request: Request) -> str:
        now = self.reactor.seconds()
        callouts = self.callouts
        decision = decide(request, self.policy, self.primaries, now, callouts)
        if decision.verify is not None and callouts is not None and decision.domain:
            # after deciding, never waiting: request() only queues the callout
            callouts.request(decision.domain, decision.verify,
                             request.get("client_address", ""), now)
        if decision.intervenes:
            self.log_decision(request, decision)
        elif decision.outcome == "unmapped_domain":
            self._warn_unmapped(decision.domain or "")
        elif self.log_accepts:
            self.log_decision(request, decision)
        for observer in self.observers:
            observer(request, decision)
        return decision.action

    def _warn_unmapped(self, domain: str) -> None:
        if domain not in self._warned_unmapped:
            self._warned_unmapped.add(domain)
            self.log.warn("no recipient map covers {domain}: accepting every recipient of it "
                          "(add user@{domain} or @{domain} lines to a recipients file)",
                          domain=domain)

    # ---- state -----------------------------------------------------------------------------

    def _install(self, config: Config, maps: LoadedMaps) -> None:
        replaced = self._replaced_map_sets(maps)
        self.config = config
        self.maps = maps
        self.log_accepts = config.policyd.log_accepts
        self._warned_unmapped: Set[str] = set()
        self.policy = build_policy(config, maps)
        self.source_states = dict(maps.states)
        self._note_staleness()
        if self.scheduler is not None:
            self.scheduler.refresh_table()
        if replaced:
            # The old map and policy are gone now; the sets live on only in `replaced`. A
            # thread of its own: nothing waits for it, and reloads keep their single job.
            threading.Thread(target=release_in_steps, args=(replaced, yield_to_reactor),
                             name="release replaced map", daemon=True).start()
        if maps.delimiter_warning:
            self.log.warn("{warning}", warning=maps.delimiter_warning)
        for warning in maps.warnings:
            self.log.warn("{warning}", warning=warning)

    def _replaced_map_sets(self, maps: LoadedMaps) -> Dict[str, Any]:
        """The per-domain sets of the map being replaced, to be freed off the reactor thread.

        Freeing a 1,000,000-address map takes about 60 ms of the GIL; if the swap dropped the
        last reference, the reactor thread would do it all at once, stalling every connection.
        """
        current = getattr(self, "maps", None)  # None on the first install
        if current is None or current.recipients is maps.recipients:
            return {}
        return dict(current.recipients.users)

    def last_attempts(self) -> Dict[str, Optional[float]]:
        return {name: state.last_attempt for name, state in self.source_states.items()}

    def start(self) -> None:
        self.primaries.start()
        if self.callouts is not None:
            self.callouts.start()
        if self.scheduler is not None:
            self.scheduler.start(self.last_attempts())
        self._start_map_check()

    def _start_map_check(self) -> None:
        self._map_check = LoopingCall(self.check_maps)
        self._map_check.clock = self.reactor
        self._map_check.start(self.config.policyd.map_check_interval, now=False)

    def stop(self) -> None:
        self.primaries.stop()
        if self.callouts is not None:
            self.callouts.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
        if self._map_check is not None and self._map_check.running:
            self._map_check.stop()

    # ---- reloads ---------------------------------------------------------------------------

    def reload(self) -> Deferred:
        """Re-read configuration and maps (SIGHUP). Overlapping calls merge into one more run."""
        if self._reloading is not None:
            self._reload_again = True
            return self._reloading
        # A local name: a load that completes at once has already cleared self._reloading.
        reloading = self._reloading = self.run_in_thread(self._load_all, self.config.path)
        reloading.addCallbacks(self._apply_reload, self._reload_failed)
        reloading.addBoth(self._reload_done)
        return reloading

    def reload_and_report(self) -> Deferred:
        """Reload as on SIGHUP; a Deferred firing with True once a reload begun after this call
        is applied, False when that reload failed (the running configuration is kept).

        Unlike reload(), whose Deferred may be that of a run already under way (which read the
        files before the caller changed them), this one waits for the run queued after it.
        """
        busy = self._reloading
        started = self.reload()
        outcome: Deferred = Deferred()

        def report(result: Any) -> Any:
            outcome.callback(not isinstance(result, Failure) and self.last_reload[0])
            return result

        def after_busy(result: Any) -> Any:
            rerun = self._reloading  # queued by reload() above, started by _reload_done
            if rerun is None:  # it already finished
                outcome.callback(self.last_reload[0])
            else:
                rerun.addBoth(report)
            return result

        if busy is None:
            started.addBoth(report)
        else:
            busy.addBoth(after_busy)
        return outcome

    @staticmethod
    def _load_all(path: str) -> Tuple[Config, LoadedMaps]:
        config = load_config(path)
        return config, load_maps(config, pause=yield_to_reactor)

    def _apply_reload(self, loaded: Tuple[Config, LoadedMaps]) -> None:
        config, maps = loaded
        old = self.config
        restart = settings_needing_restart(old, config)
        if restart:
            self.log.warn("reload: {names} changed; restart policyd to use the new "
                          "{values} (running with the old until then)",
                          names=", ".join(f"[policyd] {name}" for name in restart),
                          values="value" if len(restart) == 1 else "values")
        lost = lost_domains(self.maps.recipients, maps.recipients, config.domains)
        if lost:
            self.log.warn("reload: no recipient map lists {lost} any more: every recipient of "
                          "it is accepted from now on", lost=", ".join(lost))
        shrunk = shrunk_domains(self.maps.recipients, maps.recipients, config.domains,
                                config.policyd.max_shrink, self._sourced(config, maps))
        if shrunk:
            self.log.warn("reload: the recipient maps cut {shrunk} (more than max_shrink): "
                          "applied, as a reload asks", shrunk=", ".join(map(str, shrunk)))
        self.primaries.configure(config.domains, config.policyd.probe_interval,
                                 config.policyd.probe_timeout,
                                 up_after=config.policyd.primary_up_after,
                                 down_after=config.policyd.primary_down_after,
                                 interval_down=config.policyd.probe_interval_down)
        self.primaries.probe_all()
        self._install(config, maps)
        if self.scheduler is not None:
            self.scheduler.configure(config, self.last_attempts())
        self._configure_callouts(config)
        self._failed_signature = self._pending_signature = None
        self.held_back = ()
        if (config.policyd.map_check_interval != old.policyd.map_check_interval
                and self._map_check is not None and self._map_check.running):
            self._map_check.stop()
            self._start_map_check()
        for listener in self.reconfigured:
            listener(config)
        self.last_reload = (True, self.reactor.seconds())
        self.log.info("reloaded {path}: {domains} domains, {count} recipient keys",
                      path=config.path, domains=len(config.domains), count=len(maps.recipients))

    def _configure_callouts(self, config: Config) -> None:
        from backupmx.policyd.callout_start import configure
        configure(self, config)

    def close_callouts(self) -> None:
        """At shutdown: write what the callout engine still has queued and close its file."""
        if self.callouts is not None:
            self.callouts.writer.close()

    def _reload_failed(self, failure: Any) -> None:
        failure.trap(ConfigError, MapError)
        self.last_reload = (False, self.reactor.seconds())
        self.log.error("reload failed, keeping the running configuration: {why}",
                       why=failure.getErrorMessage())

    def _reload_done(self, result: Any) -> Any:
        self._reloading = None
        if self._reload_again:
            self._reload_again = False
            self.reload()
        return result

    def _note_staleness(self) -> None:
        """Log each domain whose recipients went stale or fresh again (once per change)."""
        stale = stale_domains(self.policy.fresh_until, self.reactor.seconds())
        previous: FrozenSet[str] = getattr(self, "_stale", frozenset())
        for domain in sorted(stale - previous):
            self.log.warn("recipients of {domain} are stale (no source synced them within its "
                          "stale_after): unknown recipients get 450 4.1.1, not 550",
                          domain=domain)
        for domain in sorted(previous - stale):
            self.log.info("recipients of {domain} are fresh again", domain=domain)
        if stale != previous and self.scheduler is not None:
            self.scheduler.refresh_table()  # stale domains are "@domain" in the table
        self._stale = stale

    def _apply_freshness(self, fresh_until: Dict[str, float],
                         states: Dict[str, Any]) -> None:
        self.source_states = states
        if fresh_until != self.policy.fresh_until:
            self.policy = dataclasses.replace(self.policy, fresh_until=fresh_until)
        self._note_staleness()

    def check_maps(self) -> Deferred:
        """Load the maps again once a changed map file has stopped changing, off the reactor;
        re-read the sources' states and the domains' freshness every time (cheap).

        A file counts as changed when its mtime, size or inode (or its being there at all)
        differs from what the maps in use were read at, and as stopped changing when two checks
        in a row see the same signature. A file that changed again while it was read is not
        used (the next checks pick it up). A new map that cuts a domain's keys by more than
        ``[policyd] max_shrink`` is held back (see shrunk_domains); SIGHUP applies it anyway.
        """
        if self._reloading is not None:
            return maybeDeferred(lambda: None)
        paths = map_paths(self.config)
        checked, recipients = self.config, self.maps.recipients

        def look() -> Tuple[Signature, Tuple[Dict[str, float], Dict[str, Any]]]:
            return file_signature(paths), current_freshness(checked, recipients)
        checking = self.run_in_thread(look)

        def compare(looked: Tuple[Signature, Tuple[Dict[str, float], Dict[str, Any]]]) -> Any:
            signature, (fresh_until, states) = looked
            if checked is self.config and recipients is self.maps.recipients:
                self._apply_freshness(fresh_until, states)
            if signature == self.maps.signature:
                self._pending_signature = None
                self.held_back = ()
                return None
            if signature == self._failed_signature or self._reloading is not None:
                return None
            if (signature != self._pending_signature
                    and not only_changed(self.maps.signature, signature,
                                         snapshot_paths(self.config))):
                self._pending_signature = signature  # changed: wait until it stays the same
                return None
            self._pending_signature = None
            config = self.config
            self._reloading = self.run_in_thread(self._load_maps_only, config)
            self._reloading.addCallbacks(lambda maps: self._apply_maps(config, maps),
                                         lambda failure: self._maps_failed(failure, signature))
            self._reloading.addBoth(self._reload_done)
            return self._reloading

        return checking.addCallback(compare)

    @staticmethod
    def _load_maps_only(config: Config) -> Optional[LoadedMaps]:
        """The maps, or None when a file changed while it was being read."""
        delimiter, _ = recipient_delimiter(config)
        maps = load_maps(config, delimiter, pause=yield_to_reactor)
        if file_signature(map_paths(config)) != maps.signature:
            return None
        return maps

    def _apply_maps(self, config: Config, maps: Optional[LoadedMaps]) -> None:
        if config is not self.config:
            return  # a full reload won the race; its maps are newer
        if maps is None:
            self.log.info("a map file changed while it was read: reading it again once it "
                          "has stopped changing")
            return
        shrunk = shrunk_domains(self.maps.recipients, maps.recipients, config.domains,
                                config.policyd.max_shrink, self._sourced(config, maps))
        if shrunk:
            self._failed_signature = maps.signature
            self.held_back = tuple(shrunk)
            self.last_reload = (False, self.reactor.seconds())
            self.log.error(
                "recipient maps changed but would cut {shrunk} (more than max_shrink "
                "{share:g}%: file truncated or half written?): keeping the last good maps; "
                "send SIGHUP to use the change", shrunk=", ".join(map(str, shrunk)),
                share=config.policyd.max_shrink * 100)
            return
        self._install(config, maps)
        self._failed_signature = None
        self.held_back = ()
        self.last_reload = (True, self.reactor.seconds())
        self.log.info("recipient maps reloaded: {count} keys from {sources}",
                      count=len(maps.recipients), sources=", ".join(maps.recipients.sources))

    def _sourced(self, config: Config, maps: LoadedMaps) -> FrozenSet[str]:
        """Domains a recipient source's snapshot feeds, in the running or the new map."""
        snapshots = snapshot_paths(config)
        return (snapshot_domains(self.maps.recipients, snapshots)
                | snapshot_domains(maps.recipients, snapshots))

    def _maps_failed(self, failure: Any, signature: Signature) -> None:
        failure.trap(MapError)
        self._failed_signature = signature
        self.last_reload = (False, self.reactor.seconds())
        self.log.error("map reload failed, keeping the last good maps: {why}",
                       why=failure.getErrorMessage())
