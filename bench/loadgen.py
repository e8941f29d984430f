"""A cheap policy-protocol load generator: N persistent connections, one request in flight each.

Postfix's smtpd never pipelines policy requests, so neither does this: every connection sends one
request, waits for the whole reply, records the latency and sends the next. The loop is a bare
``select.epoll`` over non-blocking sockets with pre-encoded requests, so one request costs the
generator a few microseconds of CPU (it reports its own CPU time so that can be checked).

Run as a process: ``python loadgen.py HOST PORT CONNECTIONS SECONDS [USERS_PER_DOMAIN]``; prints one
JSON object (requests, seconds, latencies percentiles, generator CPU seconds).
"""
from __future__ import annotations

import json
import os
import select
import socket
import sys
import time
from typing import Dict, List, Sequence

WARMUP_SECONDS = 0.3


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


def run_load(host: str, port: int, connections: int, seconds: float,
             requests: Sequence[bytes]) -> Dict[str, float]:
    """Drive the server for WARMUP_SECONDS + seconds; measure only after the warm-up."""
    sockets: List[socket.socket] = []
    for _ in range(connections):
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sockets.append(sock)
    poller = select.epoll()
    by_fd = {sock.fileno(): sock for sock in sockets}
    sent_at = dict.fromkeys(by_fd, 0.0)
    partial = dict.fromkeys(by_fd, b"")
    cursor = dict.fromkeys(by_fd, 0)
    total = len(requests)
    for offset, fd in enumerate(by_fd):
        poller.register(fd, select.EPOLLIN)
        cursor[fd] = offset * (total // max(connections, 1))
    latencies: List[float] = []
    record = latencies.append
    clock = time.perf_counter
    start = clock()
    measure_from = start + WARMUP_SECONDS
    stop_at = measure_from + seconds
    for fd, sock in by_fd.items():
        sent_at[fd] = clock()
        sock.send(requests[cursor[fd]])
    cpu_start = None
    now = start
    while now < stop_at:
        events = poller.poll(1.0)
        if not events:
            raise RuntimeError("server stopped answering (no reply within 1 s)")
        for fd, _ in events:
            data = by_fd[fd].recv(65536)
            if not data:
                raise RuntimeError("server closed a connection")
            if partial[fd]:  # a reply split across reads (rare: replies are ~14 bytes)
                data = partial[fd] + data
                partial[fd] = b""
            if not data.endswith(b"\n\n"):
                partial[fd] = data
                continue
            now = clock()
            if now >= measure_from:
                record(now - sent_at[fd])
            index = cursor[fd] = (cursor[fd] + 1) % total
            sent_at[fd] = now
            by_fd[fd].send(requests[index])
        if cpu_start is None and now >= measure_from:
            cpu_start = time.process_time()
    cpu = time.process_time() - (cpu_start or 0.0)
    elapsed = now - measure_from
    poller.close()
    for sock in sockets:
        sock.close()
    latencies.sort()
    return {
        "connections": connections,
        "requests": len(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] if latencies else float("nan")) * 1000,
        "generator_cpu": cpu / elapsed if elapsed > 0 else 0.0,
    }


def main(argv: List[str]) -> int:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import workload

    host, port, connections, seconds = argv[0], int(argv[1]), int(argv[2]), float(argv[3])
    users = int(argv[4]) if len(argv) > 4 else 2000
    corpus = workload.make_corpus(users)
    requests = [encoded for _, encoded in workload.make_requests(corpus, 20000)]
    print(json.dumps(run_load(host, port, connections, seconds, requests)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
