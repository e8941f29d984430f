"""policyd starts the syncs of its recipient sources itself, as child processes.

The drivers block and can hang (a directory that accepts TCP and never answers), so they never
run in policyd: each sync is ``backupmx -c CONFIG recipients sync NAME``, a process of its own
started with ``reactor.spawnProcess`` every ``interval`` seconds (+-10 % jitter, so sources and
hosts drift apart), killed if it outlives its ``timeout`` by KILL_GRACE seconds. The process
writes the snapshot files; policyd picks them up as it picks up a changed map file (its map
check), and is told to look at once when the child ends. The child's standard error lines
(its log) go to policyd's log. This also works without systemd; where systemd runs, the
``backupmx-recipients.timer`` runs ``recipients sync --due`` too, which the per-source lock
and the interval check make harmless.
"""
from __future__ import annotations

import os
import random
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

from twisted.internet import protocol
from twisted.logger import Logger

from backupmx.common.config import Config
from backupmx.common.source_settings import SourceSettings
from backupmx.sources import FETCH_TYPES

#: seconds a sync child may run past its source's timeout before it is killed
KILL_GRACE = 30.0
JITTER = 0.1


def jittered(interval: float, draw: Callable[[float, float], float] = random.uniform) -> float:
    """``interval`` +-10 %."""
    return interval * draw(1 - JITTER, 1 + JITTER)


def first_delay(interval: float, last_attempt: Optional[float], now: float) -> float:
    """Seconds until a source's first sync after start: at once when it never ran or is
    overdue, else when its interval since the last attempt is over."""
    if last_attempt is None:
        return 0.0
    return max(0.0, min(interval, last_attempt + interval - now))


class _SyncProcess(protocol.ProcessProtocol):
    def __init__(self, scheduler: "SyncScheduler", source: SourceSettings) -> None:
        self.scheduler = scheduler
        self.source = source
        self.buffer = b""

    def errReceived(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            self.scheduler.child_line(self.source, line)

    def outReceived(self, data: bytes) -> None:
        pass  # "NAME: synced": the outcome is in the state file and in stderr when it matters

    def processEnded(self, reason: Any) -> None:
        if self.buffer:
            self.scheduler.child_line(self.source, self.buffer)
        self.scheduler.ended(self.source, getattr(reason.value, "exitCode", None),
                             getattr(reason.value, "signal", None))


class _TableProcess(protocol.ProcessProtocol):
    def __init__(self, scheduler: "SyncScheduler") -> None:
        self.scheduler = scheduler

    def errReceived(self, data: bytes) -> None:
        for line in data.splitlines():
            self.scheduler.child_line(None, line)

    def processEnded(self, reason: Any) -> None:
        self.scheduler.table_ended(getattr(reason.value, "exitCode", None))


class SyncScheduler:
    """Runs each pulled source's sync on its interval (see the module docstring)."""

    log = Logger(namespace="backupmx.policyd")

    def __init__(self, reactor: Any, config: Config, on_done: Callable[[], Any],
                 command: Sequence[str] = (sys.executable, "-m", "backupmx.admin.main"),
                 draw: Callable[[float, float], float] = random.uniform) -> None:
        self.reactor = reactor
        self.on_done = on_done
        self.command = list(command)
        self.draw = draw
        self.config = config
        self.timers: Dict[str, Any] = {}
        self.running: Dict[str, Any] = {}  # name -> (transport, kill timer)
        self.stopped = True
        self._table_running = False
        self._table_again = False

    def sources(self) -> List[SourceSettings]:
        return [s for s in self.config.sources if s.type in FETCH_TYPES]

    def start(self, last_attempts: Dict[str, Optional[float]]) -> None:
        """Schedule every pulled source's first sync (``last_attempts``: from the states)."""
        self.stopped = False
        now = self.reactor.seconds()
        for source in self.sources():
            delay = first_delay(source.interval, last_attempts.get(source.name), now)
            self.timers[source.name] = self.reactor.callLater(delay, self.run, source)
        self.refresh_table()

    def configure(self, config: Config, last_attempts: Dict[str, Optional[float]]) -> None:
        """A reload: reschedule for the new configuration (running children finish)."""
        self._cancel_timers()
        self.config = config
        if not self.stopped:
            self.start(last_attempts)

    def run(self, source: SourceSettings) -> None:
        """Start one sync child now (nothing when one of that source still runs)."""
        self.timers.pop(source.name, None)
        if source.name in self.running or self.stopped:
            return
        args = [*self.command, "-c", self.config.path, "recipients", "sync", source.name]
        transport = self.reactor.spawnProcess(_SyncProcess(self, source), args[0], args,
                                              env=dict(os.environ))
        kill = self.reactor.callLater(source.timeout + KILL_GRACE, self._kill, source)
        self.running[source.name] = (transport, kill)

    def refresh_table(self) -> None:
        """Rewrite ``[postfix] recipient_table`` in a child (``backupmx recipients table``),
        when configured; a request while one runs makes it run once more afterwards."""
        if self.config.postfix.recipient_table is None or self.stopped:
            return
        if self._table_running:
            self._table_again = True
            return
        self._table_running = True
        args = [*self.command, "-c", self.config.path, "recipients", "table"]
        self.reactor.spawnProcess(_TableProcess(self), args[0], args, env=dict(os.environ))

    def table_ended(self, code: Optional[int]) -> None:
        self._table_running = False
        if code != 0:
            self.log.error("recipient table not written (exit status {code})", code=code)
        if self._table_again:
            self._table_again = False
            self.refresh_table()

    def _kill(self, source: SourceSettings) -> None:
        entry = self.running.get(source.name)
        if entry is None:
            return
        self.log.error("recipient source {name}: sync still running {seconds:.0f} s after "
                       "its timeout; killing it", name=source.name, seconds=KILL_GRACE)
        try:
            entry[0].signalProcess("KILL")
        except Exception as error:  # ProcessExitedAlready: it ended meanwhile
            self.log.debug("kill of sync {name}: {error}", name=source.name, error=error)

    def child_line(self, source: Optional[SourceSettings], line: bytes) -> None:
        text = line.decode("utf-8", "replace").strip()
        if text.startswith("backupmx: "):
            text = text[len("backupmx: "):]
        if not text:
            return
        if "failed" in text or "held back" in text or "not written" in text:
            self.log.warn("{line}", line=text)
        else:
            self.log.info("{line}", line=text)

    def ended(self, source: SourceSettings, code: Optional[int], signal: Optional[int]) -> None:
        entry = self.running.pop(source.name, None)
        if entry is not None and entry[1].active():
            entry[1].cancel()
        if code not in (0, 1):  # 1: the source failed, already logged by the child
            self.log.error("recipient source {name}: sync process ended with "
                           "{how}", name=source.name,
                           how=f"signal {signal}" if signal else f"exit status {code}")
        if self.stopped:
            return
        current = next((s for s in self.sources() if s.name == source.name), None)
        if current is not None and source.name not in self.timers:  # (a reload may have)
            self.timers[source.name] = self.reactor.callLater(
                jittered(current.interval, self.draw), self.run, current)
        self.on_done()

    def _cancel_timers(self) -> None:
        for timer in self.timers.values():
            if timer.active():
                timer.cancel()
        self.timers.clear()

    def stop(self) -> None:
        """Cancel the timers and end running children (TERM)."""
        self.stopped = True
        self._cancel_timers()
        for transport, kill in list(self.running.values()):
            if kill.active():
                kill.cancel()
            try:
                transport.signalProcess("TERM")
            except Exception as error:  # ProcessExitedAlready
                self.log.debug("stop sync: {error}", error=error)
        self.running.clear()
