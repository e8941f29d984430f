"""Flush on return: when a domain's primary is reported up again, hand its held mail back at once.

policyd is the process that sees a primary come back first (``PrimaryMonitor`` calls its listeners
on every reported state change, after the hysteresis). This module is such a listener: on a change
to ``up`` it starts ``backupmx flush DOMAIN --on-return`` as a child process with
``reactor.spawnProcess`` (the reactor never waits for it), at most one at a time per domain, and
logs the child's outcome in one line when it exits. The child does the accounted work exactly as
an admin's ``backupmx flush`` would: it takes the same lock as the flush timer (admin/flush.py),
probes the primary once more, does nothing when the domain holds no mail, and records the flush
in the ledger with trigger ``return``. Nothing here needs systemd.

A flapping primary causes at most one flush per reported up transition: the monitor reports a
transition only after ``primary_up_after`` agreeing probes, and a transition that arrives while
the domain's previous flush still runs starts nothing more (the running flush is handing the
mail back already; the timer remains the safety net).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from twisted.internet import protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from backupmx.common.config import Config
from backupmx.common.primary_state import UP, PrimaryState

#: a child flush still running after this many seconds is killed (it waits at most 120 s for
#: the lock and 30 s for the mail to leave)
CHILD_TIMEOUT = 300.0
#: how much of the child's output is kept for the log line
OUTPUT_LIMIT = 4096


def flush_argv(config_path: str, domain: str, python: str = sys.executable) -> List[str]:
    """The child's command line: the ``backupmx`` command of this very installation."""
    return [python, "-m", "backupmx.admin.main", "-c", config_path, "flush", domain,
            "--on-return"]


def should_flush(state: PrimaryState, enabled: bool, running: bool, ledger_exists: bool) -> bool:
    """Pure decision on one reported state change: flush when the primary is now up, the
    feature is on, no flush of the domain runs, and a ledger exists (without the milter there is
    no accounting of held mail to hand back)."""
    return enabled and state.status == UP and not running and ledger_exists


def summarize(output: bytes, limit: int = 300) -> str:
    """The child's output as one log line fragment: its lines joined with ``; ``."""
    text = output.decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    joined = "; ".join(lines) or "no output"
    return joined if len(joined) <= limit else joined[:limit - 3] + "..."


class _FlushChild(protocol.ProcessProtocol):
    """Collects one child's output and reports its exit to the owner."""

    def __init__(self, owner: "FlushOnReturn", domain: str, started: float) -> None:
        self.owner = owner
        self.domain = domain
        self.started = started
        self.output = bytearray()
        self.timeout: Any = None

    def outReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted's name)
        if len(self.output) < OUTPUT_LIMIT:
            self.output += data[:OUTPUT_LIMIT - len(self.output)]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 (Twisted's name)
        if self.timeout is not None and self.timeout.active():
            self.timeout.cancel()
        code = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        self.owner.finished(self.domain, code, signal, bytes(self.output), self.started)


class FlushOnReturn:
    """A ``PrimaryMonitor`` listener starting one flush child per domain whose primary returns.

    ``config`` returns the running configuration (it changes on reload); ``spawn`` is
    ``reactor.spawnProcess`` unless a test hands in another; ``ledger_exists`` tells whether the
    ledger file is there (``os.path.exists`` of ``[milter] ledger``).
    """

    log = Logger()

    def __init__(self, reactor: Any, config: Callable[[], Config],
                 spawn: Optional[Callable[..., Any]] = None,
                 ledger_exists: Callable[[str], bool] = os.path.exists,
                 env: Optional[Mapping[str, str]] = None,
                 timeout: float = CHILD_TIMEOUT) -> None:
        self.reactor = reactor
        self.config = config
        self.spawn = spawn if spawn is not None else reactor.spawnProcess
        self.ledger_exists = ledger_exists
        self.env = dict(os.environ if env is None else env)
        self.timeout = timeout
        self.running: Dict[str, Any] = {}  # domain -> process transport
        self.started = 0  # how many children were started (for tests and metrics)

    def __call__(self, domain: str, state: PrimaryState) -> None:
        config = self.config()
        if state.status != UP:
            return
        running = domain in self.running
        if not should_flush(state, config.policyd.flush_on_return, running,
                            self.ledger_exists(config.milter.ledger)):
            if running:
                self.log.info("primary of {domain} is up again while its flush on return still "
                              "runs: no second flush", domain=domain)
            return
        self.start(domain, config)

    def start(self, domain: str, config: Config) -> None:
        argv = flush_argv(config.path, domain)
        child = _FlushChild(self, domain, time.monotonic())
        try:
            transport = self.spawn(child, argv[0], argv, env=self.env)
        except OSError as error:
            self.log.error("flush on return of {domain}: cannot start {command}: {error}",
                           domain=domain, command=argv[0], error=error)
            return
        self.running[domain] = transport
        self.started += 1
        child.timeout = self.reactor.callLater(self.timeout, self._kill, domain, transport)
        self.log.info("primary of {domain} is up: flushing its held mail (backupmx flush "
                      "{domain} --on-return, pid {pid})", domain=domain,
                      pid=getattr(transport, "pid", "?"))

    def _kill(self, domain: str, transport: Any) -> None:
        self.log.error("flush on return of {domain}: still running after {timeout:g} s, killed",
                       domain=domain, timeout=self.timeout)
        try:
            transport.signalProcess("KILL")
        except Exception as error:  # ProcessExitedAlready and friends: nothing left to kill
            self.log.debug("killing the flush of {domain}: {error}", domain=domain, error=error)

    def finished(self, domain: str, code: Optional[int], signal: Optional[int], output: bytes,
                 started: float) -> None:
        """One line per child: what it printed and how it ended."""
        self.running.pop(domain, None)
        took = time.monotonic() - started
        summary = summarize(output)
        if code == 0:
            self.log.info("flush on return of {domain} done in {took:.1f} s: {summary}",
                          domain=domain, took=took, summary=summary)
        else:
            how = f"exit status {code}" if code is not None else f"signal {signal}"
            self.log.error("flush on return of {domain} failed ({how}) after {took:.1f} s: "
                           "{summary}", domain=domain, how=how, took=took, summary=summary)

    def domains_running(self) -> Sequence[str]:
        return sorted(self.running)
