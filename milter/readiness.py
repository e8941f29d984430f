"""The milter's readiness for systemd (``Type=notify``): READY=1 once its socket listens.

libmilter binds and listens inside ``smfi_main`` (``Milter.runmilter``), which only returns when
the milter stops and has no "now listening" callback. So a daemon thread polls the kernel's socket
tables (``/proc/self/net/unix``, ``tcp`` and ``tcp6``, see proc(5)) until the configured
socket is in the listening state, then sends ``READY=1``: systemd starts Postfix (ordered after
the milter) only when a connection to the milter can succeed.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Iterable

from backupmx.common.listen import ListenAddress

# The process's own view (its network namespace), present even under systemd's ProcSubset=pid,
# which hides /proc/net.
PROC_NET = "/proc/self/net"
POLL_INTERVAL = 0.01  # seconds; libmilter listens within milliseconds of starting
_UNIX_ACCEPTCON = 0x10000  # __SO_ACCEPTCON in /proc/net/unix Flags: listen() was called
_TCP_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp "st"


def unix_listening(table: str, path: str) -> bool:
    """Whether /proc/net/unix text lists ``path`` as a listening socket.

    Columns: Num RefCount Protocol Flags Type St Inode Path (hexadecimal flags).
    """
    for line in table.splitlines()[1:]:
        fields = line.split(None, 7)
        if len(fields) == 8 and fields[7] == path and int(fields[3], 16) & _UNIX_ACCEPTCON:
            return True
    return False


def tcp_listening(tables: Iterable[str], port: int) -> bool:
    """Whether /proc/net/tcp or tcp6 text lists a socket listening on ``port`` (any address).

    Columns: sl local_address rem_address st ...; local_address is ``HEXADDR:HEXPORT``.
    """
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[3] == _TCP_LISTEN \
                    and int(fields[1].rpartition(":")[2], 16) == port:
                return True
    return False


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read()
    except FileNotFoundError:  # e.g. no IPv6 in this kernel: no tcp6 table
        return ""


def is_listening(address: ListenAddress, proc_net: str = PROC_NET) -> bool:
    """Whether the kernel shows ``address`` (a [milter] listen value) as listening now."""
    if address.kind == "unix":
        return unix_listening(_read(f"{proc_net}/unix"), address.path)
    return tcp_listening((_read(f"{proc_net}/tcp"), _read(f"{proc_net}/tcp6")), address.port)


def announce_when_listening(address: ListenAddress, notify: Callable[[str], object],
                            poll_interval: float = POLL_INTERVAL,
                            proc_net: str = PROC_NET) -> threading.Thread:
    """Start a daemon thread that sends ``READY=1`` through ``notify`` once ``address`` listens.

    It polls until then; if the milter never listens (libmilter failed), the process exits and
    the thread with it, and systemd reports the start as failed.
    """
    def watch() -> None:
        while not is_listening(address, proc_net):
            time.sleep(poll_interval)
        notify(f"READY=1\nSTATUS=listening on {address}")

    thread = threading.Thread(target=watch, name="readiness", daemon=True)
    thread.start()
    return thread
