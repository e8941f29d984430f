"""The ldap driver against a real private slapd (python-ldap, paged results)."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from backupmx.common.source_settings import LdapSettings
from backupmx.sources import ldap as ldap_source
from backupmx.sources.errors import (
    SourceAuthError,
    SourceQueryError,
    SourceTimeout,
    SourceUnreachable,
)
from tests.harness.postfix import free_port
from tests.harness.servers import Slapd, person_ldif, write_password


def subtree(slapd: Slapd, name: str, people: list) -> str:
    """Create ou=name under the suffix holding the given people; return its DN."""
    base = f"ou={name},{slapd.suffix}"
    ldif = f"dn: {base}\nobjectClass: organizationalUnit\nou: {name}\n\n"
    ldif += "".join(person_ldif(base, person) for person in people)
    slapd.ldapmodify(ldif, add=True)
    return base


def settings_for(slapd: Slapd, base: str, tmp_path: Path, **changes) -> LdapSettings:
    settings = LdapSettings(uri=slapd.uri, base=base, bind_dn=slapd.reader_dn,
                            bind_password_file=write_password(tmp_path, slapd.reader_password),
                            filter="(objectClass=inetOrgPerson)",
                            attributes=("mail", "mailLocalAddress"))
    return dataclasses.replace(settings, **changes)


PEOPLE = [
    {"uid": ["alice"], "mail": ["alice@example.test"],
     "mailLocalAddress": ["al@example.test", "Alice.Smith@example.test"]},
    {"uid": ["bob"], "mail": ["bob@example.test"]},
    {"uid": ["catchall"], "mail": ["@other.test"]},
    {"uid": ["nomail"]},
]


def test_returns_every_address_attribute_value(slapd: Slapd, unique: str, tmp_path: Path) -> None:
    base = subtree(slapd, unique, PEOPLE)
    addresses = ldap_source.fetch(settings_for(slapd, base, tmp_path), timeout=10)
    assert sorted(addresses) == sorted(["alice@example.test", "al@example.test",
                                        "Alice.Smith@example.test", "bob@example.test",
                                        "@other.test"])


def test_over_the_ldapi_unix_socket(slapd: Slapd, unique: str, tmp_path: Path) -> None:
    base = subtree(slapd, unique, PEOPLE[:2])
    settings = settings_for(slapd, base, tmp_path, uri=slapd.ldapi_uri, attributes=("mail",))
    assert sorted(ldap_source.fetch(settings, timeout=10)) == ["alice@example.test",
                                                               "bob@example.test"]


def test_filter_and_attribute_choice_are_applied(slapd: Slapd, unique: str,
                                                 tmp_path: Path) -> None:
    base = subtree(slapd, unique, PEOPLE)
    settings = settings_for(slapd, base, tmp_path, filter="(uid=alice)", attributes=("mail",))
    assert ldap_source.fetch(settings, timeout=10) == ["alice@example.test"]


def test_scope_one_stays_at_the_first_level(slapd: Slapd, unique: str, tmp_path: Path) -> None:
    base = subtree(slapd, unique, [{"uid": ["top"], "mail": ["top@example.test"]}])
    deeper = f"ou=deeper,{base}"
    slapd.ldapmodify(f"dn: {deeper}\nobjectClass: organizationalUnit\nou: deeper\n\n"
                     + person_ldif(deeper, {"uid": ["low"], "mail": ["low@example.test"]}),
                     add=True)
    assert sorted(ldap_source.fetch(settings_for(slapd, base, tmp_path), timeout=10)) == [
        "low@example.test", "top@example.test"]
    one = settings_for(slapd, base, tmp_path, scope="one")
    assert ldap_source.fetch(one, timeout=10) == ["top@example.test"]


def test_pages_through_more_entries_than_a_page(slapd: Slapd, unique: str,
                                                tmp_path: Path) -> None:
    people = [{"uid": [f"u{n}"], "mail": [f"u{n}@example.test"]} for n in range(2500)]
    base = subtree(slapd, unique, people)
    settings = settings_for(slapd, base, tmp_path, page_size=1000)
    addresses = ldap_source.fetch(settings, timeout=30)
    assert len(addresses) == 2500
    assert set(addresses) == {f"u{n}@example.test" for n in range(2500)}


def test_a_user_added_or_removed_shows_in_the_next_fetch(slapd: Slapd, unique: str,
                                                         tmp_path: Path) -> None:
    base = subtree(slapd, unique, PEOPLE[:2])
    settings = settings_for(slapd, base, tmp_path, attributes=("mail",))
    assert sorted(ldap_source.fetch(settings, timeout=10)) == ["alice@example.test",
                                                               "bob@example.test"]
    slapd.ldapmodify(person_ldif(base, {"uid": ["carol"], "mail": ["carol@example.test"]}),
                     add=True)
    slapd.delete(f"uid=bob,{base}")
    assert sorted(ldap_source.fetch(settings, timeout=10)) == ["alice@example.test",
                                                               "carol@example.test"]


def test_wrong_password_is_an_authentication_error(slapd: Slapd, tmp_path: Path) -> None:
    settings = settings_for(slapd, slapd.people, tmp_path,
                            bind_password_file=write_password(tmp_path, "wrong"))
    with pytest.raises(SourceAuthError, match=r"binding as cn=reader.*Invalid credentials"):
        ldap_source.fetch(settings, timeout=10)


def test_bad_filter_is_a_query_error(slapd: Slapd, tmp_path: Path) -> None:
    settings = settings_for(slapd, slapd.people, tmp_path, filter="(mail~~x)")
    with pytest.raises(SourceQueryError, match="Bad search filter"):
        ldap_source.fetch(settings, timeout=10)


def test_missing_base_is_a_query_error(slapd: Slapd, tmp_path: Path) -> None:
    settings = settings_for(slapd, f"ou=absent,{slapd.suffix}", tmp_path)
    with pytest.raises(SourceQueryError, match="No such object"):
        ldap_source.fetch(settings, timeout=10)


def test_forgotten_bind_dn_is_a_query_error_not_an_empty_list(slapd: Slapd,
                                                               tmp_path: Path) -> None:
    """The harness's ACL lets only the reader read; slapd hides the base from anonymous users,
    so an anonymous source fails loudly instead of returning nobody."""
    settings = settings_for(slapd, slapd.people, tmp_path, bind_dn=None, bind_password_file=None)
    with pytest.raises(SourceQueryError, match="No such object"):
        ldap_source.fetch(settings, timeout=10)


def test_closed_port_is_unreachable(tmp_path: Path) -> None:
    settings = LdapSettings(uri=f"ldap://127.0.0.1:{free_port()}", base="dc=example,dc=test")
    with pytest.raises(SourceUnreachable, match="Can't contact LDAP server"):
        ldap_source.fetch(settings, timeout=5)


def test_hanging_server_times_out_within_the_timeout(hanging, tmp_path: Path) -> None:
    settings = LdapSettings(uri=f"ldap://127.0.0.1:{hanging.port}", base="dc=example,dc=test",
                            bind_dn="cn=reader,dc=example,dc=test",
                            bind_password_file=write_password(tmp_path, "x"))
    started = time.monotonic()
    with pytest.raises(SourceTimeout, match=r"no answer within 1\.5 s"):
        ldap_source.fetch(settings, timeout=1.5)
    assert time.monotonic() - started < 1.5 + 1.0


def test_hanging_server_times_out_anonymous_search_too(hanging) -> None:
    settings = LdapSettings(uri=f"ldap://127.0.0.1:{hanging.port}", base="dc=example,dc=test")
    started = time.monotonic()
    with pytest.raises(SourceTimeout):
        ldap_source.fetch(settings, timeout=1.5)
    assert time.monotonic() - started < 1.5 + 1.0


def test_starttls_refused_by_a_server_without_tls(slapd: Slapd, tmp_path: Path) -> None:
    settings = settings_for(slapd, slapd.people, tmp_path, starttls=True)
    with pytest.raises(SourceUnreachable, match="starting TLS"):
        ldap_source.fetch(settings, timeout=10)


def test_hanging_server_times_out_during_starttls(hanging) -> None:
    settings = LdapSettings(uri=f"ldap://127.0.0.1:{hanging.port}", base="dc=example,dc=test",
                            starttls=True)
    started = time.monotonic()
    with pytest.raises(SourceTimeout, match="starting TLS"):
        ldap_source.fetch(settings, timeout=1.5)
    assert time.monotonic() - started < 1.5 + 1.0
