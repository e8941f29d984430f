"""Drive the INSTALLED backupmx package on a private Postfix instance, as systemd would run it.

Called by test_packages.sh (as root, after ``apt-get install ./dist/backupmx_*.deb``) with the
project's venv Python, which has aiosmtpd for the fake primary. Everything under test comes from
the package: the daemons are started from the ExecStart, User, Group, SupplementaryGroups and
UMask lines of the installed unit files, with systemd's clean environment; Postfix is configured
with the installed main.cf snippet (relative unix: socket paths, default actions, timeouts); the
configuration is the installed /etc/backupmx/backupmx.conf with only the domain, its recipients
and the private Postfix instance filled in, as an admin would. Prints one PASS/FAIL line per
check; exits 1 if any failed.
"""
from __future__ import annotations

import json
import re
import shlex
import smtplib
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.harness.postfix import PostfixInstance, free_port  # noqa: E402
from tests.harness.primary import FakePrimary  # noqa: E402

UNIT_DIRS = [Path("/lib/systemd/system"), Path("/usr/lib/systemd/system")]
SNIPPET = Path("/usr/share/doc/backupmx/examples/postfix-main.cf")
CONFIG = Path("/etc/backupmx/backupmx.conf")
RECIPIENTS = Path("/etc/backupmx/relay_recipients")
SOCKET_DIR = Path("/var/spool/postfix/backupmx")
# From the snippet: the lines that wire backupmx into Postfix and keep mail for a month.
SNIPPET_KEYS = ("smtpd_recipient_restrictions", "smtpd_milters", "smtpd_relay_restrictions",
                "fast_flush_domains", "maximal_queue_lifetime", "bounce_queue_lifetime")
DOMAIN = "example.test"

failures: List[str] = []


def check(name: str, ok: bool, detail: str = "") -> bool:
    print(f"{'PASS' if ok else 'FAIL'} {name}{'' if ok else ': ' + detail}", flush=True)
    if not ok:
        failures.append(name)
    return ok


def eventually(probe: Callable[[], object], accept: Callable[[object], bool],
               timeout: float = 20.0) -> object:
    deadline = time.monotonic() + timeout
    result = probe()
    while not accept(result) and time.monotonic() < deadline:
        time.sleep(0.2)
        result = probe()
    return result


# ---- systemd, the parts the units use --------------------------------------------------------

def read_unit(name: str) -> Dict[str, str]:
    """[Service] settings of an installed unit (last assignment wins, as in systemd)."""
    path = next(d / name for d in UNIT_DIRS if (d / name).exists())
    settings: Dict[str, str] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def unit_command(unit: Dict[str, str]) -> List[str]:
    """argv that runs ExecStart as the unit's user, groups and umask, like systemd does."""
    groups = ",".join([unit.get("Group", unit["User"]),
                       *unit.get("SupplementaryGroups", "").split()])
    umask = unit.get("UMask", "0022")
    setpriv = ["setpriv", f"--reuid={unit['User']}", f"--regid={unit.get('Group', unit['User'])}",
               f"--groups={groups}"]
    if unit.get("NoNewPrivileges", "no") in ("yes", "true", "1", "on"):
        # Matters: setgid programs (postqueue) then keep the caller's groups only.
        setpriv.append("--no-new-privs")
    setpriv.append("--")
    return ["sh", "-c", f'umask {umask} && exec "$@"', "sh", *setpriv,
            *shlex.split(unit["ExecStart"])]


def unit_environment(unit: Dict[str, str]) -> Dict[str, str]:
    """systemd's environment for a system service with User=: nothing from the caller."""
    user = unit["User"]
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8", "HOME": "/var/lib/backupmx", "USER": user, "LOGNAME": user,
            "SHELL": "/usr/sbin/nologin"}


class Service:
    def __init__(self, name: str, process: subprocess.Popen, log: Path) -> None:
        self.name, self.process, self.log = name, process, log

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_service(name: str, workdir: Path) -> Service:
    """Start a unit's ExecStart; for Type=notify wait for READY=1, else for its socket."""
    unit = read_unit(name)
    env = unit_environment(unit)
    log = workdir / f"{name}.log"
    notify_dir = Path(tempfile.mkdtemp(prefix="notify-", dir=workdir))
    notify_dir.chmod(0o755)
    address = notify_dir / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        address.chmod(0o777)  # the daemon runs as backupmx
        sock.settimeout(0.2)
        if unit.get("Type") == "notify":
            env["NOTIFY_SOCKET"] = str(address)
        with open(log, "ab") as out:
            process = subprocess.Popen(unit_command(unit), cwd="/", env=env, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        service = Service(name, process, log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            if unit.get("Type") == "notify":
                try:
                    if b"READY=1" in sock.recv(4096):
                        return service
                except socket.timeout:
                    pass
            elif any(p.is_socket() for p in SOCKET_DIR.glob("milter.sock")):
                return service
            else:
                time.sleep(0.1)
    raise RuntimeError(f"{name} did not start (exit {process.poll()}):\n{service.text()}")


def run_oneshot(name: str) -> subprocess.CompletedProcess:
    """Run a Type=oneshot unit's ExecStart to completion, as systemd would."""
    unit = read_unit(name)
    return subprocess.run(unit_command(unit), cwd="/", env=unit_environment(unit), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=180)


# ---- the installed configuration, filled in as an admin would ---------------------------------

def snippet_settings() -> Dict[str, str]:
    """name = value settings of the installed main.cf snippet (continuation lines joined)."""
    settings: Dict[str, str] = {}
    name = None
    for line in SNIPPET.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and name:
            settings[name] += " " + line.strip()
            continue
        name, _, value = line.partition("=")
        name = name.strip()
        settings[name] = value.strip()
    return settings


def configure(postfix: PostfixInstance, primary_port: int) -> None:
    text = CONFIG.read_text()
    replacements = {
        "#probe_interval = 30": "probe_interval = 1",
        "#log_accepts = no": "log_accepts = yes",
        "#config_directory =": f"config_directory = {postfix.config_dir}",
    }
    for old, new in replacements.items():
        assert re.search(rf"^{re.escape(old)}$", text, re.M), f"{CONFIG} lacks {old!r}"
        text = re.sub(rf"^{re.escape(old)}$", new, text, flags=re.M)
    assert text.rstrip().splitlines()[-1].startswith("#") and "[domains]" in text
    text += f"{DOMAIN} = [127.0.0.1]:{primary_port}\n"
    CONFIG.write_text(text)
    with RECIPIENTS.open("a") as handle:
        handle.write(f"alice@{DOMAIN} OK\n")


# ---- the checks ---------------------------------------------------------------------------

def rcpt(port: int, recipient: str) -> tuple:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("client.test")
        client.mail("someone@sender.test")
        code, text = client.rcpt(recipient)
        return code, text.decode(errors="replace")


def send(port: int, recipient: str) -> tuple:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("client.test")
        client.mail("someone@sender.test")
        code, text = client.rcpt(recipient)
        if code != 250:
            return code, text.decode(errors="replace")
        code, text = client.data(f"From: <someone@sender.test>\r\nTo: <{recipient}>\r\n"
                                 "Subject: package test\r\n\r\nHeld by the backup MX.\r\n")
        return code, text.decode(errors="replace")


def installed_command(*args: str) -> subprocess.CompletedProcess:
    """The installed /usr/bin program, as root, with a system environment (not the venv's)."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
    return subprocess.run(list(args), cwd="/", env=env, capture_output=True, text=True,
                          timeout=120)


def held_messages() -> tuple:
    """(held messages of DOMAIN per ``backupmx status --json``, the completed process)."""
    status = installed_command("backupmx", "status", "--json")
    try:
        domains = {d["domain"]: d for d in json.loads(status.stdout)["domains"]}
        return domains[DOMAIN]["held_messages"], status
    except (ValueError, KeyError, TypeError) as error:
        return f"unreadable (rc {status.returncode}, {error!r})", status


def socket_ok(path: Path) -> bool:
    info = path.stat()
    return (stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
            and info.st_gid == __import__("grp").getgrnam("postfix").gr_gid)


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="backupmx-package-"))
    workdir.chmod(0o755)
    primary = FakePrimary(free_port())
    settings = snippet_settings()
    check("installed main.cf snippet has the backupmx lines",
          all(k in settings for k in SNIPPET_KEYS), str(sorted(settings)))
    postfix = PostfixInstance(workdir / "postfix", free_port(), {DOMAIN: primary.port},
                              extra_main_cf={k: settings[k] for k in SNIPPET_KEYS if k in settings})
    # The snippet's relative unix:backupmx/... paths resolve in the queue directory: the private
    # instance's queue directory leads to the package's socket folder.
    postfix.queue_dir.mkdir(parents=True)
    (postfix.queue_dir / "backupmx").symlink_to(SOCKET_DIR)
    services: List[Service] = []
    try:
        configure(postfix, primary.port)
        for name in ("backupmx-policyd.service", "backupmx-milter.service"):
            try:
                services.append(start_service(name, workdir))
                check(f"{name} started from its ExecStart as backupmx", True)
            except RuntimeError as error:
                check(f"{name} started from its ExecStart as backupmx", False, str(error))
        for sock in ("policyd.sock", "milter.sock"):
            path = SOCKET_DIR / sock
            check(f"{sock} is 0660 group postfix", path.exists() and socket_ok(path),
                  oct(path.stat().st_mode) if path.exists() else "missing")
        postfix.start()

        code, text = send(postfix.smtpd_port, f"alice@{DOMAIN}")
        check("accept: primary down, valid recipient -> 250, queued", code == 250, f"{code} {text}")
        queued = eventually(postfix.queue, lambda q: len(q) == 1, 10)
        check("accept: message held in the queue", len(queued) == 1, str(queued))

        code, text = rcpt(postfix.smtpd_port, f"bob@{DOMAIN}")
        check("reject: unknown recipient -> 550 5.1.1", code == 550 and "5.1.1" in text,
              f"{code} {text}")

        version = installed_command("backupmx", "--version")
        check("backupmx --version", version.returncode == 0 and "0+unknown" not in version.stdout
              and re.search(r"\d+\.\d+", version.stdout) is not None,
              f"rc {version.returncode}: {version.stdout}{version.stderr}")
        held, status = held_messages()
        check("backupmx status --json: the held message of the domain", held == 1,
              f"held {held}: {status.stdout}{status.stderr}")
        table = installed_command("backupmx", "status")
        check("backupmx status", table.returncode == 0 and DOMAIN in table.stdout,
              f"rc {table.returncode}: {table.stdout}{table.stderr}")
        # An admin runs backupmx as root: it must not leave root-owned files where the daemons
        # (user backupmx) write, or the next ledger write fails.
        foreign = [f"{p} {p.owner()}" for p in Path("/var/lib/backupmx").iterdir()
                   if p.owner() != "backupmx"]
        check("root's backupmx status leaves /var/lib/backupmx to backupmx", not foreign,
              ", ".join(foreign))

        primary.start()
        code, text = eventually(lambda: rcpt(postfix.smtpd_port, f"alice@{DOMAIN}"),
                                lambda r: r[0] == 450, 20)
        check("defer: primary up -> 450 4.7.1", code == 450 and "4.7.1" in text, f"{code} {text}")

        policyd_service = services[0] if services else None
        check("flush on return: policyd (as the unit runs it) hands the held mail to the "
              "returning primary", primary.wait_for(1, 40),
              f"primary got {len(primary.messages)}: "
              f"{policyd_service.text() if policyd_service else 'no policyd'}")
        log = eventually(lambda: policyd_service.text() if policyd_service else "",
                         lambda text: "flush on return of" in text, 20)
        check("flush on return: one log line with the outcome",
              f"flush on return of {DOMAIN} done" in log and "1 message left the queue" in log,
              log[-2000:])
        left = eventually(postfix.queue, lambda q: not q, 20)
        check("flush: the queue is empty", not left, str(left))
        flush = run_oneshot("backupmx-flush.service")
        check("backupmx-flush.service (flush --auto, no new privileges) runs: nothing left",
              flush.returncode == 0 and "nothing held" in flush.stdout,
              f"rc {flush.returncode}: {flush.stdout}{flush.stderr}")
        held, status = held_messages()
        check("backupmx status --json: nothing held after the flush", held == 0,
              f"held {held}: {status.stdout}{status.stderr}")
        for service in services:
            check(f"{service.name} still running", service.process.poll() is None, service.text())
    except Exception as error:  # noqa: BLE001 (report, then clean up)
        check("package lab", False, f"{type(error).__name__}: {error}")
    finally:
        postfix.stop()
        for service in services:
            service.stop()
        primary.stop()
        if failures:
            for service in services:
                print(f"--- {service.name} log ---\n{service.text()}")
            print(f"--- maillog ---\n{postfix.maillog()}")
        subprocess.run(["rm", "-rf", str(workdir)])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
