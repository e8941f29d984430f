"""A real DNS server (twisted.names) on 127.0.0.1, port 0, answering from a list of records."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from twisted.internet import reactor
from twisted.names import authority, dns, server


class Zone(authority.FileAuthority):
    """An authority built from a list of (name, record) pairs instead of a zone file."""

    def __init__(self, origin: str, records: List[Tuple[str, Any]]) -> None:
        self._origin = origin
        self._records = records
        super().__init__(origin)

    def loadFile(self, filename: str) -> None:
        soa = dns.Record_SOA(mname=b"ns." + self._origin.encode(), rname=b"root", serial=1,
                             refresh=60, retry=60, expire=60, minimum=60)
        self.soa = (self._origin.encode(), soa)
        self.records: Dict[bytes, List[Any]] = {self._origin.encode(): [soa]}
        for name, record in self._records:
            self.records.setdefault(name.encode().lower(), []).append(record)


def fake_dns(records: List[Tuple[str, Any]]) -> Tuple[Any, int]:
    """A UDP DNS server on 127.0.0.1, port 0, answering for the zone ``test``."""
    factory = server.DNSServerFactory(authorities=[Zone("test", records)])
    port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    return port, port.getHost().port
