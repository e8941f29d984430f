"""backupmx.conf: embedded defaults, and an error naming file, line and key for every mistake."""
from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from backupmx.common.config import (
    SCHEMA,
    ConfigError,
    PrimarySpec,
    load_config,
    parse_config,
)
from backupmx.common.listen import ListenAddress
from backupmx.policyd.main import EXIT_CONFIG, main

PATH = "/etc/backupmx/test.conf"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, PATH)
    return str(caught.value)


def test_embedded_defaults() -> None:
    config = parse_config("", PATH)
    policyd = config.policyd
    assert config.path == PATH
    assert policyd.listen == ListenAddress("inet", host="127.0.0.1", port=10040)
    assert policyd.recipients == ("/etc/backupmx/relay_recipients",)
    assert policyd.sender_networks is None
    assert policyd.primary_up_action == "defer"
    assert (policyd.probe_interval, policyd.probe_timeout) == (30.0, 5.0)
    assert policyd.recipient_delimiter is None
    assert policyd.log_accepts is False
    assert (policyd.max_line_length, policyd.max_attributes) == (8192, 200)
    assert policyd.metrics is None and policyd.user is None
    assert config.milter.listen == ListenAddress("inet", host="127.0.0.1", port=8890)
    assert config.milter.ledger == "/var/lib/backupmx/ledger.sqlite3"
    assert config.milter.journal == "/var/lib/backupmx/ledger.sqlite3.journal"
    assert config.postfix.config_directory is None
    assert dict(config.domains) == {}


def test_every_schema_default_parses() -> None:
    for keys in SCHEMA.values():
        for parse, default in keys.values():
            parse(default)  # must not raise


def test_full_example() -> None:
    config = parse_config("""
# backupmx.conf
[policyd]
listen = inet:[::1]:10041          ; IPv6
recipients = /etc/a, /etc/b ,/etc/c
sender_networks = /etc/backupmx/sender_networks
primary_up_action = REJECT
probe_interval = 2.5
probe_timeout = 1
recipient_delimiter = +-
log_accepts = yes
max_attributes = 50
user = postfix

[milter]
listen = unix:/run/backupmx/milter.sock:0660
ledger = /var/lib/x.sqlite3

[postfix]
config_directory = /tmp/pf/etc

[domains]
Example.TEST. = [127.0.0.1]:2526
mx.test = MX
bare.test = [mail.bare.test]
v6.test = [2001:db8::1]:25
""", PATH)
    assert config.policyd.listen == ListenAddress("inet", host="::1", port=10041)
    assert config.policyd.recipients == ("/etc/a", "/etc/b", "/etc/c")
    assert config.policyd.primary_up_action == "reject"
    assert config.policyd.probe_interval == 2.5
    assert config.policyd.recipient_delimiter == "+-"
    assert config.policyd.log_accepts is True
    assert config.policyd.max_attributes == 50
    assert config.policyd.user == "postfix"
    assert config.milter.listen == ListenAddress("unix", path="/run/backupmx/milter.sock",
                                                 mode=0o660)
    assert config.milter.journal == "/var/lib/x.sqlite3.journal"
    assert config.postfix.config_directory == "/tmp/pf/etc"
    assert dict(config.domains) == {
        "example.test": PrimarySpec("127.0.0.1", 2526),
        "mx.test": PrimarySpec(None),
        "bare.test": PrimarySpec("mail.bare.test", 25),
        "v6.test": PrimarySpec("2001:db8::1", 25),
    }
    assert config.domains["mx.test"].lookup_mx
    assert str(config.domains["mx.test"]) == "mx"
    assert str(config.domains["example.test"]) == "[127.0.0.1]:2526"


@pytest.mark.parametrize("text,line,words", [
    ("[policyd]\n[bogus]\nx = 1\n", 2, ["bogus", "unknown section"]),
    ("[policyd]\n\n[bogus]\n", 3, ["bogus", "unknown section"]),
    ("[policyd]\nlisten = inet:127.0.0.1:1\nlisen = x\n", 3, ["[policyd] lisen", "unknown key"]),
    ("[milter]\nrecipients = /x\n", 2, ["[milter] recipients", "unknown key"]),
    ("[policyd]\nprimary_up_action = bounce\n", 2, ["primary_up_action", "bounce"]),
    ("[policyd]\nprobe_interval = soon\n", 2, ["probe_interval", "soon"]),
    ("[policyd]\nprobe_interval = 0\n", 2, ["probe_interval", "positive"]),
    ("[policyd]\nprobe_timeout = -1\n", 2, ["probe_timeout", "positive"]),
    ("[policyd]\nprobe_timeout = nan\n", 2, ["probe_timeout"]),
    ("[policyd]\nprobe_timeout = inf\n", 2, ["probe_timeout"]),
    ("[policyd]\nmax_line_length = 1.5\n", 2, ["max_line_length", "whole number"]),
    ("[policyd]\nmax_attributes = 0\n", 2, ["max_attributes"]),
    ("[policyd]\nlog_accepts = perhaps\n", 2, ["log_accepts", "yes or no"]),
    ("[policyd]\nlisten = tcp:10040\n", 2, ["[policyd] listen", "tcp:10040"]),
    ("[policyd]\nrecipients = relative/path\n", 2, ["recipients", "absolute"]),
    ("[policyd]\nrecipients = /a, rel\n", 2, ["recipients", "absolute"]),
    ("[policyd]\nsender_networks = networks\n", 2, ["sender_networks", "absolute"]),
    ("[policyd]\nrecipient_delimiter = @\n", 2, ["recipient_delimiter"]),
    ("[policyd]\nuser = Root User\n", 2, ["user", "not a user name"]),
    ("[policyd]\nmetrics = http://x\n", 2, ["metrics"]),
    ("[milter]\nledger = ledger.sqlite3\n", 2, ["[milter] ledger", "absolute"]),
    ("[postfix]\nconfig_directory = etc\n", 2, ["config_directory"]),
    ("\n[policyd]\nlisten = inet:127.0.0.1:1\nlisten = inet:127.0.0.1:2\n", 4,
     ["listen", "twice"]),
    ("listen = inet:127.0.0.1:1\n[policyd]\n", 1, ["listen", "outside"]),
    ("[policyd]\njust some words\n", 2, ["key = value"]),
    ("[policyd\nlisten = inet:127.0.0.1:1\n", 1, ["section header"]),
    ("[policyd]\n[policyd]\n", 2, ["policyd", "twice"]),
    ("[domains]\nexample.test = [127.0.0.1]:2526\nbad_domain!.test = mx\n", 3,
     ["bad_domain!.test", "not a domain"]),
    ("[domains]\n-.test. = mx\n", 2, ["not a domain"]),
    ("[domains]\nExample.test = mx\nexample.TEST = mx\n", 3, ["example.test", "twice"]),
    ("[domains]\nexample.test = mx\nexample.test. = mx\n", 3, ["example.test", "twice"]),
    ("[domains]\nexample.test = 127.0.0.1:2526\n", 2, ["[domains] example.test", "[HOST]"]),
    ("[domains]\nexample.test = [127.0.0.1]:0\n", 2, ["example.test", "port 0"]),
    ("[domains]\nexample.test = [127.0.0.1]:99999\n", 2, ["example.test", "port"]),
    ("[domains]\nexample.test = [127.0.0.1]x\n", 2, ["example.test"]),
    ("[domains]\nexample.test = []:25\n", 2, ["example.test"]),
    ("[domains]\nexample.test =\n", 2, ["example.test"]),
])
def test_errors_name_file_line_and_key(text: str, line: int, words: "list[str]") -> None:
    message = error_of(text)
    assert message.startswith(f"{PATH}:{line}: "), message
    for word in words:
        assert word in message, message


def test_comments_after_values_and_comment_lines() -> None:
    config = parse_config("; c\n# c\n[policyd]\nprobe_interval = 7 # seven\n"
                          "probe_timeout = 3 ; three\n", PATH)
    assert (config.policyd.probe_interval, config.policyd.probe_timeout) == (7.0, 3.0)


def test_section_and_key_names_are_case_insensitive() -> None:
    config = parse_config("[PolicyD]\nProbe_Interval = 9\n", PATH)
    assert config.policyd.probe_interval == 9.0


def test_load_config_reads_file_and_names_absolute_path(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "b.conf").write_text("[policyd]\nprobe_interval = 4\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    config = load_config("b.conf")
    assert config.path == str(tmp_path / "b.conf")
    assert config.policyd.probe_interval == 4.0


def test_load_config_error_names_absolute_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_text("[policyd]\n\nprobe_interval = never\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^{path}:3: \\[policyd\\] probe_interval: "):
        load_config(str(path))


def test_load_config_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.conf"
    with pytest.raises(ConfigError, match=f"^{missing}: cannot read configuration: No such file"):
        load_config(str(missing))


def test_load_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(str(tmp_path))


def _as_nobody(check: "Callable[[], None]") -> int:
    """Run check in a child that became user nobody (root reads any file); its exit status."""
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        status = 1
        try:
            entry = pwd.getpwnam("nobody")
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            check()
            status = 0
        finally:
            os._exit(status)
    return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])


def test_load_config_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.conf"
    path.write_text("", encoding="utf-8")
    path.chmod(0)

    def refused() -> None:
        with pytest.raises(ConfigError, match="Permission denied"):
            load_config(str(path))

    if os.geteuid() == 0:
        tmp_path.chmod(0o755)
        assert _as_nobody(refused) == 0
    else:
        refused()


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.conf"
    path.write_bytes(b"[policyd]\n; J\xfcrgen\n")
    with pytest.raises(ConfigError, match=f"^{path}: cannot read configuration"):
        load_config(str(path))


def test_main_with_bad_config_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.conf"
    path.write_text("[policyd]\nlisten = inet:127.0.0.1:10040\ncolour = blue\n", encoding="utf-8")
    assert main(["-c", str(path)]) == EXIT_CONFIG == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"backupmx-policyd: {path}:3: [policyd] colour: unknown key")


def test_main_with_broken_map_exits_2(tmp_path: Path, capsys) -> None:
    recipients = tmp_path / "relay_recipients"
    recipients.write_text("alice@example.test OK\nbroken\n", encoding="utf-8")
    path = tmp_path / "backupmx.conf"
    path.write_text(f"[policyd]\nrecipients = {recipients}\nrecipient_delimiter = +\n",
                    encoding="utf-8")
    assert main(["-c", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"backupmx-policyd: {recipients}:line 2: expected 'key value', got 'broken'")


def test_check_config_of_a_good_file(tmp_path: Path, capsys) -> None:
    recipients = tmp_path / "relay_recipients"
    recipients.write_text("alice@example.test OK\n@b.test OK\n", encoding="utf-8")
    path = tmp_path / "backupmx.conf"
    path.write_text(f"[policyd]\nrecipients = {recipients}\nrecipient_delimiter = +\n"
                    "[domains]\nexample.test = mx\n", encoding="utf-8")
    assert main(["-c", str(path), "--check-config"]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: OK, 1 domains, 2 recipient keys"


def test_command_line_with_bad_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_text("[policyd]\nprimary_up_action = bounce\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "backupmx.policyd.main", "-c", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"backupmx-policyd: {path}:2: [policyd] primary_up_action: ")


def test_command_line_with_missing_config_exits_2(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "backupmx.policyd.main", "-c",
                             str(tmp_path / "none.conf")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "none.conf: cannot read configuration" in result.stderr
