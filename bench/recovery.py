"""How soon held mail goes home when its primary returns: flush on return against Postfix alone.

One private Postfix (tests/harness) is the backup MX of two relay domains, each with its own
fake primary, both down; policyd (default probe settings: probe_interval 30 s,
probe_interval_down 10 s, primary_up_after 2, probe_timeout 5 s) and the milter are attached.
Each run holds MESSAGES messages, half for each domain, waits until Postfix has deferred them
all, then starts a.test's primary and measures the time until the last held message of a.test
has reached it. It also checks that nothing of b.test was sent anywhere (b.test's messages all
still queued, none delivered, none for b.test at a.test's primary). Then the queue is emptied,
a.test's primary stopped, and the next run begins once policyd reports it down again.

``--mode flush``: policyd's flush on return (no timer, nobody runs ``backupmx flush``).
``--mode postfix``: ``flush_on_return = no``: Postfix alone, its own retry of deferred mail.
With Postfix's defaults (queue_run_delay and minimal_backoff_time 300 s, maximal_backoff_time
4,000 s) one run of that takes minutes to an hour; ``--postfix-scale N`` divides those three
times by N, and the figure printed is then the measured one (multiply by N for the defaults).
Needs root and the postfix package.

    .venv/bin/python bench/recovery.py --mode flush --runs 10
    .venv/bin/python bench/recovery.py --mode postfix --runs 3 --postfix-scale 10
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness.lab import BackupMxLab, eventually  # noqa: E402

A, B = "a.test", "b.test"
CLIENTS = 8
PER_SESSION = 25
POSTFIX_DEFAULTS = {"queue_run_delay": 300, "minimal_backoff_time": 300,
                    "maximal_backoff_time": 4000}


def p95(values: List[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def build_lab(mode: str, scale: float) -> BackupMxLab:
    settings = {"probe_interval": "30", "probe_timeout": "5",  # the embedded defaults
                "flush_on_return": "yes" if mode == "flush" else "no"}
    lab = BackupMxLab(Path(tempfile.mkdtemp(prefix="recovery-")), domains=[A, B], milter=True,
                      policyd_settings=settings)
    if scale != 1:
        lab.postfix.extra_main_cf.update(
            {k: f"{max(1, round(v / scale))}s" for k, v in POSTFIX_DEFAULTS.items()})
    return lab.start()


def hold(lab: BackupMxLab, messages: int) -> None:
    """Send ``messages`` messages, alternately for a.test and b.test, over CLIENTS sessions."""
    counter = iter(range(messages))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                batch = [n for n in (next(counter, None) for _ in range(PER_SESSION))
                         if n is not None]
            if not batch:
                return
            with lab.smtp() as smtp:
                for n in batch:
                    rcpt = f"alice@{A}" if n % 2 == 0 else f"bob@{B}"
                    smtp.sendmail("sender@outside.test", [rcpt],
                                  f"From: sender@outside.test\r\nTo: {rcpt}\r\n"
                                  f"Subject: held {n}\r\n\r\n" + "x" * 2000 + "\r\n")

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queue = eventually(lab.postfix.queue,
                       lambda q: len(q) == messages and all(m["queue_name"] == "deferred"
                                                            for m in q), timeout=120, interval=0.5)
    if len(queue) != messages:
        raise RuntimeError(f"{len(queue)} of {messages} messages deferred")


def one_run(lab: BackupMxLab, messages: int, timeout: float) -> float:
    primary = lab.primary(A)
    primary.messages.clear()
    hold(lab, messages)
    started = time.monotonic()
    primary.start()
    if not primary.wait_for(messages // 2, timeout=timeout):
        raise RuntimeError(f"only {len(primary.messages)} of {messages // 2} delivered "
                           f"within {timeout:.0f} s")
    took = time.monotonic() - started
    wrong = [r for _, rcpts, _ in primary.messages for r in rcpts if not r.endswith("@" + A)]
    queue = lab.postfix.queue()
    for_b = [m for m in queue if any(r["address"].endswith("@" + B) for r in m["recipients"])]
    sent_b = sum(1 for line in lab.postfix.maillog().splitlines()
                 if f"@{B}>" in line and "status=sent" in line)
    if wrong or len(for_b) != messages // 2 or sent_b:
        raise RuntimeError(f"b.test mail moved: {len(wrong)} at a.test's primary, "
                           f"{len(for_b)} queued, {sent_b} logged as sent")
    # reset: empty the queue, a.test's primary down again and seen down by policyd
    lab.postfix.delete_queue()
    primary.stop()
    eventually(lambda: lab.rcpt(f"alice@{A}")[0], lambda code: code == 250, timeout=90,
               interval=1)
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("flush", "postfix"), default="flush")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--postfix-scale", type=float, default=1.0,
                        help="divide Postfix's queue_run_delay and backoff times by this")
    parser.add_argument("--timeout", type=float, default=4600.0)
    args = parser.parse_args()
    lab = build_lab(args.mode, args.postfix_scale)
    times: List[float] = []
    try:
        for run in range(args.runs):
            took = one_run(lab, args.messages, args.timeout)
            times.append(took)
            print(f"run {run + 1}: last held message of {A} delivered {took:.1f} s after its "
                  f"primary started; 0 of {B} sent", flush=True)
    finally:
        lab.close()
    print(json.dumps({"mode": args.mode, "runs": len(times), "messages": args.messages,
                      "postfix_scale": args.postfix_scale, "p95_seconds": round(p95(times), 1),
                      "median_seconds": round(statistics.median(times), 1),
                      "max_seconds": round(max(times), 1),
                      "times": [round(t, 1) for t in times]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
