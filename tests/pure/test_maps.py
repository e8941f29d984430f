"""Loading the map files policyd decides from, and the recipient delimiter's origin."""
from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

from backupmx.common.config import Config, PrimarySpec, parse_config
from backupmx.common.maps import file_signature, load_maps, map_paths, recipient_delimiter
from backupmx.common.recipient_map import MapError


def make_config(tmp_path: Path, extra: str = "", networks: bool = True) -> Config:
    recipients = tmp_path / "relay_recipients"
    recipients.write_text("alice@example.test OK\n", encoding="utf-8")
    lines = f"[policyd]\nrecipients = {recipients}\n{extra}\n"
    if networks:
        (tmp_path / "sender_networks").write_text("@a.test 192.0.2.0/24\n", encoding="utf-8")
        lines += f"sender_networks = {tmp_path / 'sender_networks'}\n"
    return parse_config(lines + f"[postfix]\nconfig_directory = {tmp_path}\n", "<test>")


@pytest.fixture
def fake_postconf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``postconf`` first on PATH that answers from a file and logs its arguments."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "postconf"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {tmp_path}/postconf.args\n'
        f'if [ -f {tmp_path}/postconf.fail ]; then echo "postconf: fatal: broken" >&2; exit 1; fi\n'
        f"cat {tmp_path}/postconf.out\n", encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "postconf.out").write_text("recipient_delimiter = +-\n", encoding="utf-8")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def test_map_paths(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    main_cf = str(tmp_path / "main.cf")  # Postfix's relay_domains and recipient_delimiter
    assert map_paths(config) == (str(tmp_path / "relay_recipients"),
                                 str(tmp_path / "sender_networks"), main_cf)
    assert map_paths(make_config(tmp_path, networks=False)) == (
        str(tmp_path / "relay_recipients"), main_cf)


def test_file_signature_changes_on_rewrite_and_removal(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("one\n", encoding="utf-8")
    first = file_signature((str(path),))
    assert file_signature((str(path),)) == first
    path.write_text("one more\n", encoding="utf-8")
    second = file_signature((str(path),))
    assert second != first
    replacement = tmp_path / "g"
    replacement.write_text("one more\n", encoding="utf-8")
    os.utime(replacement, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
    replacement.replace(path)  # same size and mtime, new inode: an atomic replace
    assert file_signature((str(path),)) != second
    path.unlink()
    assert file_signature((str(path),)) == ((str(path), "No such file or directory"),)


def test_load_maps_with_configured_delimiter(tmp_path: Path) -> None:
    config = make_config(tmp_path, "recipient_delimiter = +")
    maps = load_maps(config)
    assert maps.recipients.accepts("alice+x", "example.test")
    assert maps.networks is not None and maps.networks.allows("u@a.test", "192.0.2.1")
    assert maps.delimiter_warning == ""
    assert maps.signature == file_signature(map_paths(config))


def test_load_maps_without_sender_networks(tmp_path: Path) -> None:
    maps = load_maps(make_config(tmp_path, "recipient_delimiter = +", networks=False), "+")
    assert maps.networks is None


def test_load_maps_errors_name_the_file(tmp_path: Path) -> None:
    config = make_config(tmp_path, "recipient_delimiter = +")
    (tmp_path / "sender_networks").write_text("@a.test nonsense\n", encoding="utf-8")
    with pytest.raises(MapError, match=f"^{tmp_path / 'sender_networks'}:line 1:"):
        load_maps(config)


def test_delimiter_from_postfix(tmp_path: Path, fake_postconf: Path) -> None:
    config = make_config(tmp_path)
    assert recipient_delimiter(config) == ("+-", "")
    args = (fake_postconf / "postconf.args").read_text(encoding="utf-8").split()
    assert args == ["-c", str(tmp_path), "recipient_delimiter"]
    maps = load_maps(config)
    assert maps.recipients.accepts("alice-x", "example.test")


def test_configured_delimiter_does_not_ask_postfix(tmp_path: Path, fake_postconf: Path) -> None:
    assert recipient_delimiter(make_config(tmp_path, "recipient_delimiter = %")) == ("%", "")
    assert not (fake_postconf / "postconf.args").exists()


def test_failing_postconf_gives_no_delimiter_and_a_warning(tmp_path: Path,
                                                           fake_postconf: Path) -> None:
    (fake_postconf / "postconf.fail").write_text("", encoding="utf-8")
    delimiter, warning = recipient_delimiter(make_config(tmp_path))
    assert delimiter == ""
    assert "recipient_delimiter" in warning and "broken" in warning
    maps = load_maps(make_config(tmp_path))
    assert maps.delimiter_warning == warning
    assert not maps.recipients.accepts("alice+x", "example.test")


def test_missing_postconf_gives_no_delimiter_and_a_warning(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    delimiter, warning = recipient_delimiter(make_config(tmp_path))
    assert delimiter == "" and "not found" in warning


def test_load_maps_collects_the_warnings_of_every_file(tmp_path: Path) -> None:
    config = make_config(tmp_path, "recipient_delimiter = +")
    (tmp_path / "main.cf").write_text("relay_domains = example.test\n")
    (tmp_path / "sender_networks").write_text("\ufeff@a.test 192.0.2.0/24\n", encoding="utf-8")
    maps = load_maps(config)
    assert maps.networks is not None and maps.networks.allows("u@a.test", "192.0.2.1")
    assert maps.warnings == (f"{tmp_path / 'sender_networks'}: starts with a UTF-8 byte-order "
                             "mark; ignoring it (Postfix would not: save the file without it)",)


def test_postfix_unreadable_judges_exact_names_only_and_says_so(tmp_path: Path) -> None:
    config = make_config(tmp_path, "recipient_delimiter = +", networks=False)
    config = dataclasses.replace(config, domains={"example.test": PrimarySpec(None)})
    maps = load_maps(config)  # no main.cf in tmp_path: postconf fails
    assert maps.scope is not None and maps.scope.owner("sub.example.test") is None
    assert maps.scope.owner("example.test") == "example.test"
    assert any("only the names in [domains] are judged" in w for w in maps.warnings)
