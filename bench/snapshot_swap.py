"""A 1,000,000-address recipient snapshot: import time, policyd's memory with it loaded, and
lookups while a new snapshot is swapped in.

1. ``backupmx.sources.sync.apply_rows`` (what ``backupmx recipients import`` and every sync run)
   turns 1,000,000 raw addresses over 50 domains (``--one-domain``: all in one) into a snapshot
   of a ``push`` source; prints the time.
2. A real ``backupmx-policyd`` loads that snapshot at start; prints its resident memory
   (VmRSS of the process) with the million loaded.
3. A client process keeps RCPT lookups flowing on 4 connections (bench/map_load.py's client)
   while this script imports a new list (one address more) twice; a swap is over when the new
   address is accepted. Prints the requests served during each swap and their maximum latency
   (goal: no request waits more than 50 ms).

    .venv/bin/python bench/snapshot_swap.py [--addresses 1000000] [--one-domain]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from typing import List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import map_load  # noqa: E402
import servers  # noqa: E402
import workload  # noqa: E402

from backupmx.admin.recipients import SYNC_NICENESS  # noqa: E402
from backupmx.common.config import load_config  # noqa: E402
from backupmx.common.recipient_sources import store  # noqa: E402
from backupmx.sources.sync import apply_rows  # noqa: E402

SWAPS = 2


def addresses(count: int, domains: List[str], extra: List[str]) -> List[str]:
    rng = random.Random(7)
    rows = [f"{rng.choice(workload.FIRST)}.{rng.choice(workload.LAST)}.{n}"
            f"@{domains[n % len(domains)]}" for n in range(count)]
    return rows + extra


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--addresses", type=int, default=1_000_000)
    parser.add_argument("--one-domain", action="store_true")
    args = parser.parse_args()
    # newcomers (bench/map_load.py) are in d00.example.test
    domains = ["d00.example.test"] if args.one_domain else \
        [f"d{n:02}.example.test" for n in range(50)]
    with tempfile.TemporaryDirectory(prefix="backupmx-snapbench-") as workdir:
        empty = os.path.join(workdir, "relay_recipients")
        open(empty, "w").close()
        config_path = os.path.join(workdir, "snap-bench.conf")
        with open(config_path, "w") as handle:
            handle.write(f"[policyd]\nlisten = inet:127.0.0.1:0\nrecipients = {empty}\n"
                         f"state_directory = {workdir}\nrecipient_delimiter = +\n"
                         "map_check_interval = 0.5\nprobe_interval = 60\n"
                         "[recipients pushed]\ntype = push\nmax_shrink = 100%\n\n[domains]\n"
                         + "".join(f"{d} = [127.0.0.1]:{servers.closed_port()}\n"
                                   for d in domains))
        config = load_config(config_path)
        source = config.sources[-1]
        rows = addresses(args.addresses, domains, [])
        started = time.perf_counter()
        apply_rows(source, store(config), rows, print)
        print(f"import of {args.addresses:,} addresses over {len(domains)} domains: "
              f"{time.perf_counter() - started:.1f} s")
        sample = rows[::997]
        # the imports below run at the priority of "backupmx recipients sync" (nice 10), so
        # they do not take the CPU from policyd (started before, at normal priority)
        niceness = SYNC_NICENESS
        policyd = servers.start_policyd(config_path, workdir, name="snap-bench")
        try:
            print(f"policyd RSS with the snapshot loaded: {rss_mib(policyd.process.pid):.0f} MiB")
            client = subprocess.Popen(
                [sys.executable, map_load.__file__, "--reload-client", str(policyd.port),
                 json.dumps(sample), str(SWAPS)], stdout=subprocess.PIPE, text=True)
            assert client.stdout is not None
            if client.stdout.readline().strip() != "running":
                raise RuntimeError("client did not start")
            os.nice(niceness)
            changed, written = [], []
            for serial in range(1, SWAPS + 1):
                new_rows = addresses(args.addresses, domains,
                                     [map_load.newcomer(k) for k in range(1, serial + 1)])
                time.sleep(1.0)
                before = time.perf_counter()
                changed.append(time.monotonic())
                apply_rows(source, store(config), new_rows, print)
                written.append(time.monotonic())
                print(f"  import {serial}: {time.perf_counter() - before:.1f} s")
                if client.stdout.readline().strip() != f"accepted {serial}":
                    raise RuntimeError("client lost track of the swaps")
            result = json.loads(client.stdout.read())
            client.wait()
            print(f"policyd RSS after {SWAPS} swaps: {rss_mib(policyd.process.pid):.0f} MiB")
        finally:
            policyd.stop()
    done = result["done"]
    for serial, (changed_at, written_at, accepted_at) in enumerate(
            zip(changed, written, result["accepted"]), 1):
        end = accepted_at + map_load.WINDOW_AFTER
        for what, start, stop in (("while the import ran (another process, same 2 cores)",
                                   changed_at, written_at),
                                  ("while policyd swapped the written snapshot in",
                                   written_at, end)):
            during = sorted(lat for at, lat in done if start <= at <= stop)
            print(f"swap {serial} {what}: {stop - start:.1f} s, {len(during):,} requests, "
                  f"max latency {during[-1] * 1000:.1f} ms, "
                  f"p99 {during[int(0.99 * len(during))] * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
