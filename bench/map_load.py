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
from typing import Any, Dict, List, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import servers  # noqa: E402
import workload  # noqa: E402

DOMAINS = tuple(f"d{n:02}.example.test" for n in range(20))
RELOADS = 2  # successive reloads per daemon: the second also frees the first one's map
WINDOW_AFTER = 0.3  # seconds after the new address is accepted still counted in the window
CONNECTIONS = 4
PROBE_EVERY = 20  # every 20th request of connection 0 asks for the newcomer


def generate_map(path: str, addresses: int, extra: Sequence[str] = ()) -> List[str]:
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
        handle.writelines(f"{address} OK\n" for address in extra)
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

    from backupmx.common.recipient_map import load_recipient_map

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


def reload_client(port: int, sample: List[str], reloads: int, seconds_after: float) -> None:
    """Runs in the client process: drive lookups until the last of the `reloads` newcomers has
    been accepted for seconds_after seconds. Prints ``accepted K`` as newcomer K is accepted,
    then the (completion time, latency) of every request as JSON."""
    requests = [_request(address, n) for n, address in enumerate(sample)]
    probes = [_request(newcomer(k), 0) for k in range(1, reloads + 1)]
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
    accepted: List[float] = []

    def send(fd: int) -> None:
        nonlocal counter
        counter += 1
        probe = fd == socks[0].fileno() and counter % PROBE_EVERY == 0 and len(accepted) < reloads
        asked_newcomer[fd] = probe
        sent_at[fd] = clock()
        by_fd[fd].send(probes[len(accepted)] if probe else requests[counter % len(requests)])

    for fd in by_fd:
        send(fd)
    print("running", flush=True)
    buffers = dict.fromkeys(by_fd, b"")
    while len(accepted) < reloads or clock() - accepted[-1] < seconds_after:
        events = poller.poll(60.0)
        if not events:
            raise RuntimeError("policyd stopped answering for 60 s")
        for fd, _ in events:
            data = buffers[fd] + by_fd[fd].recv(4096)
            if not data.endswith(b"\n\n"):
                buffers[fd] = data
                continue
            buffers[fd] = b""
            now = clock()
            done.append((now, now - sent_at[fd]))
            if asked_newcomer[fd] and data == b"action=DUNNO\n\n":
                accepted.append(now)
                print(f"accepted {len(accepted)}", flush=True)
            send(fd)
    print(json.dumps({"accepted": accepted, "done": done}))


def newcomer(serial: int) -> str:
    return f"newcomer{serial}.after.reload@d00.example.test"


def measure_reloads(workdir: str, map_path: str, sample: List[str],
                    addresses: int) -> List[Dict[str, Any]]:
    """RELOADS successive reloads under load (the second one also frees the map the first one
    loaded); the figures of each reload window, from the file change to a moment after the new
    address was first accepted (the old map is freed at the swap)."""
    config = os.path.join(workdir, "map-bench.conf")
    with open(config, "w") as handle:
        handle.write(f"[policyd]\nlisten = inet:127.0.0.1:0\nrecipients = {map_path}\n"
                     f"recipient_delimiter = +\nmap_check_interval = 0.5\nprobe_interval = 60\n"
                     f"\n[domains]\n" + "".join(f"{d} = [127.0.0.1]:{servers.closed_port()}\n"
                                                for d in DOMAINS))
    policyd = servers.start_policyd(config, workdir, name="map-bench")
    changed: List[float] = []
    try:
        client = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--reload-client", str(policyd.port),
             json.dumps(sample), str(RELOADS)], stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None
        if client.stdout.readline().strip() != "running":
            raise RuntimeError("reload client did not start")
        for serial in range(1, RELOADS + 1):
            staging = map_path + ".new"
            generate_map(staging, addresses, extra=[newcomer(k) for k in range(1, serial + 1)])
            time.sleep(1.0)  # steady lookups before the change (and after the last reload)
            changed.append(time.monotonic())
            os.replace(staging, map_path)  # what an admin's tooling does: write, then rename
            if client.stdout.readline().strip() != f"accepted {serial}":
                raise RuntimeError("reload client lost track of the reloads")
        result = json.loads(client.stdout.read())
        client.wait()
    finally:
        policyd.stop()
    done = result["done"]
    figures = []
    for changed_at, accepted_at in zip(changed, result["accepted"]):
        window_end = accepted_at + WINDOW_AFTER
        during = sorted(lat for at, lat in done if changed_at <= at <= window_end)
        figures.append({
            "reload_seconds": accepted_at - changed_at,
            "requests_during": len(during),
            "max_ms_during": during[-1] * 1000,
            "p99_ms_during": during[int(0.99 * len(during))] * 1000,
            "max_ms_before": max(lat for at, lat in done if at < changed[0]) * 1000,
            "worst": sorted(((lat * 1000, (at - lat - changed_at) * 1000) for at, lat in done
                             if changed_at <= at <= window_end), reverse=True)[:5],
        })
    return figures


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--load-child":
        measure_load_child(sys.argv[2])
        return 0
    if len(sys.argv) > 3 and sys.argv[1] == "--reload-client":
        reload_client(int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]),
                      seconds_after=WINDOW_AFTER + 0.2)
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
        runs = []
        for _ in range(args.repeats):
            generate_map(map_path, args.addresses)
            runs.append(measure_reloads(workdir, map_path, sample, args.addresses))
            for serial, reload in enumerate(runs[-1], start=1):
                print(f"  reload {serial} under load: {reload['reload_seconds']:.2f} s, "
                      f"{reload['requests_during']:,} requests served, max latency "
                      f"{reload['max_ms_during']:.1f} ms, p99 {reload['p99_ms_during']:.1f} ms "
                      f"(before any change: max {reload['max_ms_before']:.1f} ms)")
                print("    slowest (latency ms @ sent ms after the change): " + ", ".join(
                    f"{lat:.0f} @ {at:.0f}" for lat, at in reload["worst"]), flush=True)
    median = statistics.median
    print()
    print("| figure | median |")
    print("|---|---:|")
    print(f"| load_recipient_map, {args.addresses:,} addresses | "
          f"{median(x['seconds'] for x in loads):.2f} s |")
    print(f"| RSS growth after load | {median(x['rss_mib'] for x in loads):.0f} MiB |")
    print(f"| RSS peak during load | {median(x['peak_mib'] for x in loads):.0f} MiB |")
    for serial in range(RELOADS):
        reloads = [run[serial] for run in runs]
        name = f"reload {serial + 1}" + (" (frees the previous map)" if serial else "")
        print(f"| {name}: file change to new address accepted | "
              f"{median(x['reload_seconds'] for x in reloads):.2f} s |")
        print(f"| {name}: requests served in the window | "
              f"{median(x['requests_during'] for x in reloads):,.0f} |")
        print(f"| {name}: max request latency | "
              f"{median(x['max_ms_during'] for x in reloads):.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
