"""Postfix throughput with no milter, with a do-nothing pymilter milter, and with backupmx-milter.

Separates what any pymilter milter costs (libmilter's threads and protocol, Postfix's milter
client) from what backupmx's own code adds (collecting the envelope, the ledger commit). Each
configuration gets a fresh private Postfix (tests/harness) with policyd attached and primaries
down; 8 clients send over persistent SMTP sessions; the milter's CPU time per message is read
from /proc. Needs root and the postfix package.

    .venv/bin/python bench/milter_baseline.py [--messages 2000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness.daemons import Daemon, milter_argv, spawn, wait_for_unix_socket  # noqa: E402
from tests.harness.lab import BackupMxLab  # noqa: E402

KINDS = ("no milter", "null pymilter", "backupmx-milter")
BODY = "x" * 5000 + "\r\n"


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_milter(lab: BackupMxLab, kind: str, socket_path: Path) -> Daemon:
    if kind == "null pymilter":
        argv = [sys.executable, str(Path(__file__).with_name("null_milter.py")),
                f"unix:{socket_path}"]
    else:
        argv = milter_argv(lab.config_path)
    daemon = spawn(argv, lab.root / "milter.log")
    wait_for_unix_socket(socket_path, 30.0, daemon)
    return daemon


def one_round(kind: str, messages: int, clients: int) -> Tuple[float, float]:
    """(messages per second, milter CPU microseconds per message) for one configuration."""
    lab = BackupMxLab(Path(tempfile.mkdtemp(prefix="milter-baseline-")),
                      domains=["a.test", "b.test"])
    socket_path = lab.root / "milter.sock"
    if kind != "no milter":
        lab.postfix.milter = f"unix:{socket_path}"
        text = lab.config_path.read_text().replace(
            f"listen = inet:127.0.0.1:{lab.milter_port}", f"listen = unix:{socket_path}:0666")
        lab.config_path.write_text(text)
    try:
        lab.start_policyd()
        if kind != "no milter":
            lab.milter = start_milter(lab, kind, socket_path)
        lab.postfix.start()
        lab.send(["alice@a.test"])  # warm up every process on the path
        cpu_before = cpu_seconds(lab.milter.pid) if lab.milter else 0.0
        started = time.monotonic()

        def client(number: int) -> None:
            with lab.smtp() as smtp:
                for i in range(messages // clients):
                    recipients = ["alice@a.test", "bob@b.test"][: 1 + i % 2]
                    smtp.sendmail("sender@outside.test", recipients,
                                  f"From: sender@outside.test\r\nTo: alice@a.test\r\n"
                                  f"Subject: {number}.{i}\r\n\r\n{BODY}")

        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(lab.milter.pid) - cpu_before if lab.milter else 0.0
        return messages / elapsed, cpu / messages * 1e6
    finally:
        lab.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: Dict[str, List[Tuple[float, float]]] = {kind: [] for kind in KINDS}
    for _ in range(args.rounds):
        for kind in KINDS:  # alternate, so machine noise hits every configuration alike
            results[kind].append(one_round(kind, args.messages, args.clients))
        print("round: " + ", ".join(f"{kind} {rounds[-1][0]:,.0f}/s"
                                    for kind, rounds in results.items()), flush=True)
    base = statistics.median(rate for rate, _ in results["no milter"])
    print("| configuration | messages/s (median) | overhead | milter CPU per message |")
    print("|---|---:|---:|---:|")
    for kind, rounds in results.items():
        rate = statistics.median(r for r, _ in rounds)
        cpu = statistics.median(c for _, c in rounds)
        print(f"| {kind} | {rate:,.0f} | {(1 - rate / base) * 100:.0f}% | {cpu:.0f} us |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
