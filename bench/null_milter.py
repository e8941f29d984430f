"""A pymilter milter that does nothing: the cost any pymilter milter adds, as a baseline.

It asks for the same callbacks as backupmx-milter (connect, helo, MAIL FROM, RCPT TO, end of
message; no header and no body, like it) and answers CONTINUE.
Usage: python bench/null_milter.py unix:/path/to/socket
"""
from __future__ import annotations

import os
import sys

import Milter


class NullMilter(Milter.Base):
    def __init__(self) -> None:
        pass

    @Milter.noreply
    def connect(self, hostname: str, family: int, hostaddr: object) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, hostname: str) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def envfrom(self, sender: str, *params: str) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def envrcpt(self, recipient: str, *params: str) -> int:
        return Milter.CONTINUE

    def eom(self) -> int:
        return Milter.CONTINUE


if __name__ == "__main__":
    os.umask(0)  # the socket must be writable by Postfix's user
    Milter.factory = NullMilter
    Milter.runmilter("null", sys.argv[1], 240)
