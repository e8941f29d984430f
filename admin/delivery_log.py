"""What Postfix logged of its deliveries: the per-recipient result lines of smtp(8).

After every delivery attempt, Postfix's SMTP client logs one line per recipient (postconf(5)
``maillog_file``, or syslog, which on Debian 12 ends in the journal), for example::

    4Fq2Lk1x2Bz9: to=<bob@example.test>, relay=mx.example.test[192.0.2.1]:25, delay=3.1,
    delays=3/0.01/0.05/0.04, dsn=5.1.1, status=bounced (host mx.example.test[192.0.2.1] said:
    550 5.1.1 <bob@example.test>: Recipient address rejected (in reply to RCPT TO command))

``parse_delivery`` reads such a line (pure); ``DeliveryLog`` reads the lines Postfix wrote since a
moment, from ``maillog_file`` when Postfix has one, else from the journal (``journalctl``).
``outcome`` says what a line proves of its recipient for the callout cache: ``status=sent``
through the primary proves the address valid; a reply to ``RCPT TO`` from the primary saying the
mailbox does not exist (common.callout_rules.rcpt_verdict, the callouts' rule) proves it
invalid; nothing else proves anything (deferrals, other refusals, refusals after DATA, bounces
Postfix made itself with ``relay=none``, deliveries through another relay).
"""
from __future__ import annotations

import grp
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from typing import Collection, Iterator, List, Optional, Tuple

from backupmx.common.addresses import normalize_domain
from backupmx.common.callout_rules import INVALID, VALID, rcpt_verdict
from backupmx.common.config import PrimarySpec

#: the end of a 5xx reply to RCPT, as smtp(8) logs it ("in reply to RCPT TO command")
RCPT_REPLY = "(in reply to RCPT TO command)"
#: longest line read: a delivery line holds two addresses (at most 2 x 1,000 characters in
#: SMTP, RFC 5321 section 4.5.3.1) and a reply of up to a few lines
MAX_LINE = 8192
#: endings of rotated files that are compressed (not read)
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4")
#: seconds journalctl may take
JOURNAL_TIMEOUT = 30.0

_DELIVERY = re.compile(
    r"\b(?P<queue_id>[0-9A-Za-z]{5,}): to=<(?P<recipient>.*?)>, (?:orig_to=<(?P<orig_to>.*?)>, )?"
    r"relay=(?P<relay>[^,]+), .*?\bdsn=(?P<dsn>[245]\.\d{1,3}\.\d{1,3}), "
    r"status=(?P<status>[a-z]+) \((?P<reply>.*)\)\s*$")
_SAID = re.compile(r" said: (?P<code>[2-5]\d\d)[ -](?P<text>.*)$")
_RELAY = re.compile(r"^(?P<host>[^\[\s]+)\[(?P<address>[^\]]*)\](?::(?P<port>\d+))?$")


@dataclass(frozen=True)
class Delivery:
    """One recipient's result in one delivery attempt: ``relay`` as logged
    (``host[address]:port`` or ``none``), ``dsn`` the RFC 3463 status code, ``status``
    Postfix's word (sent, deferred, bounced, ...), ``reply`` the text in parentheses."""

    queue_id: str
    recipient: str
    relay: str
    dsn: str
    status: str
    reply: str
    orig_to: str = ""  # the address before Postfix rewrote it, when it did


def parse_delivery(line: str) -> Optional[Delivery]:
    """The Delivery a log line reports, or None when it is no such line (or longer than
    MAX_LINE characters, which no delivery line of Postfix is)."""
    if len(line) > MAX_LINE:
        return None
    match = _DELIVERY.search(line)
    if match is None:
        return None
    return Delivery(match["queue_id"], match["recipient"], match["relay"], match["dsn"],
                    match["status"], match["reply"], match["orig_to"] or "")


def _same_host(a: str, b: str) -> bool:
    """Host names compared as Postfix would (case, a trailing dot), addresses by value."""
    try:
        return ipaddress.ip_address(a.strip("[]")) == ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return normalize_domain(a) == normalize_domain(b)


def via_primary(relay: str, primary: PrimarySpec) -> bool:
    """Whether a logged relay is the primary: for a fixed ``[host]:port`` the host (by name or
    address) and the port must match; for an ``mx`` primary any relay Postfix found counts, as
    Postfix chose it from the domain's MX set, the set the primary is defined by."""
    match = _RELAY.match(relay.strip())
    if match is None:
        return False  # "none", "local", a socket path: Postfix did not reach a host
    if primary.lookup_mx:
        return True
    port = int(match["port"]) if match["port"] else None
    host = primary.host or ""
    return ((_same_host(host, match["host"]) or _same_host(host, match["address"]))
            and port in (None, primary.port))


def outcome(delivery: Delivery, primary: PrimarySpec) -> Optional[str]:
    """VALID, INVALID or None (proves nothing) for the callout cache (module docstring): the
    primary's reply to RCPT is judged by the callouts' own rule (common.callout_rules.
    rcpt_verdict), so a refused sender or client, a full mailbox or a policy refusal proves
    nothing about the recipient."""
    if not via_primary(delivery.relay, primary):
        return None
    if delivery.status == "sent" and delivery.dsn.startswith("2"):
        return VALID
    if delivery.status != "bounced" or not delivery.reply.endswith(RCPT_REPLY):
        return None
    said = _SAID.search(delivery.reply)
    if said is None:
        return None
    text = said["text"][:-len(RCPT_REPLY)].rstrip()
    return INVALID if rcpt_verdict(int(said["code"]), text) == INVALID else None


def may_read_journal() -> bool:
    """Whether this process may read every entry of the system journal (journalctl(1): root
    and the members of the groups systemd-journal, adm and wheel)."""
    if os.geteuid() == 0:
        return True
    groups = set(os.getgroups()) | {os.getegid()}
    for name in ("systemd-journal", "adm", "wheel"):
        try:
            if grp.getgrnam(name).gr_gid in groups:
                return True
        except KeyError:
            continue
    return False


def _kill_group(process: "subprocess.Popen[str]") -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # already gone


class LogUnavailable(Exception):
    """Postfix's delivery log cannot be read; the message says why and what to do."""


class DeliveryLog:
    """The delivery lines Postfix logged since a moment (the start of a flush).

    ``maillog_file``: Postfix's parameter (empty: Postfix logs to syslog, read from the journal
    by ``journalctl``); ``since``: Unix seconds. ``deliveries`` reads the log as a stream,
    keeping only the lines of the messages asked about, so a day of a busy log costs no more
    memory than those lines.
    """

    def __init__(self, maillog_file: str, since: float) -> None:
        self.maillog_file = maillog_file
        self.since = since
        self._offset = 0
        self._inode: Optional[int] = None

    @classmethod
    def open(cls, maillog_file: str, since: float, at_end: bool = True) -> "DeliveryLog":
        """The log from ``since`` on; with ``at_end`` (a flush starting now) a ``maillog_file``
        is read from where it ends now, else whole. Raises LogUnavailable (no file, no
        journal, a journal this user may not read)."""
        log = cls(maillog_file, since)
        if log.uses_file:
            try:
                status = os.stat(maillog_file)
            except OSError as error:
                raise LogUnavailable(f"Postfix's maillog_file {maillog_file}: "
                                     f"{error.strerror}") from None
            if at_end:
                log._offset, log._inode = status.st_size, status.st_ino
        elif maillog_file:
            raise LogUnavailable(f"Postfix logs to {maillog_file}, which cannot be read back: "
                                 "set Postfix's maillog_file to a file, or log to the journal")
        elif shutil.which("journalctl") is None or not os.path.isdir("/run/systemd/journal"):
            raise LogUnavailable("Postfix logs to syslog and there is no systemd journal to read "
                                 "it from: set Postfix's maillog_file")
        elif not may_read_journal():
            # journalctl would show this user's own entries only, and exit 0
            raise LogUnavailable("this user may not read the system journal: run as root or "
                                 "as a member of group systemd-journal or adm")
        return log

    @property
    def uses_file(self) -> bool:
        return bool(self.maillog_file) and not self.maillog_file.startswith("/dev/")

    def deliveries(self, queue_ids: Collection[str]) -> List[Delivery]:
        """The Delivery lines of the messages ``queue_ids``, in log order. Raises
        LogUnavailable when the file or the journal cannot be read."""
        wanted = set(queue_ids)
        found = []
        lines = self._file_lines() if self.uses_file else self._journal_lines()
        for line in lines:
            if " to=<" not in line:  # most lines: no regular expression
                continue
            delivery = parse_delivery(line)
            if delivery is not None and delivery.queue_id in wanted:
                found.append(delivery)
        return found

    def _files(self) -> List[Tuple[str, int]]:
        """(path, offset) of the files that hold the lines since the start, oldest first: a
        file rotated away since (``postfix logrotate`` renames it beside the new one; a
        compressed one is not read) before the current one."""
        folder = os.path.dirname(self.maillog_file) or "."
        base = os.path.basename(self.maillog_file)
        current = os.stat(self.maillog_file)
        if self._inode is not None:
            if current.st_ino == self._inode and current.st_size >= self._offset:
                return [(self.maillog_file, self._offset)]
            rotated = [entry.path for entry in os.scandir(folder)
                       if entry.name.startswith(base + ".")
                       and entry.inode() == self._inode]
            return [(path, self._offset) for path in rotated[:1]] + [(self.maillog_file, 0)]
        # read whole (a flush learned from later): the rotated files written to since then
        older = []
        for entry in os.scandir(folder):
            if (entry.name.startswith(base + ".") and not entry.name.endswith(COMPRESSED)
                    and entry.is_file() and entry.stat().st_mtime >= self.since):
                older.append((entry.stat().st_mtime, entry.path))
        return [(path, 0) for _, path in sorted(older)] + [(self.maillog_file, 0)]

    def _file_lines(self) -> Iterator[str]:
        try:
            for path, offset in self._files():
                with open(path, "rb") as log:
                    log.seek(offset)
                    for raw in log:
                        yield raw.decode("utf-8", "replace")
        except OSError as error:
            raise LogUnavailable(f"Postfix's maillog_file {self.maillog_file}: "
                                 f"{error.strerror}") from None

    def _journal_lines(self) -> Iterator[str]:
        # the mail facility (2) holds every Postfix program whatever its syslog_name; a
        # second before the start, as --since counts whole seconds
        command = ["journalctl", "--quiet", "--no-pager", "--output=cat", "SYSLOG_FACILITY=2",
                   f"--since=@{int(self.since) - 1}"]
        with tempfile.TemporaryFile() as errors:  # a file: a full pipe would stall journalctl
            try:
                # a session of its own, so the watchdog ends whatever it started too
                process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors,
                                           text=True, errors="replace", start_new_session=True)
            except OSError as error:
                raise LogUnavailable(f"journalctl: {error}") from None
            watchdog = threading.Timer(JOURNAL_TIMEOUT, _kill_group, (process,))
            watchdog.start()
            try:
                assert process.stdout is not None
                yield from process.stdout
                status = process.wait()
            finally:
                watchdog.cancel()
                if process.poll() is None:
                    _kill_group(process)
                    process.wait()
                process.stdout.close()  # type: ignore[union-attr]
            errors.seek(0)
            error_text = errors.read(4096).decode("utf-8", "replace")
        if status != 0:
            detail = error_text.strip().splitlines()
            why = "timed out" if status < 0 else (detail[-1] if detail else f"exit {status}")
            raise LogUnavailable(f"journalctl: {why}")
