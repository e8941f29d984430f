"""What a backupmx daemon needs from its host: readiness, sockets, privileges, log priorities.

No Twisted here (the milter is a pymilter process and must not load Twisted): functions that bind
with a reactor take the reactor as an argument.
"""
from __future__ import annotations

import os
import pwd
import socket
import stat
from typing import Any, Optional

from backupmx.common.listen import ListenAddress

#: syslog priority (RFC 5424 severity) by level name, for the ``<N>`` prefixes journald reads
#: from a service's stderr (sd-daemon(3)); names are those of twisted.logger and logging alike
SYSLOG_PRIORITY = {"critical": 2, "error": 3, "warn": 4, "warning": 4, "info": 6, "debug": 7}


def syslog_prefix(level_name: str) -> str:
    """``<N>`` for a level name (``"warn"``, ``"WARNING"`` ...); unknown levels are info."""
    return f"<{SYSLOG_PRIORITY.get(level_name.lower(), 6)}>"


def journald_stream() -> bool:
    """True when stderr goes to journald (systemd sets $JOURNAL_STREAM, systemd.exec(5))."""
    return bool(os.environ.get("JOURNAL_STREAM"))


def notify(state: str) -> bool:
    """Send a state (``READY=1``, ``STOPPING=1``, ``RELOADING=1``) to $NOTIFY_SOCKET, if set.

    sd_notify(3)'s protocol: one datagram to the unix socket named by $NOTIFY_SOCKET (a leading
    ``@`` names an abstract socket). Returns whether it was sent.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:  # the supervisor went away; readiness is a courtesy, not a duty
        return False
    return True


def remove_stale_socket(path: str) -> None:
    """A unix socket left by a previous run blocks bind(); remove it, but nothing else."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


# Twisted's default listen backlog is 50: when every smtpd process (100 by default) reconnects
# at once, e.g. after a restart, the surplus SYNs are dropped and each of those clients waits a
# full second for the retransmission.
LISTEN_BACKLOG = 1024


def listen(reactor: Any, address: ListenAddress, factory: Any) -> Any:
    """Bind a listening port now on a Twisted reactor (raises CannotListenError).

    TCP, or a unix socket with its mode (a stale socket file is removed first).
    """
    if address.kind == "unix":
        remove_stale_socket(address.path)
        return reactor.listenUNIX(address.path, factory, mode=address.mode,
                                  backlog=LISTEN_BACKLOG)
    return reactor.listenTCP(address.port, factory, backlog=LISTEN_BACKLOG,
                             interface=address.host)


def bound_address(port: Any, address: ListenAddress) -> str:
    """The address actually bound (port 0 becomes the chosen port), in config syntax."""
    if address.kind == "unix":
        return str(address)
    host = port.getHost()
    return str(ListenAddress("inet", host=address.host, port=host.port))


def drop_privileges(user: Optional[str]) -> Optional[str]:
    """Become ``user`` (after binding) when started as root; returns what was done, if anything.

    Raises KeyError when the user does not exist, OSError when the kernel refuses.
    """
    if not user or os.getuid() != 0:
        return None
    entry = pwd.getpwnam(user)
    os.setgroups(os.getgrouplist(entry.pw_name, entry.pw_gid))
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.environ["HOME"] = entry.pw_dir
    return f"running as {user} (uid {entry.pw_uid})"
