"""``backupmx recipients ...`` and ``backupmx query`` as processes, against the real servers:
hold-back and accept, faults that keep the last good snapshot with one log line, pushed lists,
command sources that fail."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from tests.harness.servers import Postgres, Slapd, person_ldif, write_password

pytestmark = pytest.mark.integration

DOMAINS = "[domains]\nexample.test = [127.0.0.1]:9\n"


class Backupmx:
    """backupmx.conf in a folder of its own, and the command run against it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config = folder / "backupmx.conf"
        (folder / "rr").write_text("")

    def write(self, sections: str) -> None:
        self.config.write_text(f"[policyd]\nrecipients = {self.folder}/rr\n"
                               f"state_directory = {self.folder}/state\n{sections}\n{DOMAINS}")

    def run(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "backupmx.admin.main", "-c",
                               str(self.config), *args], input=stdin, capture_output=True,
                              text=True, timeout=120)

    def status(self) -> Dict[str, Dict]:
        result = self.run("recipients", "status", "--json")
        assert result.returncode == 0, result.stderr
        return {s["name"]: s for s in json.loads(result.stdout)["sources"]}

    def domain(self, name: str, domain: str = "example.test") -> Dict:
        return next(d for d in self.status()[name]["domains"] if d["domain"] == domain)

    def answer(self, address: str) -> str:
        result = self.run("query", "--no-probe", address)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()[0]


@pytest.fixture
def backupmx(tmp_path: Path) -> Backupmx:
    return Backupmx(tmp_path)


def pg_table(postgres: Postgres, name: str, addresses: List[str]) -> None:
    values = ", ".join(f"('{a}')" for a in addresses)
    postgres.psql(f"CREATE TABLE {name} (address text); ALTER TABLE {name} OWNER TO reader; "
                  f"INSERT INTO {name} VALUES {values};", database="directory")


def pg_section(postgres: Postgres, folder: Path, query: str, password: str = "reader-secret",
               name: str = "db") -> str:
    return (f"[recipients {name}]\ntype = pgsql\ndsn = {postgres.dsn('reader', 'directory')}\n"
            f"password_file = {write_password(folder, password)}\nquery = {query}\n"
            "timeout = 10\n")


def test_zero_or_half_the_rows_are_held_back_until_accepted(
        postgres: Postgres, unique: str, backupmx: Backupmx) -> None:
    pg_table(postgres, unique, [f"user{i}@example.test" for i in range(4)])
    backupmx.write(pg_section(postgres, backupmx.folder, f"SELECT address FROM {unique}"))
    assert backupmx.run("recipients", "sync").returncode == 0
    assert backupmx.answer("nobody@example.test").startswith("550 5.1.1")
    postgres.psql(f"DELETE FROM {unique} WHERE address IN ('user2@example.test', "
                  "'user3@example.test')", database="directory")
    result = backupmx.run("recipients", "sync")
    assert result.returncode == 0 and "held back: example.test" in result.stdout
    assert "would shrink from 4 to 2 addresses" in result.stderr
    domain = backupmx.domain("db")
    assert domain["held_back"] is True and domain["addresses"] == 4
    assert domain["held_back_change"]["addresses"] == 2
    assert backupmx.answer("user3@example.test") == "DUNNO"  # the old snapshot is in use
    assert backupmx.run("recipients", "accept", "db").returncode == 0
    assert backupmx.answer("user3@example.test").startswith("550 5.1.1")
    assert backupmx.domain("db")["held_back"] is False
    postgres.psql(f"DELETE FROM {unique}", database="directory")
    result = backupmx.run("recipients", "sync")
    assert "returned no address" in result.stderr
    assert backupmx.answer("user0@example.test") == "DUNNO"
    assert backupmx.domain("db")["held_back"] is True


def ldap_section(slapd: Slapd, folder: Path, base: str, filter_: str) -> str:
    return (f"[recipients dir]\ntype = ldap\nuri = {slapd.uri}\nbase = {base}\n"
            f"bind_dn = {slapd.reader_dn}\n"
            f"bind_password_file = {write_password(folder, slapd.reader_password)}\n"
            f"filter = {filter_}\ntimeout = 10\n")


@pytest.mark.parametrize("fault", ["wrong password", "missing table", "bad filter"])
def test_a_fault_is_one_log_line_and_keeps_the_last_good_snapshot(
        fault: str, postgres: Postgres, slapd: Slapd, unique: str,
        backupmx: Backupmx) -> None:
    folder = backupmx.folder
    if fault == "bad filter":
        base = f"ou={unique},{slapd.suffix}"
        slapd.ldapmodify(f"dn: {base}\nobjectClass: organizationalUnit\nou: {unique}\n\n"
                         + person_ldif(base, {"uid": ["alice"], "mail": ["alice@example.test"]}),
                         add=True)
        good = ldap_section(slapd, folder, base, "(objectClass=inetOrgPerson)")
        bad = ldap_section(slapd, folder, base, "(mail~~x)")
        name = "dir"
    else:
        pg_table(postgres, unique, ["alice@example.test"])
        good = pg_section(postgres, folder, f"SELECT address FROM {unique}")
        bad = (pg_section(postgres, folder, f"SELECT address FROM {unique}", "wrong")
               if fault == "wrong password" else
               pg_section(postgres, folder, f"SELECT address FROM {unique}_missing"))
        name = "db"
    backupmx.write(good)
    assert backupmx.run("recipients", "sync").returncode == 0
    backupmx.write(bad)
    first = backupmx.run("recipients", "sync")
    second = backupmx.run("recipients", "sync")
    assert first.returncode == second.returncode == 1
    failures = [line for line in first.stderr.splitlines() if "sync failed" in line]
    assert len(failures) == 1 and "keeping the last good snapshot" in failures[0]
    assert "sync failed" not in second.stderr  # once per state change
    status = backupmx.status()[name]
    assert status["last_error"] and status["domains"][0]["addresses"] == 1
    assert backupmx.answer("alice@example.test") == "DUNNO"
    assert backupmx.answer("nobody@example.test").startswith("550 5.1.1")


def test_a_truncated_import_is_refused_and_a_complete_one_applied(backupmx: Backupmx) -> None:
    backupmx.write("[recipients pushed]\ntype = push\n")
    listing = "".join(f"u{i}@example.test\n" for i in range(10))
    assert backupmx.run("recipients", "import", "pushed", stdin=listing + "# end 10\n"
                        ).returncode == 0
    assert backupmx.answer("u9@example.test") == "DUNNO"
    truncated = backupmx.run("recipients", "import", "pushed",
                             stdin="".join(f"v{i}@example.test\n" for i in range(6)))
    assert truncated.returncode == 1 and "does not end with a line '# end COUNT'" \
        in truncated.stderr
    wrong_count = backupmx.run("recipients", "import", "pushed", stdin=listing + "# end 12\n")
    assert wrong_count.returncode == 1 and "incomplete" in wrong_count.stderr
    assert backupmx.answer("v0@example.test").startswith("550 5.1.1")
    shrunk = backupmx.run("recipients", "import", "pushed", stdin="u1@example.test\n# end 1\n")
    assert shrunk.returncode == 1 and "held back" in shrunk.stderr
    assert backupmx.answer("u9@example.test") == "DUNNO"


@pytest.mark.parametrize("script,expected", [
    ("echo alice@example.test; echo 'cannot reach the directory' >&2; exit 3",
     "exited with status 3: cannot reach the directory"),
    ("echo 'Traceback (most recent call last):'; echo '  File x'",
     "no output line looks like an address"),
    ("printf 'alice@example.test\\n\\377\\376\\n'", "is not UTF-8 text"),
])
def test_command_sources_that_fail_or_print_garbage(script: str, expected: str,
                                                    backupmx: Backupmx) -> None:
    program = backupmx.folder / "list"
    program.write_text("#!/bin/sh\necho alice@example.test\necho bob@example.test\n")
    program.chmod(0o755)
    backupmx.write(f"[recipients cmd]\ntype = command\ncommand = {program}\n")
    assert backupmx.run("recipients", "sync").returncode == 0
    program.write_text(f"#!/bin/sh\n{script}\n")
    result = backupmx.run("recipients", "sync", "cmd")
    assert result.returncode == 1 and expected in result.stderr
    assert backupmx.answer("bob@example.test") == "DUNNO"
    assert backupmx.status()["cmd"]["last_result"] == "error"
