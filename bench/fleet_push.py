"""The fleet push: 100,000 held messages pushed to PostgreSQL, and the milter's rate meanwhile.

Part 1: a ledger holding ``--messages`` messages (a third for two relay domains) is pushed to an
empty fleet store (a private PostgreSQL 15 on a unix socket, tests/harness/servers.py): the
time, outbox changes and rows per second, then a second push with nothing new.

Part 2, in the same run: a private Postfix with policyd and backupmx-milter (unix socket,
primaries down, tests/harness/lab.py) whose ledger holds the same number of messages; 8 SMTP
clients send for a fixed time, alternately (a) without a fleet (the outbox's triggers off) and
(b) with the fleet on while a full push of that ledger (every message again: the store is
emptied first) runs in another process for the whole measurement. Messages per second of each,
median over ``--rounds``. PostgreSQL, Postfix, the milter, the clients and the push all share
this machine's cores, so (b) is pessimistic: in a fleet the database lives elsewhere.

    .venv/bin/python bench/fleet_push.py [--messages 100000] [--rounds 3] [--seconds 20]

Needs root and the postfix and postgresql-15 packages (.ci/install).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backupmx.common.config import FleetConfig, load_config  # noqa: E402
from backupmx.fleet import outbox  # noqa: E402
from backupmx.fleet.push import push  # noqa: E402
from backupmx.fleet.schema import migrate  # noqa: E402
from backupmx.fleet.store import connect  # noqa: E402
from backupmx.milter.envelope import MessageRecord  # noqa: E402
from backupmx.milter.ledger import Ledger  # noqa: E402
from backupmx.milter.ledger import connect as ledger_connect  # noqa: E402
from tests.harness.daemons import milter_argv, spawn, wait_for_unix_socket  # noqa: E402
from tests.harness.lab import BackupMxLab  # noqa: E402
from tests.harness.servers import Postgres, write_password  # noqa: E402

DOMAINS = ("a.test", "b.test")
BODY = "x" * 5000 + "\r\n"
PRIMARIES = {d: ("down", "[127.0.0.1]:1") for d in DOMAINS}

PUSH_CHILD = """
import sys, time
from backupmx.admin.fleet import lower_priority
from backupmx.common.config import load_config
from backupmx.fleet.push import push
from backupmx.fleet.store import connect
from backupmx.milter.ledger import connect as ledger_connect
config = load_config(sys.argv[1])
lower_priority()  # as backupmx fleet push and flush --auto do
pg, conn = connect(config.fleet), ledger_connect(config.milter.ledger)
print("started", flush=True)
started = time.monotonic()
result = push(pg, conn, "bench.test", 60, 30 * 86400, {})
print(f"{time.monotonic() - started:.3f} {result.changes} {result.messages + result.domain_rows}",
      flush=True)
"""


def fill_ledger(path: str, count: int) -> None:
    """``count`` held messages, one in three for both domains, received over the last day."""
    ledger = Ledger(path).open()
    now = time.time()
    for start in range(0, count, 10_000):
        records = []
        for n in range(start, min(count, start + 10_000)):
            domains = DOMAINS if n % 3 == 0 else (DOMAINS[n % 2],)
            records.append(MessageRecord(f"B{n:09X}", now - 86400 + n * 86400 / count,
                                         "sender@outside.test", 2000 + n % 5000, "192.0.2.7",
                                         "mx.outside.test", "mx.outside.test",
                                         {d: (f"user{n % 1000}@{d}",) for d in domains}))
        ledger.write(records)
    ledger.close()


def new_store(server: Postgres, folder: Path, name: str) -> FleetConfig:
    server.psql(f"CREATE DATABASE {name} OWNER bench")
    fleet = FleetConfig(server.dsn("bench", name), write_password(folder, "bench-secret"),
                        "bench.test", 60.0, 30 * 86400)
    pg = connect(fleet)
    migrate(pg)
    pg.close()
    return fleet


def part1(server: Postgres, folder: Path, count: int) -> None:
    fleet = new_store(server, folder, "part1")
    path = str(folder / "part1.sqlite3")
    started = time.monotonic()
    fill_ledger(path, count)
    print(f"ledger with {count:,} messages written in {time.monotonic() - started:.1f} s")
    pg, conn = connect(fleet), ledger_connect(path)
    first = push(pg, conn, "bench.test", 60.0, 30 * 86400, PRIMARIES)
    second = push(pg, conn, "bench.test", 60.0, 30 * 86400, PRIMARIES)
    pg.close()
    conn.close()
    rows = first.messages + first.domain_rows
    print("\n| push | seconds | outbox changes | rows (messages + domain rows) | rows/s |")
    print("|---|---:|---:|---:|---:|")
    print(f"| first, {count:,} held messages | {first.seconds:.1f} | {first.changes:,} | "
          f"{rows:,} | {rows / first.seconds:,.0f} |")
    print(f"| second, nothing new | {second.seconds:.2f} | {second.changes} | 0 | - |")


def send_for(lab: BackupMxLab, seconds: float, clients: int,
             until: Callable[[], bool] = lambda: False) -> Tuple[int, float]:
    """Send from ``clients`` persistent sessions for ``seconds`` (or until ``until()``);
    returns (messages accepted, elapsed seconds)."""
    stop = threading.Event()
    counts = [0] * clients

    def client(number: int) -> None:
        with lab.smtp() as smtp:
            i = 0
            while not stop.is_set():
                recipients = ["alice@a.test", "bob@b.test"][: 1 + i % 2]
                smtp.sendmail("sender@outside.test", recipients,
                              f"From: sender@outside.test\r\nTo: alice@a.test\r\n"
                              f"Subject: {number}.{i}\r\n\r\n{BODY}")
                counts[number] += 1
                i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    deadline = started + seconds
    while time.monotonic() < deadline and not until():
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(counts), time.monotonic() - started


def part2(server: Postgres, folder: Path, count: int, rounds: int, seconds: float,
          clients: int) -> None:
    fleet = new_store(server, folder, "part2")
    lab = BackupMxLab(folder / "lab", domains=list(DOMAINS),
                      extra_config=f"\n[fleet]\ndatabase = {fleet.database}\n"
                                   f"password_file = {fleet.password_file}\n"
                                   f"host_id = bench.test\n")
    socket_path = lab.root / "milter.sock"
    lab.postfix.milter = f"unix:{socket_path}"
    lab.config_path.write_text(lab.config_path.read_text().replace(
        f"listen = inet:127.0.0.1:{lab.milter_port}", f"listen = unix:{socket_path}:0666"))
    fill_ledger(str(lab.ledger_path), count)
    config = load_config(str(lab.config_path))
    assert config.fleet is not None
    without: List[float] = []
    during: List[float] = []
    idle: List[float] = []
    pushes: List[str] = []
    try:
        lab.start_policyd()
        lab.milter = spawn(milter_argv(lab.config_path), lab.root / "milter.log")
        wait_for_unix_socket(socket_path, 30.0, lab.milter)
        lab.postfix.start()
        lab.send(["alice@a.test"])
        conn = ledger_connect(str(lab.ledger_path))
        for _ in range(rounds):
            outbox.disable(conn)
            sent, elapsed = send_for(lab, seconds, clients)
            without.append(sent / elapsed)
            outbox.enable(conn)  # the triggers' cost alone: fleet on, no push running
            sent, elapsed = send_for(lab, seconds, clients)
            idle.append(sent / elapsed)
            server.psql("TRUNCATE hosts CASCADE", database="part2")
            outbox.disable(conn)
            outbox.enable(conn)  # queues the whole ledger: a full push of every message
            child = subprocess.Popen([sys.executable, "-c", PUSH_CHILD, str(lab.config_path)],
                                     stdout=subprocess.PIPE, text=True,
                                     cwd=Path(__file__).resolve().parents[1])
            assert child.stdout is not None and child.stdout.readline().strip() == "started"
            sent, elapsed = send_for(lab, seconds, clients,
                                     until=lambda child=child: child.poll() is not None)
            during.append(sent / elapsed)
            push_seconds, changes, rows = child.stdout.readline().split()
            child.wait()
            pushes.append(f"{float(push_seconds):.1f} s for {int(rows):,} rows "
                          f"(measured {elapsed:.1f} s while it ran)")
        conn.close()
    finally:
        lab.close()
    base, busy = statistics.median(without), statistics.median(during)
    quiet = statistics.median(idle)
    print(f"\nmilter, {clients} clients, {rounds} rounds of {seconds:g} s, ledger of {count:,}:")
    print("\n| configuration | messages/s (median) | rounds | vs without fleet |")
    print("|---|---:|---|---:|")
    print(f"| without fleet | {base:,.0f} | {', '.join(f'{r:.0f}' for r in without)} | - |")
    print(f"| fleet on, no push running | {quiet:,.0f} | {', '.join(f'{r:.0f}' for r in idle)}"
          f" | {(quiet / base - 1) * 100:+.0f}% |")
    print(f"| fleet on, push running | {busy:,.0f} | {', '.join(f'{r:.0f}' for r in during)} | "
          f"{(busy / base - 1) * 100:+.0f}% |")
    for text in pushes:
        print(f"push during the measurement: {text}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--skip-milter", action="store_true", help="part 1 only")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="fleet-push-"))
    server = Postgres(folder / "postgres").setup().start()
    try:
        server.create_database("bench_unused", "bench", "bench-secret")
        part1(server, folder, args.messages)
        if not args.skip_milter:
            part2(server, folder, args.messages, args.rounds, args.seconds, args.clients)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
