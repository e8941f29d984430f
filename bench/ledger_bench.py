"""Ledger figures: record (insert) rate, and ``backupmx status`` time with 100,000 held messages.

Inserts go through ``Ledger.record`` exactly as the milter calls it (one durable commit per call,
``synchronous = FULL``), from one thread and from 8 threads (group commit). Then a ledger of
--held messages over four domains is built, a ``postqueue -j`` output listing all of them is
synthesised, and ``status`` (parse the queue, reconcile, aggregate, render JSON; primaries not
probed) is timed: the first run also notes every message as seen in the queue, later runs are
the steady state. Goal: status under 1 s with 100,000 held messages.

    /tmp/v/bin/python bench/ledger_bench.py [--held 100000] [--inserts 2000]
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backupmx.admin.context import CommandContext  # noqa: E402
from backupmx.admin.primaries import not_probed  # noqa: E402
from backupmx.admin.queue import QueueSnapshot, reconcile  # noqa: E402
from backupmx.admin.status import show_status  # noqa: E402
from backupmx.common.config import parse_config  # noqa: E402
from backupmx.milter.envelope import MessageRecord  # noqa: E402
from backupmx.milter.ledger import Ledger  # noqa: E402

DOMAINS = ("a.test", "b.test", "c.test", "d.test")


def make_record(n: int, now: float) -> MessageRecord:
    domain = DOMAINS[n % len(DOMAINS)]
    recipients: Dict[str, tuple] = {domain: (f"user{n % 97}@{domain}",)}
    if n % 5 == 0:
        other = DOMAINS[(n + 1) % len(DOMAINS)]
        recipients[other] = (f"user{n % 89}@{other}",)
    return MessageRecord(queue_id=f"{n:011X}", received_at=now - 86400 + n * 0.5,
                         sender=f"sender{n % 31}@outside.test", size=2000 + n % 40000,
                         client_addr=f"192.0.2.{n % 250}", client_name="mx.outside.test",
                         helo="mx.outside.test", recipients=recipients)


def queue_line(record: MessageRecord) -> str:
    return json.dumps({
        "queue_name": "deferred", "queue_id": record.queue_id,
        "arrival_time": int(record.received_at), "message_size": record.size + 400,
        "forced_expire": False, "sender": record.sender,
        "recipients": [{"address": r, "delay_reason": "connect to 192.0.2.1[192.0.2.1]:25: "
                        "Connection refused"} for rcpts in record.recipients.values()
                       for r in rcpts]}) + "\n"


def insert_rate(folder: Path, count: int, threads: int) -> float:
    ledger = Ledger(str(folder / f"insert-{threads}.sqlite3"))
    ledger.write([])
    now = time.time()
    per_thread = count // threads

    def work(start: int) -> None:
        for n in range(start, start + per_thread):
            assert ledger.record(make_record(n, now)) == "ledger"

    workers = [threading.Thread(target=work, args=(t * per_thread,)) for t in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    ledger.close()
    return per_thread * threads / elapsed


class QueueOnlyPostfix:
    """The two Postfix calls status makes, answered from memory."""

    config_directory = None

    def __init__(self, queue_text: str) -> None:
        self.queue_text = queue_text

    def queue_json(self) -> str:
        return self.queue_text

    def parameter(self, name: str) -> str:
        return "5d"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", type=int, default=100_000)
    parser.add_argument("--inserts", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ledger-bench-"))

    for threads in (1, 8):
        rate = insert_rate(folder, args.inserts, threads)
        print(f"record(), {threads} thread{'s' if threads > 1 else ' '}: {rate:8.0f} records/s "
              f"(durable commit each, synchronous=FULL)")

    path = folder / "held.sqlite3"
    ledger = Ledger(str(path))
    now = time.time()
    records = [make_record(n, now) for n in range(args.held)]
    started = time.perf_counter()
    for start in range(0, len(records), 5000):
        ledger.write(records[start:start + 5000])
    print(f"built a ledger of {args.held} held messages in {time.perf_counter() - started:.1f} s "
          f"({path.stat().st_size / 1e6:.0f} MB)")
    queue_text = "".join(queue_line(r) for r in records)
    ledger.close()

    config_path = folder / "backupmx.conf"
    config_path.write_text(f"[milter]\nledger = {path}\n\n[domains]\n" + "".join(
        f"{d} = [127.0.0.1]:2525\n" for d in DOMAINS))
    config = parse_config(config_path.read_text(), str(config_path))

    started = time.perf_counter()
    snapshot = QueueSnapshot.from_text(queue_text)
    parse_time = time.perf_counter() - started
    timings: List[float] = []
    for run in range(args.runs):
        ctx = CommandContext(config=config, postfix=QueueOnlyPostfix(queue_text),  # type: ignore
                             probe=not_probed, out=io.StringIO())
        started = time.perf_counter()
        show_status(ctx, as_json=True, probe=False)
        timings.append(time.perf_counter() - started)
        if run == 0:
            document = json.loads(ctx.out.getvalue())  # type: ignore[attr-defined]
            held = sum(row["held_messages"] for row in document["domains"])
            assert held == sum(len(r.recipients) for r in records), held
        ctx.close()
    ledger = Ledger(str(path))
    started = time.perf_counter()
    reconcile(ledger, snapshot, time.time())
    reconcile_time = time.perf_counter() - started
    started = time.perf_counter()
    ledger.summaries()
    summary_time = time.perf_counter() - started
    ledger.close()
    print(f"status --json with {args.held} held messages ({len(queue_text) / 1e6:.0f} MB of "
          f"postqueue -j): first run {timings[0]:.2f} s (notes every message as seen), "
          f"steady state median {statistics.median(timings[1:] or timings):.2f} s (goal < 1 s)")
    print(f"  of which: parse postqueue -j {parse_time:.2f} s, reconcile {reconcile_time:.2f} s, "
          f"per-domain aggregate {summary_time:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
