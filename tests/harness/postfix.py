"""A private, throwaway Postfix instance on loopback, for tests and the demo.

One folder holds etc/ (config_directory), spool/ (queue_directory), data/ and the mail log; the
system's /etc/postfix is never touched. The traps it avoids are listed in the project's Postfix
notes: folders searchable by the postfix user, data/ created by Postfix itself, main.cf backdated
after each write, no chroot, 127.0.0.1 kept out of mynetworks so relay rules apply to the tests.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

SERVICES = """\
{smtpd_listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for daemons that need a number)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _searchable(path: Path) -> None:
    """Make path and its parents traversable by the postfix user (mktemp makes 0700)."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if mode & 0o011 != 0o011:
            folder.chmod(mode | 0o011)


class PostfixError(RuntimeError):
    pass


class PostfixInstance:
    """A private Postfix acting as backup MX for relay_domains, each relayed to a local port."""

    def __init__(
        self,
        root: Path,
        smtpd_port: int,
        relay_domains: Dict[str, int],
        policy: Optional[str] = None,
        milter: Optional[str] = None,
        extra_main_cf: Optional[Dict[str, str]] = None,
    ) -> None:
        self.root = Path(root)
        self.smtpd_port = smtpd_port
        self.relay_domains = dict(relay_domains)
        self.policy = policy
        self.milter = milter
        self.extra_main_cf = dict(extra_main_cf or {})
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "spool"
        self.log_dir = self.root / "log"
        self.log_file = self.log_dir / "maillog"
        self.running = False

    # ---- configuration ---------------------------------------------------------------------

    def main_cf(self) -> Dict[str, str]:
        restrictions = ["permit_mynetworks", "reject_unauth_destination"]
        if self.policy:
            restrictions.append(f"check_policy_service {{ {self.policy}, timeout=10s }}")
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.root / "data"),
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": f"/var, /dev/stdout, {self.log_dir}",
            "myhostname": "backupmx.test",
            "mydomain": "backupmx.test",
            "myorigin": "backupmx.test",
            "mydestination": "",
            "inet_protocols": "ipv4",
            "inet_interfaces": "127.0.0.1",
            "mynetworks": "127.0.0.2/32",
            "smtp_dns_support_level": "disabled",
            "relay_domains": ", ".join(self.relay_domains),
            "transport_maps": f"texthash:{self.config_dir / 'transport'}",
            "fast_flush_domains": "$relay_domains",
            "maximal_queue_lifetime": "30d",
            "bounce_queue_lifetime": "30d",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": ", ".join(restrictions),
            "milter_default_action": "accept",
            "smtpd_milters": f"{{ {self.milter}, default_action=accept }}" if self.milter else "",
            "smtp_connect_timeout": "5s",
            "biff": "no",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
        }
        settings.update(self.extra_main_cf)
        return settings

    def write_config(self) -> None:
        for folder in (self.config_dir, self.queue_dir, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        _searchable(self.root)
        main_cf = self.config_dir / "main.cf"
        main_cf.write_text("".join(f"{k} = {v}\n" for k, v in self.main_cf().items()))
        (self.config_dir / "master.cf").write_text(
            SERVICES.format(smtpd_listen=f"127.0.0.1:{self.smtpd_port}"))
        (self.config_dir / "transport").write_text("".join(
            f"{domain} relay:[127.0.0.1]:{port}\n" for domain, port in self.relay_domains.items()))
        # Postfix commands stall re-reading a main.cf written in the last ~2 s: backdate it.
        past = time.time() - 10
        for name in ("main.cf", "master.cf", "transport"):
            os.utime(self.config_dir / name, (past, past))

    # ---- lifecycle -------------------------------------------------------------------------

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a Postfix tool against this instance (``-c`` config_dir)."""
        result = subprocess.run([tool, "-c", str(self.config_dir), *args], capture_output=True,
                                text=True, timeout=60)
        if check and result.returncode != 0:
            raise PostfixError(f"{tool} {' '.join(args)} failed ({result.returncode}): "
                               f"{result.stderr.strip()}\n--- maillog ---\n{self.maillog()}")
        return result

    def start(self) -> None:
        self.write_config()
        self.run("postfix", "start")
        self.running = True

    def reload(self) -> None:
        self.write_config()
        self.run("postfix", "reload")

    def stop(self) -> None:
        if self.running:
            self.run("postfix", "stop", check=False)
            self.running = False

    # ---- observation -----------------------------------------------------------------------

    def queue(self) -> List[dict]:
        """The queued messages as ``postqueue -j`` describes them."""
        output = self.run("postqueue", "-j").stdout
        return [json.loads(line) for line in output.splitlines() if line.strip()]

    def flush_all(self) -> None:
        self.run("postqueue", "-f")

    def delete_queue(self) -> None:
        self.run("postsuper", "-d", "ALL", check=False)

    def maillog(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""
