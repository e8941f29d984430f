"""Test doubles for the backupmx command: a Postfix whose queue is a list, a scripted prober."""
from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from backupmx.admin.context import CommandContext
from backupmx.admin.primaries import PrimaryState
from backupmx.common.config import Config, parse_config
from backupmx.common.postfix import PostfixError
from backupmx.milter.envelope import MessageRecord


class FakePostfix:
    """Answers postqueue -j from ``queue``; ``postqueue -s D`` delivers D's recipients when
    ``deliver`` says so (the primary is really up), else leaves the mail deferred."""

    def __init__(self, config_directory: Optional[str] = None) -> None:
        self.config_directory = config_directory
        self.queue: List[dict] = []
        self.parameters: Dict[str, str] = {"maximal_queue_lifetime": "5d",
                                           "fast_flush_domains": "a.test, b.test"}
        self.deliver: Dict[str, bool] = {}
        self.flushed: List[str] = []
        self.flush_returncode = 0
        self.queue_error: Optional[str] = None

    def add(self, queue_id: str, *recipients: str, arrival: int = 100, size: int = 500) -> None:
        self.queue.append({"queue_name": "deferred", "queue_id": queue_id,
                           "arrival_time": arrival, "message_size": size,
                           "sender": "s@outside.test",
                           "recipients": [{"address": r, "delay_reason": "connect refused"}
                                          for r in recipients]})

    def queue_json(self) -> str:
        if self.queue_error:
            raise PostfixError(self.queue_error)
        return "".join(json.dumps(m) + "\n" for m in self.queue)

    def postconf(self, *names: str, defaults: bool = False, expand: bool = False) -> Dict[str, str]:
        return {n: self.parameters[n] for n in names if n in self.parameters}

    def parameter(self, name: str) -> str:
        if name not in self.parameters:
            raise PostfixError(f"postconf: no {name}")
        return self.parameters[name]

    def flush_domain(self, domain: str) -> subprocess.CompletedProcess:
        self.flushed.append(domain)
        if self.flush_returncode:
            return subprocess.CompletedProcess(["postqueue"], self.flush_returncode, "",
                                               "postqueue: fatal: Flush service is not configured")
        if self.deliver.get(domain):
            for message in self.queue:
                message["recipients"] = [r for r in message["recipients"]
                                         if not r["address"].lower().endswith("@" + domain)]
            self.queue = [m for m in self.queue if m["recipients"]]
        return subprocess.CompletedProcess(["postqueue"], 0, "", "")


class ScriptedProber:
    def __init__(self, states: Optional[Mapping[str, str]] = None) -> None:
        self.states: Dict[str, str] = dict(states or {})
        self.calls: List[List[str]] = []

    def __call__(self, domains: Mapping, timeout: float) -> Dict[str, PrimaryState]:
        self.calls.append(sorted(domains))
        return {d: PrimaryState(self.states.get(d, "down"), str(spec))
                for d, spec in domains.items()}


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def make_config(tmp_path: Path, domains: Mapping[str, int] = {"a.test": 2601, "b.test": 2602}
                ) -> Config:
    lines = ["[milter]", f"ledger = {tmp_path / 'ledger.sqlite3'}", "", "[domains]",
             *(f"{d} = [127.0.0.1]:{p}" for d, p in domains.items())]
    path = tmp_path / "backupmx.conf"
    path.write_text("\n".join(lines) + "\n")
    return parse_config(path.read_text(), str(path))


def make_context(tmp_path: Path, postfix: FakePostfix, prober: ScriptedProber,
                 clock: FakeClock) -> CommandContext:
    return CommandContext(config=make_config(tmp_path), postfix=postfix,  # type: ignore[arg-type]
                          probe=prober, probe_timeout=1.0, clock=clock, sleep=clock.sleep,
                          out=io.StringIO(), err=io.StringIO())


def record(queue_id: str = "Q1", received_at: float = 100.0, size: int = 1000,
           **recipients: str) -> MessageRecord:
    grouped = {d.replace("_", "."): tuple(r.split(",")) for d, r in recipients.items()} or \
        {"a.test": ("alice@a.test",)}
    return MessageRecord(queue_id=queue_id, received_at=received_at, sender="s@outside.test",
                         size=size, client_addr="192.0.2.1", client_name="mx.outside.test",
                         helo="helo.outside.test", recipients=grouped)
