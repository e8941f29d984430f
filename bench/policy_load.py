"""Throughput and latency of backupmx-policyd against a bare Twisted server, in the same run.

Starts the real daemon (generated configuration: five relay domains whose primaries are down, one
whose primary is a local SMTP greeter and so up, a recipient map, a sender-networks allowlist) and
the bare baseline, checks that every kind of request gets the expected answer, then drives each
server with 1, 8 and 32 persistent connections from a separate load-generator process and prints
requests/s, p50/p99 latency and the backupmx/bare throughput ratio (medians over --repeats runs).

    .venv/bin/python bench/policy_load.py [--seconds 3] [--repeats 3] [--connections 1,8,32]
                                          [--callouts]

``--callouts`` adds a ``callout`` recipient source for the domain whose primary is up: its
unknown recipients are then deferred to the primary and each asks for a callout in the
background (the greeter only greets, so every callout fails temporarily; the per-client cap
turns most requests into a counted skip), which must leave the latency unchanged.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import loadgen  # noqa: E402
import servers  # noqa: E402
import workload  # noqa: E402

Result = Dict[str, float]


def write_config(workdir: str, greeter_port: int, users_per_domain: int,
                 callouts: bool = False) -> str:
    corpus = workload.make_corpus(users_per_domain)
    recipients = os.path.join(workdir, "relay_recipients")
    with open(recipients, "w") as handle:
        handle.write("\n".join(corpus.map_lines()) + "\n")
    networks = os.path.join(workdir, "sender_networks")
    with open(networks, "w") as handle:
        handle.write(workload.sender_networks_text())
    domains = [f"{d} = [127.0.0.1]:{servers.closed_port()}" for d in workload.DOWN_DOMAINS]
    domains.append(f"{workload.CATCH_ALL_DOMAIN} = [127.0.0.1]:{servers.closed_port()}")
    domains.append(f"{workload.UP_DOMAIN} = [127.0.0.1]:{greeter_port}")
    path = os.path.join(workdir, "backupmx.conf")
    with open(path, "w") as handle:
        handle.write(f"""[policyd]
listen = inet:127.0.0.1:0
recipients = {recipients}
sender_networks = {networks}
recipient_delimiter = +
probe_interval = 2
probe_timeout = 1

state_directory = {workdir}

[domains]
""" + "\n".join(domains) + "\n")
        if callouts:
            handle.write(f"\n[recipients verify]\ntype = callout\ndomains = {workload.UP_DOMAIN}\n")
    return path


def check_answers(port: int, users_per_domain: int, callouts: bool = False) -> None:
    """Every case of the mix gets the action it should (else the figures would be meaningless)."""
    corpus = workload.make_corpus(users_per_domain)
    seen: Dict[str, str] = {}
    for case, request in workload.make_requests(corpus, 400):
        if case in seen:
            continue
        action = servers.ask(port, request)
        expected = workload.expected_action(case)
        if callouts and case == "unknown_user" and f"@{workload.UP_DOMAIN}\n".encode() in request:
            expected = "DEFER_IF_PERMIT"  # deferred to the primary, a callout queued
        if not action.startswith(expected):
            raise SystemExit(f"policyd answered {action!r} to a {case} request, "
                             f"expected {expected}")
        seen[case] = action
    if callouts:  # make sure the callout path is in the mix
        template = next(r for case, r in workload.make_requests(corpus, 400)
                        if case == "unknown_user")
        request = re.sub(rb"recipient=[^\n]*",
                         f"recipient=nobody-check@{workload.UP_DOMAIN}".encode(), template)
        seen["unknown_user_callout"] = action = servers.ask(port, request)
        if not action.startswith("DEFER_IF_PERMIT"):
            raise SystemExit(f"policyd answered {action!r} to an unknown recipient of the "
                             "callout domain, expected DEFER_IF_PERMIT")
    for case, action in seen.items():
        print(f"  check {case:22} -> {action}")


def wait_primary_up(port: int, greeter: servers.SmtpGreeter, users_per_domain: int) -> None:
    """Block until policyd has probed the greeter and defers its domain's valid recipients."""
    corpus = workload.make_corpus(users_per_domain)
    request = next(r for case, r in workload.make_requests(corpus, 400)
                   if case == "valid_primary_up")
    for _ in range(30):
        if not greeter.greeted.wait(timeout=10):
            break
        greeter.greeted.clear()
        if servers.ask(port, request).startswith("DEFER_IF_PERMIT"):
            return
    raise SystemExit("policyd never saw the up primary as up")


def run_generator(port: int, connections: int, seconds: float, users: int) -> Result:
    command = [sys.executable, os.path.join(servers.BENCH_DIR, "loadgen.py"), "127.0.0.1",
               str(port), str(connections), str(seconds), str(users)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output)


def measure(server: servers.Server, connections: int, seconds: float, users: int) -> Result:
    cpu_before = server.cpu_seconds()
    result = run_generator(server.port, connections, seconds, users)
    # the generator's start-up (building its requests) is idle time for the server, so the
    # server's CPU share is relative to the measured span plus warm-up, an underestimate
    cpu = server.cpu_seconds() - cpu_before
    result["server_cpu"] = cpu / (result["seconds"] + loadgen.WARMUP_SECONDS)
    # CPU per request: steadier than requests/s on a shared machine (counts warm-up requests
    # at the measured rate; the server is idle while the generator starts)
    result["cpu_us"] = cpu / (result["rps"] * (result["seconds"] + loadgen.WARMUP_SECONDS)) * 1e6
    return result


def median_result(runs: List[Result]) -> Result:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


LABELS = {"bare": "bare Twisted", "bare+wt": "bare Twisted + writethrough",
          "backupmx": "backupmx-policyd"}


def report(results: Dict[Tuple[str, int], List[Result]], levels: List[int],
           names: List[str]) -> None:
    """One row per server and level; ratio: requests/s against the bare server's."""
    print()
    print("| connections | server | requests/s | ratio | p50 ms | p99 ms | max ms "
          "| server CPU | server CPU per request | generator CPU |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for connections in levels:
        bare = median_result(results[("bare", connections)])
        for server_name in names:
            row = median_result(results[(server_name, connections)])
            name = LABELS[server_name]
            ratio = f"{row['rps'] / bare['rps']:.0%}" if server_name != "bare" else ""
            print(f"| {connections} | {name} | {row['rps']:,.0f} | {ratio} | {row['p50_ms']:.2f} "
                  f"| {row['p99_ms']:.2f} | {row['max_ms']:.1f} | {row['server_cpu']:.0%} "
                  f"| {row['cpu_us']:.1f} us | {row['generator_cpu']:.0%} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median kept)")
    parser.add_argument("--connections", default="1,8,32", help="comma-separated levels")
    parser.add_argument("--users-per-domain", type=int, default=2000)
    parser.add_argument("--callouts", action="store_true",
                        help="verify the up domain's unknown recipients with callouts")
    parser.add_argument("--writethrough-baseline", action="store_true",
                        help="also measure the bare server sending replies as policyd does")
    args = parser.parse_args()
    levels = [int(n) for n in args.connections.split(",")]
    users = args.users_per_domain

    with tempfile.TemporaryDirectory(prefix="backupmx-bench-") as workdir:
        greeter = servers.SmtpGreeter()
        config = write_config(workdir, greeter.port, users, args.callouts)
        started: List[servers.Server] = []
        try:
            policyd = servers.start_policyd(config, workdir)
            started.append(policyd)
            bare = servers.start_bare()
            started.append(bare)
            compared = [bare, policyd]
            if args.writethrough_baseline:
                compared.insert(1, servers.start_bare(writethrough=True))
                started.append(compared[1])
            print(f"policyd on port {policyd.port}, bare server on port {bare.port}")
            wait_primary_up(policyd.port, greeter, users)
            check_answers(policyd.port, users, args.callouts)
            results: Dict[Tuple[str, int], List[Result]] = {}
            for repeat in range(args.repeats):
                for connections in levels:
                    for server in compared:
                        result = measure(server, connections, args.seconds, users)
                        results.setdefault((server.name, connections), []).append(result)
                        print(f"  run {repeat + 1} {server.name:8} {connections:3} conn: "
                              f"{result['rps']:8,.0f} req/s  p50 {result['p50_ms']:.2f} ms  "
                              f"p99 {result['p99_ms']:.2f} ms  server CPU "
                              f"{result['server_cpu']:.0%} ({result['cpu_us']:.1f} us/req)  "
                              "generator CPU "
                              f"{result['generator_cpu']:.0%}", flush=True)
            report(results, levels, [server.name for server in compared])
        finally:
            for server in started:
                server.stop()
            greeter.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
