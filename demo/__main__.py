"""The demo behind ``.ci/demo`` (run as root): backupmx running for real on loopback,
explained as it goes.

It builds a private Postfix instance as backup MX for ``example.test`` (the system's Postfix is
not touched), attaches the real policyd (and the milter, when installed), plays the part of a
sending client, and then keeps everything running until Ctrl-C so you can try it yourself
(``swaks --server 127.0.0.1:PORT --to alice@example.test``). ``--once`` stops after the script.
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import List, Optional

from tests.harness.lab import BackupMxLab, eventually

DOMAIN = "example.test"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show_rcpt(lab: BackupMxLab, recipient: str, sender: str = "someone@sender.test") -> int:
    code, text = lab.rcpt(recipient, sender)
    print(f"   MAIL FROM:<{sender}> RCPT TO:<{recipient}>  ->  {code} {text}", flush=True)
    return code


def backupmx(lab: BackupMxLab, *args: str) -> None:
    """Run the admin's command against the demo's configuration and show what it prints."""
    command = [sys.executable, "-m", "backupmx.admin.main", "-c", str(lab.config_path), *args]
    print(f"   $ backupmx {' '.join(args)}", flush=True)
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    for line in (result.stdout + result.stderr).splitlines():
        print(f"     {line}")


def milter_available() -> bool:
    try:
        import backupmx.milter.main  # noqa: F401
    except ImportError:
        return False
    return True


def script(lab: BackupMxLab) -> None:
    say(f"Postfix (backup MX for {DOMAIN}) listens on 127.0.0.1:{lab.postfix.smtpd_port}; "
        f"policyd on 127.0.0.1:{lab.policy_port}; the primary MX (fake) is DOWN")
    say("A valid recipient while the primary is down: accepted and held in the queue")
    show_rcpt(lab, f"alice@{DOMAIN}")
    queue_id = lab.send([f"alice@{DOMAIN}"])
    # Postfix's first delivery attempt fails (primary down) and defers it: wait for that, or a
    # primary started next could get the message on that first attempt, before any flush
    queue = eventually(lab.postfix.queue,
                       lambda q: any(m["queue_name"] == "deferred" for m in q), timeout=30)
    held = [m["queue_id"] for m in queue]
    print(f"   queued as {queue_id}; Postfix's queue holds {held}")
    say("An unknown recipient: rejected for good, so no backscatter later")
    show_rcpt(lab, f"nobody@{DOMAIN}")
    say("A domain this host is not backup MX for: relay denied by Postfix")
    show_rcpt(lab, "user@other.test")
    if lab.with_milter:
        say("What the backup MX holds, per domain (recorded by the milter in the ledger)")
        backupmx(lab, "status")
        say(f"The primary MX comes back: policyd sees it and hands the held mail of {DOMAIN} "
            f"back at once (flush on return)")
        lab.primary(DOMAIN).start()
        lab.primary(DOMAIN).wait_for(1, timeout=60)
        log = eventually(lab.policyd.log if lab.policyd else str,
                         lambda text: "flush on return of" in text)
        for line in log.splitlines():
            if "flush on return" in line or "flushing its held mail" in line:
                print(f"   {line}")
    else:
        lab.primary(DOMAIN).start()
        say(f"The primary MX is back: flush the held mail of {DOMAIN} to it "
            f"(postqueue -s {DOMAIN})")
        lab.postfix.run("postqueue", "-s", DOMAIN)
        lab.primary(DOMAIN).wait_for(1, timeout=30)
    print(f"   the primary received {len(lab.primary(DOMAIN).messages)} message(s); "
          f"queue now holds {len(lab.postfix.queue())}")
    say("While the primary is up, clients are sent there with a temporary refusal")
    eventually(lambda: lab.rcpt(f"alice@{DOMAIN}"), lambda r: r[0] == 450)
    show_rcpt(lab, f"alice@{DOMAIN}")
    say("...except senders whose client network is on the allowlist (sender_networks)")
    show_rcpt(lab, f"alice@{DOMAIN}", sender="relay@partner.test")
    say("policyd's log of these decisions")
    for line in (lab.policyd.log() if lab.policyd else "").splitlines()[-8:]:
        print(f"   {line}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="stop after the scripted part")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="backupmx-demo-"))
    lab = BackupMxLab(root, domains=[DOMAIN], milter=milter_available()).start()
    try:
        script(lab)
        if not args.once:
            say(f"Still running (files in {root}). Try: swaks --server "
                f"127.0.0.1:{lab.postfix.smtpd_port} --to alice@{DOMAIN}   Ctrl-C stops.")
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            try:
                stop.wait()
            except KeyboardInterrupt:
                pass
    finally:
        lab.close()
    say("Stopped; nothing was left running.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
