"""The milter's READY=1 waits for a listening socket, read from the kernel's own tables."""
from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import List

from backupmx.common.listen import parse_listen
from backupmx.milter.readiness import (
    announce_when_listening,
    is_listening,
    tcp_listening,
    unix_listening,
)

UNIX_TABLE = """Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 41234 /run/a.sock
0000000000000000: 00000002 00000000 00000000 0001 01 41235 /run/bound-only.sock
0000000000000000: 00000003 00000000 00000000 0001 03 41236
"""
TCP_TABLE = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
   0: 0100007F:22BA 00000000:0000 0A 00000000:00000000 00:00000000 00000000   109
   1: 0100007F:22BB 0100007F:9C40 01 00000000:00000000 00:00000000 00000000   109
"""


def test_unix_table_needs_the_listening_flag() -> None:
    assert unix_listening(UNIX_TABLE, "/run/a.sock")
    assert not unix_listening(UNIX_TABLE, "/run/bound-only.sock")
    assert not unix_listening(UNIX_TABLE, "/run/absent.sock")


def test_tcp_table_needs_the_listen_state() -> None:
    assert tcp_listening([TCP_TABLE], 8890)
    assert not tcp_listening([TCP_TABLE], 8891)  # connected, not listening
    assert not tcp_listening(["", TCP_TABLE.splitlines()[0]], 8890)


def test_a_real_unix_socket_counts_only_once_it_listens(tmp_path: Path) -> None:
    path = tmp_path / "milter.sock"
    address = parse_listen(f"unix:{path}:0660")
    assert not is_listening(address)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        assert not is_listening(address)  # bound: connections would still be refused
        server.listen()
        assert is_listening(address)


def test_a_real_tcp_port_counts_once_it_listens() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        address = parse_listen(f"inet:127.0.0.1:{server.getsockname()[1]}")
        assert not is_listening(address)
        server.listen()
        assert is_listening(address)


def test_ready_is_sent_once_after_listen(tmp_path: Path) -> None:
    path = tmp_path / "milter.sock"
    sent: List[str] = []
    announced = threading.Event()

    def notify(state: str) -> None:
        sent.append(state)
        announced.set()

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        thread = announce_when_listening(parse_listen(f"unix:{path}"), notify)
        assert not announced.wait(0.1)  # still only bound
        server.listen()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(sent) == 1 and sent[0].startswith("READY=1\n")
