"""A whole backup-MX on loopback: private Postfix + real policyd (+ milter) + fake primaries.

Used by the integration tests and by the demo. Every port is chosen free at start; every file
lives under ``root``.
"""
from __future__ import annotations

import re
import smtplib
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple, TypeVar

from tests.harness.daemons import Daemon, start_milter, start_policyd
from tests.harness.postfix import PostfixInstance, free_port
from tests.harness.primary import FakePrimary

REPO = Path(__file__).resolve().parents[2]

T = TypeVar("T")
DEFAULT_USERS = ("alice", "bob", "postmaster")


def eventually(probe: Callable[[], T], accept: Callable[[T], bool], timeout: float = 20.0,
               interval: float = 0.1) -> T:
    """Call probe until accept(result) or timeout; return the last result either way."""
    deadline = time.monotonic() + timeout
    result = probe()
    while not accept(result) and time.monotonic() < deadline:
        time.sleep(interval)
        result = probe()
    return result


class BackupMxLab:
    """Builds and runs the pieces; ``close()`` stops them all."""

    def __init__(
        self,
        root: Path,
        domains: Iterable[str] = ("example.test",),
        milter: bool = False,
        users: Iterable[str] = DEFAULT_USERS,
        sender_networks: str = "@partner.test 127.0.0.1/32, ::1/128\n",
        policyd_settings: Optional[Dict[str, str]] = None,
        policy_socket: str = "inet",
        extra_config: str = "",
        postfix_settings: Optional[Dict[str, str]] = None,
        extra_main_cf: Optional[Dict[str, str]] = None,
    ) -> None:
        """``extra_config``: more sections for backupmx.conf (``[recipients NAME]``);
        ``postfix_settings``: more keys of its ``[postfix]``; ``extra_main_cf``: main.cf
        settings of the private Postfix."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.domains = list(domains)
        self.with_milter = milter
        self.primaries: Dict[str, FakePrimary] = {d: FakePrimary(free_port()) for d in self.domains}
        self.policy_port = free_port()
        self.policy_socket_path = self.root / "policyd.sock"
        if policy_socket == "unix":
            self.policy_listen = f"unix:{self.policy_socket_path}:0666"
            postfix_policy = f"unix:{self.policy_socket_path}"
        else:
            self.policy_listen = postfix_policy = f"inet:127.0.0.1:{self.policy_port}"
        self.milter_port = free_port()
        self.recipients_path = self.root / "relay_recipients"
        self.networks_path = self.root / "sender_networks"
        self.config_path = self.root / "backupmx.conf"
        self.ledger_path = self.root / "ledger.sqlite3"
        self.extra_config = extra_config
        self.postfix_settings = dict(postfix_settings or {})
        self.recipients_path.write_text("# valid recipients\n" + "".join(
            f"{user}@{domain} OK\n" for domain in self.domains for user in users))
        self.networks_path.write_text(sender_networks)
        self.postfix = PostfixInstance(
            self.root / "postfix", free_port(),
            {d: p.port for d, p in self.primaries.items()},
            policy=postfix_policy,
            milter=f"inet:127.0.0.1:{self.milter_port}" if milter else None,
            extra_main_cf=extra_main_cf,
        )
        self.write_config(policyd_settings or {})
        self.policyd: Optional[Daemon] = None
        self.milter: Optional[Daemon] = None

    def write_config(self, policyd_settings: Dict[str, str]) -> None:
        policyd = {
            "listen": self.policy_listen,
            "recipients": str(self.recipients_path),
            "sender_networks": str(self.networks_path),
            "recipient_delimiter": "+",
            "probe_interval": "0.5",
            "probe_timeout": "2",
            "map_check_interval": "0.2",
            "log_accepts": "yes",
            **policyd_settings,
        }
        lines = ["[policyd]", *(f"{k} = {v}" for k, v in policyd.items()),
                 "", "[milter]", f"listen = inet:127.0.0.1:{self.milter_port}",
                 f"ledger = {self.ledger_path}",
                 "", "[postfix]", f"config_directory = {self.postfix.config_dir}",
                 *(f"{k} = {v}" for k, v in self.postfix_settings.items()),
                 "", "[domains]",
                 *(f"{d} = [127.0.0.1]:{p.port}" for d, p in self.primaries.items()), "",
                 self.extra_config]
        self.config_path.write_text("\n".join(lines))

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> "BackupMxLab":
        try:
            self.postfix.write_config()  # policyd reads relay_domains from it at start
            self.start_policyd()
            if self.with_milter:
                self.start_milter()
            self.postfix.start()
        except BaseException:
            self.close()
            raise
        return self

    def start_policyd(self) -> Daemon:
        self.policyd = start_policyd(self.config_path, self.root / "policyd.log")
        return self.policyd

    def start_milter(self) -> Daemon:
        self.milter = start_milter(self.config_path, self.root / "milter.log", "127.0.0.1",
                                   self.milter_port)
        return self.milter

    def close(self) -> None:
        self.postfix.stop()
        for daemon in (self.policyd, self.milter):
            if daemon is not None:
                daemon.stop()
        for primary in self.primaries.values():
            primary.stop()

    def primary(self, domain: str) -> FakePrimary:
        return self.primaries[domain]

    def command(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run the ``backupmx`` command on the lab's configuration (as the admin would)."""
        return subprocess.run([sys.executable, "-m", "backupmx.admin.main", "-c",
                               str(self.config_path), *args], capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)

    # ---- SMTP client -----------------------------------------------------------------------

    def smtp(self) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.postfix.smtpd_port, timeout=60)
        client.ehlo("client.test")
        return client

    def rcpt(self, recipient: str, sender: str = "someone@sender.test") -> Tuple[int, str]:
        """The reply to RCPT TO in a fresh session (no message is sent)."""
        with self.smtp() as client:
            client.mail(sender)
            code, text = client.rcpt(recipient)
            return code, text.decode(errors="replace")

    def send(self, recipients: List[str], sender: str = "someone@sender.test",
             body: str = "Hello from the backup MX test.\n") -> str:
        """Send one message; returns Postfix's queue id. Raises smtplib errors on refusal."""
        message = (f"From: <{sender}>\r\nTo: {', '.join(recipients)}\r\n"
                   f"Subject: test\r\n\r\n{body}")
        with self.smtp() as client:
            client.mail(sender)
            for recipient in recipients:
                code, text = client.rcpt(recipient)
                if code != 250:
                    raise smtplib.SMTPRecipientsRefused({recipient: (code, text)})
            code, text = client.data(message.encode())
            if code != 250:
                raise smtplib.SMTPDataError(code, text)
        match = re.search(rb"queued as ([0-9A-Za-z]+)", text)
        if not match:
            raise AssertionError(f"no queue id in {text!r}")
        return match.group(1).decode()
