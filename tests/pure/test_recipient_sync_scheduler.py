"""policyd's scheduling of recipient syncs as child processes, on a fake clock."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List

import pytest
from twisted.internet.task import Clock

from backupmx.common.config import parse_config
from backupmx.policyd.recipient_sync import KILL_GRACE, SyncScheduler, first_delay, jittered


class Reactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.spawned: List[Any] = []

    def spawnProcess(self, protocol, executable, args, env=None):  # noqa: ANN001 (Twisted API)
        transport = Transport()
        self.spawned.append((protocol, args, transport))
        return transport


class Transport:
    def __init__(self) -> None:
        self.signals: List[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class Ended:
    def __init__(self, code: int) -> None:
        self.value = type("Exit", (), {"exitCode": code, "signal": None})()


def config(tmp_path: Path, table: str = ""):
    return parse_config(
        f"[policyd]\nstate_directory = {tmp_path}\n[postfix]\nrecipient_table = {table}\n"
        "[recipients dir]\ntype = command\ncommand = /bin/true\ninterval = 100\ntimeout = 10\n"
        "[recipients pushed]\ntype = push\n[domains]\na.test = mx\n", str(tmp_path / "c"))


def test_first_delay_and_jitter() -> None:
    assert first_delay(300, None, 1000) == 0
    assert first_delay(300, 900, 1000) == 200
    assert first_delay(300, 100, 1000) == 0
    assert jittered(100, lambda low, high: low) == pytest.approx(90)
    assert jittered(100, lambda low, high: high) == pytest.approx(110)


def test_each_pulled_source_runs_as_a_child_then_again_after_its_interval(tmp_path: Path
                                                                         ) -> None:
    reactor, done = Reactor(), []
    scheduler = SyncScheduler(reactor, config(tmp_path), lambda: done.append(1),
                              command=["/py", "-m", "x"], draw=lambda low, high: high)
    scheduler.start({})
    reactor.advance(0)
    assert [args[-3:] for _, args, _ in reactor.spawned] == [["recipients", "sync", "dir"]]
    protocol, args, transport = reactor.spawned[0]
    assert args[:5] == ["/py", "-m", "x", "-c", str(tmp_path / "c")]
    protocol.errReceived(b"backupmx: recipient source dir: sync failed, keeping the last ")
    protocol.errReceived(b"good snapshot: boom\n")
    protocol.processEnded(Ended(1))
    assert done == [1]
    reactor.advance(109)
    assert len(reactor.spawned) == 1
    reactor.advance(1.5)  # interval 100 + 10 % jitter
    assert len(reactor.spawned) == 2
    reactor.advance(10 + KILL_GRACE)  # still running past its timeout: killed
    assert reactor.spawned[1][2].signals == ["KILL"]
    scheduler.stop()
    assert reactor.getDelayedCalls() == []


def test_the_table_is_rewritten_by_a_child_and_requests_are_merged(tmp_path: Path) -> None:
    reactor = Reactor()
    scheduler = SyncScheduler(reactor, config(tmp_path, f"{tmp_path}/rr"), lambda: None,
                              command=["/py"])
    scheduler.start({"dir": reactor.seconds()})  # synced just now: not at once
    tables = [p for p, args, _ in reactor.spawned if args[-1] == "table"]
    assert len(tables) == 1
    scheduler.refresh_table()
    scheduler.refresh_table()
    tables[0].processEnded(Ended(0))
    assert len([1 for _, args, _ in reactor.spawned if args[-1] == "table"]) == 2
