"""The baseline: a bare Twisted LineReceiver answering every request ``action=DUNNO``, no logic.

It frames lines exactly like a policy server must (delimiter LF, reply on the empty line), so the
difference between it and backupmx-policyd is the cost of decoding, deciding and logging.
Listens on 127.0.0.1, port 0, and prints the chosen port on stdout once it accepts connections.

With ``--writethrough`` it sends its replies the way policyd does
(``backupmx.policyd.writethrough``: at once when nothing is queued): a second baseline that
isolates what policyd's own logic costs.
"""
from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

from backupmx.policyd.writethrough import writer_for

REPLY = b"action=DUNNO\n\n"


class BareDunno(LineReceiver):
    delimiter = b"\n"

    def lineReceived(self, line: bytes) -> None:
        if not line:
            self.transport.write(REPLY)


class BareDunnoWritethrough(BareDunno):
    def connectionMade(self) -> None:
        self.write = writer_for(self.transport)

    def lineReceived(self, line: bytes) -> None:
        if not line:
            self.write(REPLY)


def main() -> int:
    protocol = BareDunnoWritethrough if "--writethrough" in sys.argv[1:] else BareDunno
    factory = Factory.forProtocol(protocol)
    factory.noisy = False
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
