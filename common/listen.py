"""Listen addresses as written in backupmx.conf, and their form for libmilter.

One syntax for both daemons, close to Postfix's own: ``inet:HOST:PORT``, ``inet:[IPv6]:PORT``,
``unix:PATH`` and ``unix:PATH:MODE`` (octal socket mode, so the postfix user can connect).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional

DEFAULT_UNIX_MODE = 0o666


@dataclass(frozen=True)
class ListenAddress:
    """Where a daemon listens: a TCP host and port, or a unix socket path and mode."""

    kind: str  # "inet" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""
    mode: int = DEFAULT_UNIX_MODE

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}:{self.mode:04o}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"inet:{host}:{self.port}"

    def libmilter_socket(self) -> str:
        """The socket string of libmilter's smfi_setconn: inet:PORT@HOST, inet6:..., unix:PATH."""
        if self.kind == "unix":
            return f"unix:{self.path}"
        family = "inet6" if ":" in self.host else "inet"
        return f"{family}:{self.port}@{self.host}"


def parse_listen(text: str) -> ListenAddress:
    """Parse ``inet:HOST:PORT``, ``inet:[V6]:PORT`` or ``unix:PATH[:MODE]``; ValueError if bad."""
    kind, sep, rest = text.strip().partition(":")
    if not sep or kind not in ("inet", "unix"):
        raise ValueError(f"{text!r}: expected inet:HOST:PORT, inet:[IPv6]:PORT or unix:PATH[:MODE]")
    if kind == "unix":
        return _parse_unix(rest, text)
    return _parse_inet(rest, text)


def _parse_unix(rest: str, text: str) -> ListenAddress:
    path, mode = rest, DEFAULT_UNIX_MODE
    head, sep, tail = rest.rpartition(":")
    if sep and tail and all(c in "01234567" for c in tail):
        path, mode = head, int(tail, 8)
        if mode > 0o777:
            raise ValueError(f"{text!r}: socket mode {tail} is not a file mode")
    if not path.startswith("/"):
        raise ValueError(f"{text!r}: unix socket path must be absolute")
    return ListenAddress("unix", path=path, mode=mode)


def _parse_inet(rest: str, text: str) -> ListenAddress:
    if rest.startswith("["):
        _check_ip(rest[1:].partition("]")[0], text)
    host, port, _ = split_host_port(rest, None, text)
    return ListenAddress("inet", host=host, port=port)


def split_host_port(text: str, default_port: Optional[int],
                    what: Optional[str] = None) -> "tuple[str, int, bool]":
    """``host:port``, ``[host]:port``, ``[IPv6]:port``, and with a default port also ``host``
    and ``[host]`` -> (host, port, bracketed). The one host-and-port syntax of backupmx.

    An IPv6 address must be in brackets (``[::1]:53``). Raises ValueError naming ``what``
    (default: the text) when the port is missing, not a number or out of 0-65535.
    """
    what = what if what is not None else text
    if text.startswith("["):
        host, sep, tail = text[1:].partition("]")
        if not sep or not host:
            raise ValueError(f"{what!r}: expected [HOST]:PORT")
        if not tail and default_port is not None:
            return host, default_port, True
        if not tail.startswith(":"):
            raise ValueError(f"{what!r}: expected [HOST]:PORT")
        return host, _parse_port(tail[1:], what), True
    host, sep, port_text = text.rpartition(":")
    if not sep and default_port is not None and text:
        return text, default_port, False
    if not sep or not host:
        raise ValueError(f"{what!r}: expected HOST:PORT")
    if ":" in host:
        raise ValueError(f"{what!r}: write IPv6 addresses in brackets, [::1]:PORT")
    return host, _parse_port(port_text, what), False


def _check_ip(host: str, text: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None


def _parse_port(port_text: str, text: str) -> int:
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: port must be a number from 0 to 65535")
    return int(port_text)


def parse_host_port(text: str, default_port: int) -> "tuple[str, int]":
    """Parse a Postfix-style next hop ``[host]:port`` or ``[host]`` (brackets: no MX lookup)."""
    if not text.startswith("[") or "]" not in text[1:] or text.startswith("[]"):
        raise ValueError(f"{text!r}: expected [HOST]:PORT, [HOST] or mx")
    host, port, _ = split_host_port(text, default_port)
    if port == 0:
        raise ValueError(f"{text!r}: port 0 is not a primary MX port")
    return host, port


def optional_listen(text: str) -> Optional[ListenAddress]:
    """An empty value switches an optional listener off."""
    return parse_listen(text) if text.strip() else None
