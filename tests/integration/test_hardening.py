"""policyd as a real process under abuse: idle floods, slow clients, SIGHUP storms, root start.

No Postfix here: these tests talk the policy protocol to backupmx-policyd directly.
"""
from __future__ import annotations

import os
import pwd
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import pytest

from tests.harness.daemons import Daemon, policy_reply, start_policyd
from tests.harness.lab import eventually
from tests.harness.postfix import _searchable as searchable
from tests.harness.postfix import free_port

RCPT = (b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=198.51.100.7\n"
        b"sender=someone@far.test\nrecipient=%s\nqueue_id=4XyZ1A2B3C\n\n")


class Policyd:
    """A policyd process with its own configuration, map and metrics port."""

    def __init__(self, root: Path, start: Callable[[Path, Path], Daemon] = start_policyd,
                 **settings: str) -> None:
        self.root = root
        self.port = free_port()
        self.metrics_port = free_port()
        self.recipients = root / "relay_recipients"
        self.recipients.write_text("alice@example.test OK\n")
        policyd: Dict[str, str] = {
            "listen": f"inet:127.0.0.1:{self.port}", "recipients": str(self.recipients),
            "recipient_delimiter": "+", "metrics": f"inet:127.0.0.1:{self.metrics_port}",
            "probe_interval": "30", **settings}
        self.config = root / "backupmx.conf"
        self.config.write_text("[policyd]\n" + "".join(f"{k} = {v}\n" for k, v in policyd.items())
                               + "[domains]\nexample.test = [127.0.0.1]:9\n")
        self.daemon: Daemon = start(self.config, root / "policyd.log")

    def ask(self, recipient: str, sock: socket.socket = None) -> str:
        own = sock is None
        sock = sock or socket.create_connection(("127.0.0.1", self.port), timeout=10)
        try:
            sock.sendall(RCPT % recipient.encode())
            return policy_reply(sock).decode().strip()
        finally:
            if own:
                sock.close()

    def metric(self, name: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)


@pytest.fixture
def policyd(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Policyd]:
    settings = getattr(request, "param", {})
    daemon = Policyd(tmp_path, **settings)
    yield daemon
    daemon.daemon.stop()


@pytest.mark.parametrize("policyd", [{"idle_timeout": "2"}], indirect=True)
def test_idle_flood_and_slow_clients_do_not_starve_others(policyd: Policyd) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 5000:  # root may raise the hard limit; the daemon was started with the old one,
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 8192), max(hard, 8192)))
        policyd.daemon.stop()  # so start it again: it inherits the raised limit
        policyd.daemon = start_policyd(policyd.config, policyd.root / "policyd2.log")
    idle = [socket.create_connection(("127.0.0.1", policyd.port), timeout=10)
            for _ in range(2000)]
    try:
        assert eventually(lambda: policyd.metric("backupmx_policy_connections"),
                          lambda n: n >= 2000, timeout=10) >= 2000
        drip_results: List[str] = []

        def drip(seed: int) -> None:
            rng = random.Random(seed)
            with socket.create_connection(("127.0.0.1", policyd.port), timeout=30) as sock:
                for byte in b"protocol_state=RCPT\nrecipient=alice@example.test\n\n":
                    sock.sendall(bytes([byte]))
                    time.sleep(rng.uniform(0.05, 1.0) if rng.random() < 0.1 else
                               rng.uniform(0.05, 0.15))
                drip_results.append(sock.recv(100).decode().strip())

        drippers = [threading.Thread(target=drip, args=(n,)) for n in range(5)]
        for thread in drippers:
            thread.start()
        latencies = []
        with socket.create_connection(("127.0.0.1", policyd.port), timeout=10) as sock:
            for _ in range(300):
                started = time.perf_counter()
                assert policyd.ask("bob@example.test", sock).startswith("action=550 5.1.1")
                latencies.append(time.perf_counter() - started)
        latencies.sort()
        assert latencies[len(latencies) * 99 // 100] < 0.02, latencies[-10:]
        # the 2,000 idle connections are closed after idle_timeout; the drippers are not
        closed = eventually(lambda: sum(_closed(s) for s in idle), lambda n: n == len(idle),
                            timeout=15)
        assert closed == len(idle)
        for thread in drippers:
            thread.join(60)
        assert drip_results == ["action=DUNNO"] * 5
        assert policyd.daemon.alive()
    finally:
        for sock in idle:
            sock.close()


def _closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_sighup_storm_merges_reloads_and_keeps_answering(policyd: Policyd) -> None:
    before = policyd.daemon.log().count("reloaded ")
    policyd.recipients.write_text("alice@example.test OK\ncarol@example.test OK\n")
    for _ in range(100):
        os.kill(policyd.daemon.pid, signal.SIGHUP)
    assert eventually(lambda: policyd.ask("carol@example.test"), lambda r: r == "action=DUNNO")\
        == "action=DUNNO"
    time.sleep(0.5)  # let any queued reload finish before counting them
    reloads = policyd.daemon.log().count("reloaded ") - before
    assert 1 <= reloads <= 10, policyd.daemon.log()
    assert policyd.daemon.alive()
    assert policyd.ask("bob@example.test").startswith("action=550 5.1.1")
    assert policyd.metric("backupmx_reload_success") == 1


def test_metrics_count_decisions(policyd: Policyd) -> None:
    policyd.ask("bob@example.test")
    policyd.ask("someone@elsewhere.test")
    url = f"http://127.0.0.1:{policyd.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'backupmx_policy_decisions_total{domain="example.test",outcome="unknown_user"} 1.0' \
        in text
    assert 'backupmx_policy_decisions_total{domain="-",outcome="not_ours"} 1.0' in text
    assert policyd.metric("backupmx_policy_request_seconds_count") == 2
    assert policyd.metric("backupmx_recipient_map_keys") == 1


def start_as_root(config: Path, log: Path, timeout: float = 30.0) -> Daemon:
    """Start policyd and wait for READY=1 on a notify socket the dropped user can still reach
    (systemd's is world-writable; the harness's private one is not)."""
    folder = Path(tempfile.mkdtemp(prefix="notify-"))
    folder.chmod(0o755)
    address = folder / "notify.sock"
    argv = [sys.executable, "-m", "backupmx.policyd.main", "-c", str(config)]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        address.chmod(0o666)
        sock.settimeout(0.2)
        with open(log, "ab") as output:
            process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT,
                                       env=dict(os.environ, NOTIFY_SOCKET=str(address)))
        daemon = Daemon(argv, log, process)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and daemon.alive():
                try:
                    if b"READY=1" in sock.recv(4096):
                        return daemon
                except socket.timeout:
                    pass
        finally:
            address.unlink()
            folder.rmdir()
    daemon.kill()
    raise AssertionError(f"policyd not ready:\n{daemon.log()}")


def test_started_as_root_drops_to_the_configured_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test starts policyd as root: run the suite as root")
    searchable(tmp_path)  # the dropped user re-reads the map when it changes
    policyd = Policyd(tmp_path, user="nobody", start=start_as_root)
    try:
        check_dropped(policyd)
    finally:
        policyd.daemon.stop()


def check_dropped(policyd: Policyd) -> None:
    nobody = pwd.getpwnam("nobody")
    status = Path(f"/proc/{policyd.daemon.pid}/status").read_text()
    fields = {line.split(":")[0]: line.split()[1:] for line in status.splitlines()}
    assert fields["Uid"] == [str(nobody.pw_uid)] * 4
    assert fields["Gid"] == [str(nobody.pw_gid)] * 4
    assert policyd.ask("bob@example.test").startswith("action=550 5.1.1")  # bound before
    assert "running as nobody" in policyd.daemon.log()
    policyd.recipients.write_text("alice@example.test OK\nbob@example.test OK\n")
    assert eventually(lambda: policyd.ask("bob@example.test"),
                      lambda reply: reply == "action=DUNNO") == "action=DUNNO"
    assert "failed" not in policyd.daemon.log()
