"""A PolicyService on a fake reactor, with its configuration and maps in a temporary folder."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from twisted.internet import defer, task
from twisted.logger import LogLevel

from backupmx.common.config import Config, PrimarySpec, load_config
from backupmx.common.maps import load_maps
from backupmx.common.smtp_probe import ProbeResult
from backupmx.policyd.primary_monitor import PrimaryMonitor
from backupmx.policyd.service import PolicyService


class FakeProber(PrimaryMonitor):
    """A real PrimaryMonitor that never probes by itself; tests feed results with record()
    and read what reloads configured."""

    def __init__(self, clock: task.Clock) -> None:
        self.updates: List[Tuple[Dict[str, Any], float, float]] = []
        super().__init__(clock, {"example.test": PrimarySpec("127.0.0.1", 25)}, 30, 5,
                         probe=lambda *args: defer.Deferred())
        self.updates.clear()
        self.running = False

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False

    def probe_all(self) -> None:
        pass

    def configure(self, domains: Any, interval: float, timeout: float, up_after: int = 1,
                  down_after: int = 1, interval_down: Any = None) -> None:
        self.updates.append((dict(domains), interval, timeout))
        super().configure(domains, interval, timeout, up_after, down_after, interval_down)

    def up(self, domain: str, host: str = "127.0.0.1") -> None:
        self.domains.setdefault(domain, PrimarySpec(host, 25))
        self.record(domain, ProbeResult(True, host))


def synchronous(function: Callable[..., Any], *args: Any) -> defer.Deferred:
    return defer.maybeDeferred(function, *args)


class ManualThreads:
    """A run_in_thread whose jobs run only when the test says so (to make reloads overlap)."""

    def __init__(self) -> None:
        self.jobs: List[Tuple[Callable[..., Any], Tuple[Any, ...], defer.Deferred]] = []

    def __call__(self, function: Callable[..., Any], *args: Any) -> defer.Deferred:
        done: defer.Deferred = defer.Deferred()
        self.jobs.append((function, args, done))
        return done

    def run_next(self) -> None:
        function, args, done = self.jobs.pop(0)
        defer.maybeDeferred(function, *args).chainDeferred(done)


def messages(events: List[dict], level: LogLevel) -> List[str]:
    from twisted.logger import formatEvent
    return [formatEvent(e) for e in events if e.get("log_level") == level
            and e.get("log_namespace", "").startswith("backupmx.policyd.service")]


class Setup:
    """A configuration file, its recipient map and sender networks in a temporary folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.conf = folder / "backupmx.conf"
        self.recipients = folder / "relay_recipients"
        self.networks = folder / "sender_networks"
        self.recipients.write_text("alice@example.test OK\n", encoding="utf-8")
        self.networks.write_text("@partner.test 192.0.2.0/24\n", encoding="utf-8")
        self.write_config()

    def write_config(self, extra: str = "", domains: str = "example.test = [127.0.0.1]:2526\n"
                     ) -> None:
        self.conf.write_text(
            f"[policyd]\nrecipients = {self.recipients}\nsender_networks = {self.networks}\n"
            f"recipient_delimiter = +\nmap_check_interval = 5\n{extra}\n[domains]\n{domains}",
            encoding="utf-8")

    def config(self) -> Config:
        return load_config(str(self.conf))


def rewrite(path: Path, text: str) -> None:
    """Write new content and move the mtime on, so the change is visible whatever the clock."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(before + 10**9, before + 10**9))


def settle(service: PolicyService) -> None:
    """Two map checks: the first sees a changed file, the second that it stopped changing."""
    service.check_maps()
    service.check_maps()


def make_service(setup: Setup, run_in_thread: Callable[..., defer.Deferred] = synchronous
                 ) -> "tuple[PolicyService, FakeProber, task.Clock]":
    clock = task.Clock()
    clock.advance(1000)
    prober = FakeProber(clock)
    config = setup.config()
    service = PolicyService(clock, config, load_maps(config), prober, run_in_thread)
    return service, prober, clock


def rcpt(recipient: str, sender: str = "x@far.test", client: str = "198.51.100.1") -> dict:
    return {"protocol_state": "RCPT", "recipient": recipient, "sender": sender,
            "client_address": client, "queue_id": "", "instance": "abc.1"}
