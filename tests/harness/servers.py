"""Real, private directory servers for the recipient sources' tests and benchmark.

Each class starts one server from Debian's packages in a folder of its own (its data, its
configuration, its sockets, its log) and never touches the system's instance: OpenLDAP ``slapd``
(slapd.conf given with ``-f``, loopback port), PostgreSQL 15 (``initdb`` + ``postgres`` run as
the ``postgres`` user, unix socket only) and MariaDB (``mariadb-install-db`` + ``mariadbd``,
unix socket and a loopback port). Readiness is polled with a deadline, never slept for; ``stop``
ends the server's own process (SIGTERM, then SIGKILL) and is safe to call twice.

``HangingServer`` is the server that accepts TCP connections and never answers.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from tests.harness.daemons import Daemon, DaemonError, wait_for_port
from tests.harness.postfix import _searchable, free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")  # not /usr/local/bin, whose pg_ctl may be another one
LDAP_SCHEMAS = ("core", "cosine", "nis", "inetorgperson", "misc")


class ServerError(RuntimeError):
    """A private server that could not be set up, started or driven; the message says why."""


def _require(program: str, package: str) -> str:
    path = shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin:" + os.environ.get("PATH", ""))
    if path is None:
        raise ServerError(f"{program} is missing: run .ci/install (Debian package {package})")
    return path


def _run(argv: Sequence[str], *, input_text: Optional[str] = None, env: Optional[dict] = None,
         user: Optional[str] = None, cwd: Optional[Path] = None,
         timeout: float = 600.0) -> subprocess.CompletedProcess:
    """Run a tool; raise ServerError with its output when it fails."""
    result = subprocess.run(list(argv), input=input_text, capture_output=True, text=True,
                            env=env, user=user, cwd=cwd, timeout=timeout)
    if result.returncode != 0:
        raise ServerError(f"{' '.join(argv[:3])} ... exited {result.returncode}:\n"
                          f"{result.stdout}{result.stderr}")
    return result


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up now: no dlopen after fork
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the harness dies (prctl PR_SET_PDEATHSIG), so
    that a killed test run leaves no server behind. Runs after Popen's user switch, which would
    otherwise clear it."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _start(argv: List[str], log_path: Path, user: Optional[str] = None,
           cwd: Optional[Path] = None) -> Daemon:
    """Start a server process in the foreground of its own, logging to log_path."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, user=user, cwd=cwd,
                                   preexec_fn=_die_with_parent)
    return Daemon(argv, log_path, process)


def _wait_for(probe, what: str, daemon: Daemon, timeout: float) -> None:
    """Poll probe() (True when ready) until the deadline; fail early if the daemon died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not daemon.alive():
            raise ServerError(f"{what} exited with {daemon.process.returncode}:\n{daemon.log()}")
        if probe():
            return
        time.sleep(0.05)
    raise ServerError(f"{what} not ready after {timeout} s:\n{daemon.log()}")


# ---- OpenLDAP ----------------------------------------------------------------------------------

SLAPD_CONF = """\
{includes}
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {root}/slapd.pid
sizelimit unlimited
timelimit unlimited

database mdb
maxsize {maxsize}
suffix "{suffix}"
rootdn "{rootdn}"
rootpw {rootpw}
directory {root}/db
dbnosync
index objectClass eq
limits dn.exact="{reader}" size.soft=unlimited size.hard=unlimited size.prtotal=unlimited
access to attrs=userPassword by anonymous auth by * none
access to * by dn.exact="{reader}" read by * none
"""


class Slapd:
    """A private OpenLDAP server on 127.0.0.1:port and on the unix socket ``root/ldapi``, with
    suffix dc=example,dc=test.

    ``rootdn``/``rootpw`` administer it; ``reader_dn``/``reader_password`` is an ordinary entry
    allowed to read everything (the bind DN a source uses); anonymous users read nothing.
    People go under ``ou=people`` with objectClass inetOrgPerson + inetLocalMailRecipient, so
    both ``mail`` and ``mailLocalAddress`` can hold addresses.
    """

    suffix = "dc=example,dc=test"
    rootdn = "cn=admin,dc=example,dc=test"
    rootpw = "admin-secret"
    reader_dn = "cn=reader,dc=example,dc=test"
    reader_password = "reader-secret"
    people = "ou=people,dc=example,dc=test"

    def __init__(self, root: Path, maxsize: int = 8 << 30) -> None:
        self.root = Path(root)
        self.maxsize = maxsize
        self.port = 0
        self.daemon: Optional[Daemon] = None
        self.conf = self.root / "slapd.conf"

    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldapi_uri(self) -> str:
        """The same server over its unix socket (``root/ldapi``), path percent-encoded."""
        return "ldapi://" + urllib.parse.quote(str(self.root / "ldapi"), safe="")

    def setup(self) -> "Slapd":
        """Write slapd.conf and load the base entries with slapadd (server stopped)."""
        _require("slapd", "slapd")
        _require("ldapadd", "ldap-utils")
        (self.root / "db").mkdir(parents=True, exist_ok=True)
        includes = "\n".join(f"include /etc/ldap/schema/{name}.schema" for name in LDAP_SCHEMAS)
        self.conf.write_text(SLAPD_CONF.format(
            includes=includes, root=self.root, maxsize=self.maxsize, suffix=self.suffix,
            rootdn=self.rootdn, rootpw=self.rootpw, reader=self.reader_dn))
        self.slapadd(self.base_ldif())
        return self

    def base_ldif(self) -> str:
        return (f"dn: {self.suffix}\nobjectClass: dcObject\nobjectClass: organization\n"
                f"dc: example\no: example\n\n"
                f"dn: {self.reader_dn}\nobjectClass: organizationalRole\n"
                f"objectClass: simpleSecurityObject\ncn: reader\n"
                f"userPassword: {self.reader_password}\n\n"
                f"dn: {self.people}\nobjectClass: organizationalUnit\nou: people\n\n")

    def slapadd(self, ldif: str) -> None:
        """Bulk-load LDIF text offline (only while the server is stopped)."""
        if self.daemon is not None and self.daemon.alive():
            raise ServerError("slapadd needs slapd stopped")
        path = self.root / "load.ldif"
        path.write_text(ldif)
        self.slapadd_file(path)

    def slapadd_file(self, path: Path) -> None:
        _run([_require("slapadd", "slapd"), "-q", "-f", str(self.conf), "-l", str(path)])

    def start(self, timeout: float = 30.0) -> "Slapd":
        self.port = free_port()
        argv = [_require("slapd", "slapd"), "-d", "0", "-f", str(self.conf),
                "-h", f"{self.uri}/ {self.ldapi_uri}"]
        self.daemon = _start(argv, self.root / "slapd.log")
        try:
            wait_for_port("127.0.0.1", self.port, timeout, self.daemon)
        except DaemonError as error:
            self.stop()
            raise ServerError(str(error)) from None
        return self

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()

    def ldapmodify(self, ldif: str, add: bool = False) -> None:
        """Apply LDIF changes online as the root DN (``ldapadd`` when add is true)."""
        tool = "ldapadd" if add else "ldapmodify"
        _run([_require(tool, "ldap-utils"), "-x", "-H", self.uri, "-D", self.rootdn,
              "-w", self.rootpw], input_text=ldif)

    def add_people(self, people: Iterable[Dict[str, Sequence[str]]]) -> None:
        """Add entries under ou=people; each a mapping with ``uid`` and attribute lists."""
        self.ldapmodify("".join(person_ldif(self.people, person) for person in people), add=True)

    def delete(self, dn: str) -> None:
        _run([_require("ldapdelete", "ldap-utils"), "-x", "-H", self.uri, "-D", self.rootdn,
              "-w", self.rootpw, dn])


def person_ldif(parent: str, person: Dict[str, Sequence[str]]) -> str:
    """One inetOrgPerson + inetLocalMailRecipient entry as LDIF (uid names it)."""
    uid = person["uid"][0]
    lines = [f"dn: uid={uid},{parent}", "objectClass: inetOrgPerson",
             "objectClass: inetLocalMailRecipient", f"cn: {uid}", f"sn: {uid}"]
    for attribute, values in person.items():
        lines.extend(f"{attribute}: {value}" for value in values)
    return "\n".join(lines) + "\n\n"


# ---- PostgreSQL --------------------------------------------------------------------------------

class Postgres:
    """A private PostgreSQL 15 cluster, run as the ``postgres`` user, listening only on a unix
    socket in ``root/socket``. Password authentication (scram-sha-256) for everyone: superuser
    ``postgres`` / ``superuser_password``; tests create their own roles with ``psql``.

    ``root`` and its parents must stay searchable by the postgres user: ``setup`` adds the x
    bits, but pytest takes them off /tmp/pytest-of-root whenever another session starts, so
    give a folder outside it (tests/sources/conftest.py ``outside_pytest_root``)."""

    superuser_password = "postgres-secret"

    def __init__(self, root: Path, os_user: str = "postgres") -> None:
        self.root = Path(root)
        self.os_user = os_user
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.daemon: Optional[Daemon] = None

    def setup(self) -> "Postgres":
        """initdb a fresh cluster owned by the postgres user."""
        initdb = PG_BIN / "initdb"
        if not initdb.exists():
            raise ServerError(f"{initdb} is missing: run .ci/install "
                              f"(Debian package postgresql-15)")
        self.root.mkdir(parents=True, exist_ok=True)
        _searchable(self.root)
        self.socket_dir.mkdir(exist_ok=True)
        password_file = self.root / "superuser.password"
        password_file.write_text(self.superuser_password + "\n")
        for path in (self.root, self.socket_dir, password_file):
            shutil.chown(path, self.os_user, self.os_user)
        _run([str(initdb), "-D", str(self.data), "-U", "postgres", "-A", "scram-sha-256",
              f"--pwfile={password_file}", "-E", "UTF8", "--no-locale", "--no-sync",
              "--no-instructions"], user=self.os_user, cwd=self.root)
        return self

    def start(self, timeout: float = 30.0) -> "Postgres":
        argv = [str(PG_BIN / "postgres"), "-D", str(self.data), "-k", str(self.socket_dir),
                "-c", "listen_addresses=", "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_wal_size=4GB"]
        self.daemon = _start(argv, self.root / "postgres.log", user=self.os_user, cwd=self.root)

        def ready() -> bool:
            probe = subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", str(self.socket_dir)],
                                   capture_output=True)
            return probe.returncode == 0

        try:
            _wait_for(ready, "postgres", self.daemon, timeout)
        except ServerError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL after 15 s."""
        if self.daemon is not None and self.daemon.alive():
            self.daemon.signal(signal.SIGINT)
            try:
                self.daemon.process.wait(15)
            except subprocess.TimeoutExpired:
                self.daemon.kill()

    def dsn(self, user: str, database: str) -> str:
        """A libpq conninfo for the unix socket (no password: give it separately)."""
        return f"host={self.socket_dir} user={user} dbname={database}"

    def psql(self, sql: str, database: str = "postgres", input_text: Optional[str] = None,
             timeout: float = 600.0) -> str:
        """Run SQL as the superuser with psql (stops at the first error); return its output."""
        env = dict(os.environ, PGPASSWORD=self.superuser_password)
        argv = [str(PG_BIN / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-h", str(self.socket_dir), "-U", "postgres", "-d", database, "-c", sql]
        return _run(argv, input_text=input_text, env=env, timeout=timeout).stdout

    def create_database(self, database: str, owner: str, password: str) -> None:
        """A role with a password (LOGIN) and a database it owns."""
        self.psql(f"CREATE ROLE {owner} LOGIN PASSWORD '{password}'")
        self.psql(f"CREATE DATABASE {database} OWNER {owner}")


# ---- MariaDB -----------------------------------------------------------------------------------

class MariaDB:
    """A private MariaDB server: unix socket ``root/mysqld.sock`` and 127.0.0.1:port. The
    server's root account has no password and is used only by the harness (``sql``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.data = self.root / "data"
        self.socket = self.root / "mysqld.sock"
        self.port = 0
        self.daemon: Optional[Daemon] = None

    def setup(self) -> "MariaDB":
        install_db = _require("mariadb-install-db", "mariadb-server")
        self.root.mkdir(parents=True, exist_ok=True)
        _run([install_db, "--no-defaults", f"--datadir={self.data}", "--user=root",
              "--auth-root-authentication-method=normal", "--skip-test-db",
              "--skip-name-resolve"], cwd=self.root)
        return self

    def start(self, timeout: float = 30.0) -> "MariaDB":
        self.port = free_port()
        argv = [_require("mariadbd", "mariadb-server"), "--no-defaults", f"--datadir={self.data}",
                f"--socket={self.socket}", f"--port={self.port}", "--bind-address=127.0.0.1",
                f"--pid-file={self.root / 'mariadbd.pid'}", "--user=root",
                "--skip-name-resolve", "--innodb-buffer-pool-size=32M",
                "--innodb-flush-log-at-trx-commit=0", f"--log-error={self.root / 'error.log'}"]
        self.daemon = _start(argv, self.root / "mariadbd.log")
        try:
            wait_for_port("127.0.0.1", self.port, timeout, self.daemon)
        except DaemonError as error:
            self.stop()
            raise ServerError(f"{error}\n{self.error_log()}") from None
        return self

    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop(timeout=30)

    def sql(self, sql: str, database: Optional[str] = None) -> str:
        """Run SQL as the server's root account with the mariadb client; return its output."""
        argv = [_require("mariadb", "mariadb-client"), "--no-defaults", f"--socket={self.socket}",
                "-u", "root", "--batch", "--skip-column-names", "-e", sql]
        if database:
            argv.append(database)
        return _run(argv).stdout


# ---- a server that never answers ---------------------------------------------------------------

class HangingServer:
    """A loopback TCP server that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.accepted: List[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # listener closed
                return
            self.accepted.append(connection)

    def close(self) -> None:
        self.listener.close()
        for connection in self.accepted:
            connection.close()


def write_password(folder: Path, password: str) -> str:
    """A password file readable by its owner only; returns its path."""
    path = folder / f"password-{uuid.uuid4().hex[:8]}"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return str(path)


def outside_pytest_root(name: str) -> Path:
    """A fresh folder under /tmp for servers run as another user (postgres). Not under pytest's
    /tmp/pytest-of-root: every pytest session that starts (another run on the same machine)
    takes the group and other bits off that folder, and the other user could no longer reach
    its files. The caller removes it."""
    return Path(tempfile.mkdtemp(prefix=f"backupmx-test-{name}-"))
