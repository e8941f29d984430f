"""A 1,000,000-address recipient map: load time, resident memory, and lookups during a reload.

1. In a fresh interpreter, ``load_recipient_map`` reads the generated map; prints the time and
   the resident-memory growth (RSS after minus before, and the peak during the load).
2. A real ``backupmx-policyd`` serves that map (``map_check_interval = 0.5``). A client process
   keeps RCPT lookups flowing on a few connections, one request in flight each, while this
   script rewrites the map file (adding one address); the reload is over when the new address
   is accepted. Prints the requests served during the reload and their maximum latency: the
   longest the reactor stalled (goal: under 50 ms).

    .venv/bin/python bench/map_load.py [--addresses 1000000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import servers  # noqa: E402
import workload  # noqa: E402

DOMAINS = tuple(f"d{n:02}.example.test" for n in range(20))
NEWCOMER = "newcomer.after.reload@d00.example.test"
CONNECTIONS = 4
PROBE_EVERY = 20  # every 20th request of connection 0 asks for the newcomer


def generate_map(path: str, addresses: int, extra: str = "") -> List[str]:
    """Write the map; return a sample of its addresses (for valid lookups)."""
    rng = random.Random(7)
    sample: List[str] = []
    with open(path, "w") as handle:
        handle.write("# 1M-address relay recipient map (bench/map_load.py)\n")
        for n in range(addresses):
            address = (f"{rng.choice(workload.FIRST)}.{rng.choice(workload.LAST)}.{n}"
                       f"@{DOMAINS[n % len(DOMAINS)]}")
            handle.write(f"{address} OK\n")
            if n % 997 == 0:
                sample.append(address)
        if extra:
            handle.write(f"{extra} OK\n")
    return sample


# ---- part 1: load time and memory, measured in a child interpreter ------------------------

def _rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_load_child(path: str) -> None:
    """Runs in the child: print load seconds and RSS growth as JSON."""
    import gc

    from backupmx.policyd.recipients import load_recipient_map

    gc.collect()
    before = _rss_kib()
    started = time.perf_counter()
    recipients = load_recipient_map([path], "+")
    seconds = time.perf_counter() - started
    gc.collect()
    after = _rss_kib()
    print(json.dumps({"seconds": seconds, "keys": len(recipients),
                      "rss_mib": (after - before) / 1024,
                      "peak_mib": (_rss_kib("VmHWM") - before) / 1024}))


def measure_load(path: str) -> Dict[str, float]:
    command = [sys.executable, os.path.abspath(__file__), "--load-child", path]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


# ---- part 2: lookups while policyd reloads the map ----------------------------------------

def _request(recipient: str, serial: int) -> bytes:
    return workload.encode_request({
        "request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
        "client_address": f"203.0.113.{serial % 250 + 1}", "client_name": "mx.sender.test",
        "sender": "someone@sender.test", "recipient": recipient, "queue_id": f"{serial:X}",
        "instance": f"{serial:x}.0", "size": "4242"})


def reload_client(port: int, sample: List[str], seconds_after: float) -> None:
    """Runs in the client process: drive lookups until the newcomer has been accepted for
    seconds_after seconds; print (completion time, latency) pairs and the acceptance time."""
    requests = [_request(address, n) for n, address in enumerate(sample)]
    newcomer = _request(NEWCOMER, 0)
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
    poller = select.epoll()
    by_fd = {}
    for sock in socks:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        by_fd[sock.fileno()] = sock
        poller.register(sock.fileno(), select.EPOLLIN)
    clock = time.monotonic
    sent_at: Dict[int, float] = {}
    asked_newcomer: Dict[int, bool] = {}
    counter = 0
    done: List[Tuple[float, float]] = []
    accepted_at = None

    def send(fd: int) -> None:
        nonlocal counter
        counter += 1
        probe = fd == socks[0].fileno() and counter % PROBE_EVERY == 0
        asked_newcomer[fd] = probe
        sent_at[fd] = clock()
        by_fd[fd].send(newcomer if probe else requests[counter % len(requests)])

    for fd in by_fd:
        send(fd)
    print("running", flush=True)
    buffers = dict.fromkeys(by_fd, b"")
    while accepted_at is None or clock() - accepted_at < seconds_after:
        events = poller.poll(30.0)
        if not events:
            raise RuntimeError("policyd stopped answering for 30 s")
        for fd, _ in events:
            data = buffers[fd] + by_fd[fd].recv(4096)
            if not data.endswith(b"\n\n"):
                buffers[fd] = data
                continue
            buffers[fd] = b""
            now = clock()
            done.append((now, now - sent_at[fd]))
            if asked_newcomer[fd] and accepted_at is None and data == b"action=DUNNO\n\n":
                accepted_at = now
            send(fd)
    print(json.dumps({"accepted_at": accepted_at, "done": done}))


def measure_reload(workdir: str, map_path: str, sample: List[str],
                   addresses: int) -> Dict[str, float]:
    """One reload under load; the figures of the reload window."""
    config = os.path.join(workdir, "map-bench.conf")
    with open(config, "w") as handle:
        handle.write(f"[policyd]\nlisten = inet:127.0.0.1:0\nrecipients = {map_path}\n"
                     f"recipient_delimiter = +\nmap_check_interval = 0.5\nprobe_interval = 60\n"
                     f"\n[domains]\n" + "".join(f"{d} = [127.0.0.1]:{servers.closed_port()}\n"
                                                for d in DOMAINS))
    policyd = servers.start_policyd(config, workdir, name="map-bench")
    try:
        client = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--reload-client", str(policyd.port),
             json.dumps(sample)], stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None
        if client.stdout.readline().strip() != "running":
            raise RuntimeError("reload client did not start")
        time.sleep(1.0)  # a second of steady lookups before the change, as a baseline
        staging = map_path + ".new"
        generate_map(staging, addresses, extra=NEWCOMER)
        changed_at = time.monotonic()
        os.replace(staging, map_path)  # what an admin's tooling does: write, then rename
        result = json.loads(client.stdout.read())
        client.wait()
    finally:
        policyd.stop()
    accepted_at = result["accepted_at"]
    done = result["done"]
    before = [lat for at, lat in done if at < changed_at]
    during = [lat for at, lat in done if changed_at <= at <= accepted_at]
    return {
        "reload_seconds": accepted_at - changed_at,
        "requests_during": len(during),
        "max_ms_during": max(during) * 1000 if during else float("nan"),
        "p99_ms_during": sorted(during)[int(0.99 * len(during))] * 1000 if during else float("nan"),
        "max_ms_before": max(before) * 1000 if before else float("nan"),
        "worst": sorted(((lat * 1000, (at - lat - changed_at) * 1000) for at, lat in done
                         if changed_at <= at <= accepted_at), reverse=True)[:5],
    }


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--load-child":
        measure_load_child(sys.argv[2])
        return 0
    if len(sys.argv) > 3 and sys.argv[1] == "--reload-client":
        reload_client(int(sys.argv[2]), json.loads(sys.argv[3]), seconds_after=0.5)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--addresses", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median kept)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="backupmx-mapbench-") as workdir:
        map_path = os.path.join(workdir, "relay_recipients")
        started = time.perf_counter()
        sample = generate_map(map_path, args.addresses)
        size_mib = os.path.getsize(map_path) / 2**20
        print(f"map: {args.addresses:,} addresses, {size_mib:.0f} MiB, generated in "
              f"{time.perf_counter() - started:.1f} s")
        loads = [measure_load(map_path) for _ in range(args.repeats)]
        for load in loads:
            print(f"  load_recipient_map: {load['seconds']:.2f} s, RSS +{load['rss_mib']:.0f} MiB"
                  f" (peak +{load['peak_mib']:.0f} MiB)")
        reloads = []
        for _ in range(args.repeats):
            generate_map(map_path, args.addresses)
            reload = measure_reload(workdir, map_path, sample, args.addresses)
            reloads.append(reload)
            print(f"  reload under load: {reload['reload_seconds']:.2f} s, "
                  f"{reload['requests_during']:,} requests served during it, max latency "
                  f"{reload['max_ms_during']:.1f} ms (p99 {reload['p99_ms_during']:.1f} ms; "
                  f"before the change: max {reload['max_ms_before']:.1f} ms)", flush=True)
            print("    slowest (latency ms @ sent ms after the change): " + ", ".join(
                f"{lat:.0f} @ {at:.0f}" for lat, at in reload["worst"]))
    median = statistics.median
    print()
    print("| figure | median |")
    print("|---|---:|")
    print(f"| load_recipient_map, {args.addresses:,} addresses | "
          f"{median(x['seconds'] for x in loads):.2f} s |")
    print(f"| RSS growth after load | {median(x['rss_mib'] for x in loads):.0f} MiB |")
    print(f"| RSS peak during load | {median(x['peak_mib'] for x in loads):.0f} MiB |")
    print(f"| reload under load (change to new address accepted) | "
          f"{median(x['reload_seconds'] for x in reloads):.2f} s |")
    print(f"| requests served during the reload | "
          f"{median(x['requests_during'] for x in reloads):,.0f} |")
    print(f"| max request latency during the reload | "
          f"{median(x['max_ms_during'] for x in reloads):.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
