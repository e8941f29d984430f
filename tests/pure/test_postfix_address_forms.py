"""Addresses read the way Postfix reads them: quoted local parts, a byte-order mark, host bits.

The expected values here were measured on Postfix 3.7 (postmap -s / -q, relay_recipient_maps on a
private instance); tests/integration/test_postfix_addresses.py measures them again against the
real Postfix on every run. These unit tests pin the same behaviour through policyd's service.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import pytest
from twisted.logger import LogLevel

from backupmx.common.recipient_map import (
    MapError,
    load_recipient_map,
    parse_recipient_lines,
    quote_local,
    split_key,
    unquote_local,
)
from tests.harness.service_setup import Setup, make_service, messages, rcpt, rewrite, settle

UNKNOWN = "550 5.1.1 "


@pytest.mark.parametrize("internal,external", [
    ("alice", "alice"),
    ("odd user", '"odd user"'),
    ("dot.", '"dot."'),
    (".lead", '".lead"'),
    ("a..b", '"a..b"'),
    ("a.b", "a.b"),
    ('with"quote', '"with\\"quote"'),
    ("a\\b", '"a\\\\b"'),
    ("a@b", '"a@b"'),
    ("jürgen", "jürgen"),  # 8-bit text is left alone
    ("jö e", '"jö e"'),
    ("", '""'),
])
def test_quote_local_is_postfix_quote_822_local(internal: str, external: str) -> None:
    assert quote_local(internal) == external
    assert unquote_local(external) == internal


@pytest.mark.parametrize("text,key,value", [
    ('"odd user"@example.test OK', '"odd user"@example.test', "OK"),
    ('"tab\tsep"@example.test\tOK', '"tab\tsep"@example.test', "OK"),
    ('"esc\\" q"@example.test OK', '"esc\\" q"@example.test', "OK"),
    ('a\\ b@example.test OK', "a\\ b@example.test", "OK"),
    ('"a b" c@example.test OK', '"a b"', "c@example.test OK"),
    ("plain@example.test  OK  x ", "plain@example.test", "OK  x"),
])
def test_split_key_is_postmaps_reading(text: str, key: str, value: str) -> None:
    assert split_key(text) == (key, value)


def test_unbalanced_quote_names_file_and_line() -> None:
    with pytest.raises(MapError, match="^src:line 2: unbalanced '\"' in"):
        parse_recipient_lines(["a@example.test OK\n", '"unbal user@example.test OK\n'], "src")


def test_quoted_keys_match_the_internal_form_postfix_sends(tmp_path: Path) -> None:
    path = tmp_path / "map"
    path.write_text('"Odd User"@example.test OK\n"sp ace"@example.test OK\n'
                    'dot.@example.test OK\n"with\\"quote"@example.test OK\n'
                    "straße@example.test OK\n", encoding="utf-8")
    recipients = load_recipient_map([str(path)], "+")
    assert recipients.warnings == ()
    for local in ("odd user", "sp ace", "sp ace+ext", "dot.", 'with"quote', "strasse",
                  "STRASSE".lower(), "straße"):
        assert recipients.accepts(local, "example.test"), local
    for local in ("odd", "odduser", "sp", "space"):
        assert not recipients.accepts(local, "example.test"), local


def test_quoted_key_postfix_never_matches_loads_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "map"
    path.write_text('alice@example.test OK\n"plain"@example.test OK\n', encoding="utf-8")
    recipients = load_recipient_map([str(path)])
    assert not recipients.accepts("plain", "example.test")  # as Postfix: it looks up plain@...
    assert recipients.warnings == (
        f"{path}:line 2: key '\"plain\"@example.test' does not match the address "
        "'plain@example.test' (not in Postfix, not here): write 'plain@example.test'",)


def test_many_odd_keys_give_a_bounded_number_of_warnings(tmp_path: Path) -> None:
    path = tmp_path / "map"
    path.write_text("".join(f'"u{n}"@example.test OK\n' for n in range(40)), encoding="utf-8")
    warnings = load_recipient_map([str(path)]).warnings
    assert len(warnings) == 6 and warnings[-1] == (
        f"{path}: 35 more keys that do not match the address they seem to name")


def test_byte_order_mark_is_dropped_and_said_once(tmp_path: Path, events: List[dict]) -> None:
    setup = Setup(tmp_path)
    setup.recipients.write_bytes("\ufeffalice@example.test OK\nbob@example.test OK\n"
                                 .encode("utf-8"))
    service, _, _ = make_service(setup)
    assert service.respond(rcpt("alice@example.test")) == "DUNNO"
    assert service.respond(rcpt("nobody@example.test")).startswith(UNKNOWN)
    warned = [m for m in messages(events, LogLevel.warn) if "byte-order mark" in m]
    assert warned == [f"{setup.recipients}: starts with a UTF-8 byte-order mark; ignoring it "
                      "(Postfix would not: save the file without it)"]
    service.check_maps()  # nothing changed: no second warning
    assert len([m for m in messages(events, LogLevel.warn) if "byte-order mark" in m]) == 1


def test_odd_user_edit_is_applied_whole_on_reload(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    service, _, _ = make_service(setup)
    rewrite(setup.recipients, 'alice@example.test OK\n"odd user"@example.test OK\n'
                              "carol@example.test OK\n")
    settle(service)
    for recipient in ("odd user@example.test", "carol@example.test", "alice@example.test"):
        assert service.respond(rcpt(recipient)) == "DUNNO", recipient
    assert service.respond(rcpt("odd@example.test")).startswith(UNKNOWN)


def test_host_bits_on_reload_keep_the_last_good_networks(tmp_path: Path,
                                                         events: List[dict]) -> None:
    setup = Setup(tmp_path)
    service, _, _ = make_service(setup)
    before = service.maps.networks
    rewrite(setup.networks, "@partner.test 192.0.2.0/24\n* 10.1.2.77/16\n")
    settle(service)
    assert service.maps.networks is before
    assert service.last_reload[0] is False
    assert any(f"{setup.networks}:line 2: non-null host address bits in '10.1.2.77/16'" in m
               for m in messages(events, LogLevel.error))


def test_check_shows_the_map_warnings(tmp_path: Path) -> None:
    from backupmx.admin import setup_checks as checks
    from backupmx.common.config import parse_config
    from backupmx.common.maps import load_maps
    recipients = tmp_path / "relay_recipients"
    recipients.write_bytes('\ufeffalice@example.test OK\n"plain"@example.test OK\n'
                           .encode("utf-8"))
    config = parse_config(f"[policyd]\nrecipients = {recipients}\nrecipient_delimiter = +\n"
                          "[domains]\nexample.test = [192.0.2.10]:25\n")
    results = checks.check_maps(config, load_maps)
    assert [r.status for r in results] == ["ok", "warn", "warn"]
    assert "byte-order mark" in results[1].message
    assert "'\"plain\"@example.test' does not match the address" in results[2].message


def test_policyd_refuses_to_start_on_a_network_with_host_bits(tmp_path: Path, capsys) -> None:
    from backupmx.policyd.main import main
    setup = Setup(tmp_path)
    setup.networks.write_text("@partner.test 192.0.2.0/24\n* 10.1.2.77/16\n", encoding="utf-8")
    assert main(["-c", str(setup.conf)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"backupmx-policyd: {setup.networks}:line 2: non-null host address bits in "
        "'10.1.2.77/16', perhaps you should use '10.1.0.0/16' instead (Postfix's cidr tables "
        "skip such a rule)"]


def test_check_config_accepts_quoted_keys_and_prints_the_warnings(tmp_path: Path,
                                                                  capsys) -> None:
    from backupmx.policyd.main import main
    setup = Setup(tmp_path)
    setup.recipients.write_text('"odd user"@example.test OK\n"plain"@example.test OK\n',
                                encoding="utf-8")
    assert main(["-c", str(setup.conf), "--check-config"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"{setup.conf}: OK, 1 domains, 2 recipient keys"
    assert captured.err.splitlines() == [
        f"backupmx-policyd: warning: {setup.recipients}:line 2: key '\"plain\"@example.test' "
        "does not match the address 'plain@example.test' (not in Postfix, not here): write "
        "'plain@example.test'"]
