"""Messages per second through a real private Postfix with and without backupmx-milter attached.

Same run, same message mix: a private Postfix instance (tests/harness) relays four domains whose
primaries are down, so accepted mail is held in the queue as on a real backup MX. Rounds alternate
between "milter attached" and "no milter" (``postfix reload`` in between, queue emptied before
each round) and the medians are compared: the overhead is 1 - with/without. Needs root and the
postfix package, like the integration tests.

    /tmp/v/bin/python bench/milter_overhead.py [--messages 400] [--clients 4] [--rounds 3]
"""
from __future__ import annotations

import argparse
import random
import smtplib
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness.daemons import start_milter, start_unix_milter  # noqa: E402
from tests.harness.postfix import PostfixInstance, free_port  # noqa: E402

DOMAINS = ("a.test", "b.test", "c.test", "d.test")
Message = Tuple[str, List[str], bytes]


def message_mix(count: int, seed: int = 7) -> List[List[Message]]:
    """SMTP sessions of 1-5 messages; 1-3 recipients, some across two domains; 1-40 KB."""
    rng = random.Random(seed)
    sessions: List[List[Message]] = []
    made = 0
    while made < count:
        session: List[Message] = []
        for _ in range(min(rng.choice((1, 1, 2, 3, 5)), count - made)):
            domains = rng.sample(DOMAINS, rng.choice((1, 1, 1, 2)))
            recipients = [f"user{rng.randrange(50)}@{d}" for d in domains
                          for _ in range(rng.choice((1, 1, 2)))]
            size = rng.choice((1000, 2000, 4000, 8000, 40000))
            body = "".join(f"line {n:05d} " + "x" * 60 + "\r\n" for n in range(size // 72))
            sender = f"sender{rng.randrange(20)}@outside.test"
            data = (f"From: <{sender}>\r\nTo: {', '.join(recipients)}\r\nSubject: mix {made}\r\n"
                    f"Message-ID: <{made}.{seed}@outside.test>\r\n\r\n{body}").encode()
            session.append((sender, recipients, data))
            made += 1
        sessions.append(session)
    return sessions


def send_all(port: int, sessions: List[List[Message]], clients: int) -> float:
    """Send every session over ``clients`` concurrent connections; messages per second."""
    todo = list(sessions)
    lock = threading.Lock()
    errors: List[str] = []

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                session = todo.pop()
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
                smtp.ehlo("bench.outside.test")
                for sender, recipients, data in session:
                    refused = smtp.sendmail(sender, recipients, data)
                    if refused:
                        errors.append(str(refused))

    total = sum(len(s) for s in sessions)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"refused: {errors[:3]}")
    return total / elapsed


def ledger_count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--transport", choices=("unix", "inet"), default="unix",
                        help="how Postfix reaches the milter (default unix, as shipped)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="milter-bench-"))
    root.chmod(0o755)
    milter_port = free_port()
    ledger = root / "ledger.sqlite3"
    config = root / "backupmx.conf"
    unix_path = root / "milter.sock"
    listen = (f"unix:{unix_path}:0666" if args.transport == "unix"
              else f"inet:127.0.0.1:{milter_port}")
    config.write_text(f"[milter]\nlisten = {listen}\nledger = {ledger}\n\n"
                      "[domains]\n" + "".join(f"{d} = [127.0.0.1]:{free_port()}\n"
                                              for d in DOMAINS))
    if args.transport == "unix":
        milter = start_unix_milter(config, root / "milter.log", unix_path)
    else:
        milter = start_milter(config, root / "milter.log", "127.0.0.1", milter_port)
    postfix = PostfixInstance(root / "postfix", free_port(), {d: free_port() for d in DOMAINS},
                              milter=f"unix:{unix_path}" if args.transport == "unix"
                              else f"inet:127.0.0.1:{milter_port}")
    attached = postfix.main_cf()["smtpd_milters"]
    sessions = message_mix(args.messages)
    warmup = message_mix(40, seed=1)
    results = {"milter": [], "none": []}  # type: dict
    try:
        postfix.start()
        for round_number in range(args.rounds):
            for mode in ("milter", "none") if round_number % 2 == 0 else ("none", "milter"):
                postfix.extra_main_cf["smtpd_milters"] = attached if mode == "milter" else ""
                postfix.reload()
                postfix.delete_queue()
                send_all(postfix.smtpd_port, warmup, args.clients)
                before = ledger_count(ledger)
                rate = send_all(postfix.smtpd_port, sessions, args.clients)
                recorded = ledger_count(ledger) - before
                expected = len([m for s in sessions for m in s]) if mode == "milter" else 0
                if recorded != expected:
                    raise RuntimeError(f"{mode}: {recorded} ledger records, expected {expected}")
                results[mode].append(rate)
                print(f"round {round_number + 1} {mode:6s}: {rate:7.1f} messages/s "
                      f"({args.messages} messages, {args.clients} clients, "
                      f"{args.transport} socket)", flush=True)
    finally:
        postfix.stop()
        milter.stop()
    with_milter = statistics.median(results["milter"])
    without = statistics.median(results["none"])
    # Each round measures both modes back to back: its ratio is immune to slow drifts of the
    # machine (other load, page cache) that move both figures together.
    paired = [100 * (1 - w / n) for w, n in zip(results["milter"], results["none"])]
    print(f"\nmedian without milter: {without:.1f} messages/s")
    print(f"median with milter:    {with_milter:.1f} messages/s")
    print(f"overhead per round:    {', '.join(f'{p:.1f}%' for p in paired)}")
    print(f"milter overhead:       {statistics.median(paired):.1f}% (median of the rounds; "
          f"goal: under 10%)")
    print(f"work folder: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
