"""[recipients NAME] sections -> SourceSettings, and the errors for bad ones."""
from __future__ import annotations

import re
import sys

import pytest

import backupmx.sources as sources
from backupmx.common.source_settings import (
    CommandSettings,
    FileSettings,
    LdapSettings,
    MysqlSettings,
    PgsqlSettings,
    PushSettings,
    SourceSettingsError,
    SqliteSettings,
    parse_source,
)
from backupmx.sources import ldap as ldap_source
from backupmx.sources.errors import DriverMissing, PasswordFileError
from backupmx.sources.passwords import password_file_warning, read_password_file


def section(**values: str) -> dict:
    """key -> (value, line), lines numbered from 10 in order."""
    return {key: (value, 10 + n) for n, (key, value) in enumerate(values.items())}


def test_ldap_section_with_every_key() -> None:
    source = parse_source("directory", section(
        type="ldap", domains="Example.TEST, other.test", interval="120", timeout="30",
        max_shrink="25%", stale_after="7200", uri="ldap://ldap.example.test",
        starttls="yes", tls_ca_file="/etc/ssl/ca.pem", bind_dn="cn=reader,dc=example,dc=test",
        bind_password_file="/etc/backupmx/ldap.password", base="dc=example,dc=test",
        scope="one", filter="(objectClass=inetOrgPerson)",
        attributes="mail, mailAlternateAddress", page_size="500"))
    assert source.name == "directory" and source.type == "ldap"
    assert source.domains == ("example.test", "other.test")
    assert (source.interval, source.timeout, source.max_shrink, source.stale_after) == (
        120.0, 30.0, 0.25, 7200.0)
    assert source.driver == LdapSettings(
        uri="ldap://ldap.example.test", base="dc=example,dc=test", starttls=True,
        tls_ca_file="/etc/ssl/ca.pem", bind_dn="cn=reader,dc=example,dc=test",
        bind_password_file="/etc/backupmx/ldap.password", scope="one",
        filter="(objectClass=inetOrgPerson)", attributes=("mail", "mailAlternateAddress"),
        page_size=500)


def test_defaults() -> None:
    source = parse_source("d", section(type="LDAP", uri="ldapi:///", base="dc=x"))
    assert (source.domains, source.interval, source.timeout, source.max_shrink,
            source.stale_after) == ((), 300.0, 60.0, 0.2, 3600.0)
    assert source.driver == LdapSettings(uri="ldapi:///", base="dc=x", starttls=False,
                                         bind_dn=None, scope="sub", filter="(objectClass=*)",
                                         attributes=("mail",), page_size=1000)


@pytest.mark.parametrize("text, share", [("20%", 0.2), ("0.2", 0.2), ("0%", 0.0),
                                         ("100%", 1.0), ("1", 1.0), ("12.5 %", 0.125)])
def test_max_shrink_as_percent_or_fraction(text: str, share: float) -> None:
    source = parse_source("p", section(type="push", max_shrink=text))
    assert source.max_shrink == pytest.approx(share)
    assert source.driver == PushSettings()


def test_every_other_type() -> None:
    assert parse_source("p", section(
        type="pgsql", dsn="host=/run/postgresql dbname=mail user=backupmx",
        password_file="/etc/backupmx/pg.password",
        query="SELECT email FROM users WHERE active ;")).driver == PgsqlSettings(
        dsn="host=/run/postgresql dbname=mail user=backupmx",
        password_file="/etc/backupmx/pg.password", query="SELECT email FROM users WHERE active")
    assert parse_source("m", section(
        type="mysql", host="db.example.test", port="3307", user="backupmx", database="mail",
        query="SELECT email FROM users")).driver == MysqlSettings(
        host="db.example.test", port=3307, user="backupmx", database="mail",
        query="SELECT email FROM users")
    assert parse_source("m", section(
        type="mysql", socket="/run/mysqld/mysqld.sock", user="u", database="d",
        query="SELECT 1")).driver.socket == "/run/mysqld/mysqld.sock"
    assert parse_source("s", section(type="sqlite", path="/var/lib/mail.db",
                                     query="SELECT a FROM t")).driver == SqliteSettings(
        path="/var/lib/mail.db", query="SELECT a FROM t")
    assert parse_source("c", section(
        type="command", command="/usr/local/bin/list-addresses --domain 'a b'")).driver == (
        CommandSettings(argv=("/usr/local/bin/list-addresses", "--domain", "a b")))
    assert parse_source("f", section(type="file", path="/etc/backupmx/relay_recipients")
                        ).driver == FileSettings(path="/etc/backupmx/relay_recipients")


@pytest.mark.parametrize("values, message", [
    ({"type": "ldap", "uri": "ldap://x", "base": "dc=x", "bsae": "dc=y"},
     r"^line 13: \[recipients s\] bsae: unknown key for type ldap \(known: type, domains, "),
    ({"type": "pgsql", "query": "SELECT 1", "uri": "ldap://x"},
     r"^line 12: \[recipients s\] uri: unknown key for type pgsql"),
    ({"type": "ldap", "uri": "ldap://x"},
     r"^line 3: \[recipients s\] base: missing \(required for type ldap\)$"),
    ({"uri": "ldap://x"}, r"^line 3: \[recipients s\] type: missing \(one of ldap, pgsql, "),
    ({"type": "oracle"}, r"^line 10: \[recipients s\] type: 'oracle' is not one of ldap, "),
    ({"type": "push", "interval": "-5"},
     r"^line 11: \[recipients s\] interval: '-5' must be a positive number of seconds$"),
    ({"type": "push", "timeout": "soon"},
     r"^line 11: \[recipients s\] timeout: 'soon' is not a number of seconds$"),
    ({"type": "push", "stale_after": "inf"}, r"stale_after: 'inf' must be a positive"),
    ({"type": "push", "max_shrink": "120%"},
     r"max_shrink: '120%' must be between 0% and 100%$"),
    ({"type": "push", "max_shrink": "lots"}, r"max_shrink: 'lots' is not a share such as 20%"),
    ({"type": "push", "domains": "example.test, bad_domain!"},
     r"domains: 'bad_domain!' is not a domain name$"),
    ({"type": "push", "domains": "a.test, A.test"}, r"domains: a domain is listed twice$"),
    ({"type": "ldap", "uri": "http://x", "base": "dc=x"},
     r"uri: 'http://x' is not an ldap://, ldaps:// or ldapi:// URI$"),
    ({"type": "ldap", "uri": "ldap://x", "base": "dc=x", "scope": "base"},
     r"scope: 'base' is not one of sub, one$"),
    ({"type": "ldap", "uri": "ldap://x", "base": "dc=x", "filter": "(mail=*"},
     r"filter: '\(mail=\*' is not an LDAP filter"),
    ({"type": "ldap", "uri": "ldap://x", "base": "dc=x", "starttls": "maybe"},
     r"starttls: 'maybe' is not yes or no$"),
    ({"type": "ldap", "uri": "ldap://x", "base": "dc=x", "attributes": "mail, ma il"},
     r"attributes: 'ma il' is not an attribute name$"),
    ({"type": "ldap", "uri": "ldap://x", "base": "dc=x", "page_size": "0"},
     r"page_size: '0' must be a whole number from 1 to 1000000$"),
    ({"type": "ldap", "uri": "ldap://x", "base": "dc=x", "bind_dn": "cn=r"},
     r"^line 13: \[recipients s\] bind_password_file: bind_dn and bind_password_file go "),
    ({"type": "ldap", "uri": "ldap://x", "base": "dc=x", "bind_password_file": "/p"},
     r"bind_dn: bind_dn and bind_password_file go together$"),
    ({"type": "ldap", "uri": "ldap://x", "base": "dc=x", "bind_password_file": "p"},
     r"bind_password_file: 'p' must be an absolute path$"),
    ({"type": "pgsql", "dsn": "dbname=x", "query": " ; "}, r"query: must not be empty$"),
    ({"type": "pgsql", "dsn": "", "query": "SELECT 1"}, r"dsn: must not be empty$"),
    ({"type": "mysql", "user": "u", "database": "d", "query": "SELECT 1"},
     r"host: give exactly one of host and socket$"),
    ({"type": "mysql", "host": "h", "socket": "/s", "user": "u", "database": "d",
      "query": "SELECT 1"}, r"host: give exactly one of host and socket$"),
    ({"type": "mysql", "socket": "/s", "port": "3306", "user": "u", "database": "d",
      "query": "SELECT 1"}, r"port: a port goes with host, not with socket$"),
    ({"type": "mysql", "host": "h", "port": "70000", "user": "u", "database": "d",
      "query": "SELECT 1"}, r"port: '70000' is not a port number$"),
    ({"type": "sqlite", "path": "mail.db", "query": "SELECT 1"},
     r"path: 'mail.db' must be an absolute path$"),
    ({"type": "command", "command": "list-addresses"},
     r"command: 'list-addresses': the program must be an absolute path$"),
    ({"type": "command", "command": "/bin/echo 'unclosed"}, r"command: .* cannot be split"),
    ({"type": "file"}, r"path: missing \(required for type file\)$"),
    ({"type": "push", "path": "/x"}, r"path: unknown key for type push"),
])
def test_bad_sections_name_line_section_and_key(values: dict, message: str) -> None:
    with pytest.raises(SourceSettingsError, match=message):
        parse_source("s", section(**values), section_line=3)


def test_error_is_a_value_error_with_its_parts() -> None:
    with pytest.raises(ValueError) as caught:
        parse_source("dir", {"type": ("ldap", 4), "uri": ("ldap://x", 5), "base": ("dc=x", 6),
                             "scope": ("base", 7)})
    error = caught.value
    assert isinstance(error, SourceSettingsError)
    assert (error.line, error.section, error.key) == (7, "recipients dir", "scope")
    assert str(error) == "line 7: [recipients dir] scope: 'base' is not one of sub, one"


def test_missing_key_without_a_section_line() -> None:
    with pytest.raises(SourceSettingsError, match=r"^line \?: \[recipients s\] base: missing"):
        parse_source("s", {"type": ("ldap", 4), "uri": ("ldap://x", 5)})


def test_bad_source_name() -> None:
    with pytest.raises(SourceSettingsError, match=r"name: 'a b' is not a source name"):
        parse_source("a b", section(type="push"))


def test_entries_with_value_and_line_attributes() -> None:
    class Entry:
        def __init__(self, value: str, line: int) -> None:
            self.value, self.line = value, line

    source = parse_source("s", {"Type": Entry("sqlite", 1), "PATH": Entry(" /x.db ", 2),
                                "query": Entry("SELECT 1", 3)})
    assert source.driver == SqliteSettings(path="/x.db", query="SELECT 1")


# ---- password files ------------------------------------------------------------------------

def test_password_is_the_first_line(tmp_path) -> None:
    path = tmp_path / "pw"
    path.write_text("s3cret with spaces \nsecond line\n")
    assert read_password_file(str(path)) == "s3cret with spaces "


@pytest.mark.parametrize("content, message", [("", "is empty"), ("\nx\n", "is empty")])
def test_empty_password_file(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "pw"
    path.write_text(content)
    with pytest.raises(PasswordFileError, match=message):
        read_password_file(str(path))


def test_missing_password_file(tmp_path) -> None:
    with pytest.raises(PasswordFileError, match=r"cannot read password file .*/absent: No such "):
        read_password_file(str(tmp_path / "absent"))


def test_password_file_warnings(tmp_path) -> None:
    path = tmp_path / "pw"
    path.write_text("x\n")
    path.chmod(0o640)
    assert password_file_warning(str(path)) is None
    path.chmod(0o644)
    assert password_file_warning(str(path)) == (
        f"password file {path} is readable by every user (mode -rw-r--r--): chmod o-r {path}")
    path.chmod(0o660)
    assert "is writable by other users (mode -rw-rw----)" in password_file_warning(str(path))
    assert "cannot be examined" in password_file_warning(str(tmp_path / "absent"))


# ---- drivers missing, dispatch ---------------------------------------------------------------

@pytest.mark.parametrize("source_type, module, package", [
    ("ldap", "ldap", "python3-ldap"), ("pgsql", "psycopg", "python3-psycopg"),
    ("mysql", "pymysql", "python3-pymysql")])
def test_missing_driver_names_the_debian_package(monkeypatch, source_type: str, module: str,
                                                 package: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # "import module" now raises ImportError
    with pytest.raises(DriverMissing) as caught:
        sources.require_driver(source_type)
    assert caught.value.package == package
    assert str(caught.value).endswith(f": install the package {package}")


def test_drivers_present_here() -> None:
    for source_type in ("ldap", "pgsql", "mysql", "sqlite", "command", "file", "push"):
        sources.require_driver(source_type)


def test_fetch_dispatches_with_the_source_timeout(tmp_path) -> None:
    program = tmp_path / "list"
    program.write_text("#!/bin/sh\necho a@example.test\n")
    program.chmod(0o755)
    source = parse_source("c", section(type="command", command=str(program), timeout="5"))
    assert sources.fetch(source) == ["a@example.test"]
    with pytest.raises(ValueError, match="type push has no fetch driver"):
        sources.fetch(parse_source("p", section(type="push")))


def test_missing_driver_fails_fetch_too(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ldap", None)
    with pytest.raises(DriverMissing, match="python3-ldap"):
        ldap_source.fetch(LdapSettings(uri="ldap://127.0.0.1", base="dc=x"), timeout=1)


def test_sources_import_no_daemon_code() -> None:
    import subprocess
    code = ("import sys, backupmx.sources, backupmx.sources.ldap, backupmx.sources.pgsql, "
            "backupmx.sources.mysql, backupmx.sources.sqlite, backupmx.sources.command; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'twisted' "
            "or m.startswith(('backupmx.policyd', 'backupmx.milter'))]; print(bad)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_callout_section_defaults_and_every_key() -> None:
    from backupmx.common.source_settings import CalloutSettings
    plain = parse_source("verify", section(type="callout", domains="customer.test"))
    assert plain.type == "callout" and plain.domains == ("customer.test",)
    assert plain.timeout == 30.0
    assert plain.driver == CalloutSettings()
    assert (plain.driver.max_connections, plain.driver.rate, plain.driver.max_unknown) == (2, 30, 5)
    assert (plain.driver.positive_expire_time, plain.driver.positive_refresh_time,
            plain.driver.negative_expire_time) == (31 * 86400, 7 * 86400, 4 * 3600)
    full = parse_source("verify", section(
        type="callout", domains="customer.test", timeout="10", helo_name="Backup.Example.test",
        max_connections="1", rate="60", client_rate="3", max_unknown="2",
        positive_expire_time="10d", positive_refresh_time="1d", negative_expire_time="30m"))
    assert full.timeout == 10.0
    assert full.driver == CalloutSettings("backup.example.test", 1, 60, 3, 2, 864000.0,
                                          86400.0, 1800.0)


@pytest.mark.parametrize("values,message", [
    ({"interval": "60"}, "line 11: [recipients verify] interval: unknown key for type callout"),
    ({"stale_after": "60"}, "stale_after: unknown key for type callout"),
    ({"rate": "0"}, "rate: '0' must be a positive whole number"),
    ({"negative_expire_time": "4 hours"}, "negative_expire_time: '4 hours' is not a Postfix "
     "time value"),
    ({"positive_refresh_time": "40d"}, "positive_refresh_time: must be shorter than "
     "positive_expire_time"),
    ({"helo_name": "not a name"}, "helo_name: 'not a name' is not a domain name"),
])
def test_bad_callout_sections(values: dict, message: str) -> None:
    with pytest.raises(SourceSettingsError, match=re.escape(message)):
        parse_source("verify", section(type="callout", **values))
