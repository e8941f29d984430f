"""The SMTP client of the systemd test, run inside the booted container with Debian's python3.

    smtp_probe.py rcpt ADDRESS    prints the reply to RCPT TO:<ADDRESS> ("250 2.1.5 Ok", ...)
    smtp_probe.py send ADDRESS    sends a message; prints Postfix's reply to DATA ("250 ... queued
                                  as QUEUEID"); exit status 1 if it was not accepted
    smtp_probe.py connect PATH    exit status 0 if a unix socket accepts a connection now
    smtp_probe.py restart UNIT:PATH
                                  systemctl restart UNIT, then connect to PATH at once (no
                                  delay in between: the unit must be listening when started)

The client binds 127.0.0.10, outside the test's mynetworks (127.0.0.1/32), so that
permit_mynetworks does not skip the policy service.
"""
from __future__ import annotations

import smtplib
import socket
import subprocess
import sys

CLIENT = ("127.0.0.10", 0)
SERVER = ("127.0.0.1", 25)
SENDER = "sender@client.test"


def session() -> smtplib.SMTP:
    client = smtplib.SMTP(timeout=30, source_address=CLIENT)
    client.connect(*SERVER)
    client.ehlo("client.test")
    return client


def rcpt(address: str) -> int:
    client = session()
    client.mail(SENDER)
    code, text = client.rcpt(address)
    print(code, text.decode(errors="replace"))
    client.quit()
    return 0


def send(address: str) -> int:
    client = session()
    client.mail(SENDER)
    code, text = client.rcpt(address)
    if code != 250:
        print(code, text.decode(errors="replace"))
        return 1
    code, text = client.data(f"From: <{SENDER}>\r\nTo: <{address}>\r\nSubject: backupmx test\r\n"
                             "\r\nheld by the backup MX\r\n")
    print(code, text.decode(errors="replace"))
    client.quit()
    return 0 if code == 250 else 1


def connect(path: str) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError as error:
            print(f"{path}: {error}")
            return 1
    return 0


def restart(unit_and_path: str) -> int:
    unit, _, path = unit_and_path.partition(":")
    if subprocess.run(["systemctl", "restart", unit]).returncode != 0:
        return 1
    return connect(path)


if __name__ == "__main__":
    commands = {"rcpt": rcpt, "send": send, "connect": connect, "restart": restart}
    if len(sys.argv) != 3 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    sys.exit(commands[sys.argv[1]](sys.argv[2]))
