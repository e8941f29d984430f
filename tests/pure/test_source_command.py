"""The command source with real programs (shell scripts written by the tests)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from backupmx.common.source_settings import CommandSettings
from backupmx.sources import command
from backupmx.sources.errors import SourceCommandFailed, SourceOutputError, SourceTimeout


def script(tmp_path: Path, body: str) -> CommandSettings:
    path = tmp_path / "list-addresses"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return CommandSettings(argv=(str(path), "--all"))


def test_one_address_a_line_comments_and_blanks_skipped(tmp_path: Path) -> None:
    settings = script(tmp_path, 'echo "# generated"; echo "alice@example.test"; echo\n'
                                'echo "  Bob@Example.Test  "; echo "@other.test"\n'
                                'echo "$1@x.test"\n')
    assert command.fetch(settings, timeout=10) == ["alice@example.test", "Bob@Example.Test",
                                                   "@other.test", "--all@x.test"]


def test_empty_output_is_an_empty_list(tmp_path: Path) -> None:
    assert command.fetch(script(tmp_path, "exit 0\n"), timeout=10) == []


def test_non_zero_exit_fails_with_the_last_error_line(tmp_path: Path) -> None:
    settings = script(tmp_path, 'echo "alice@example.test"; echo "connecting" >&2\n'
                                'echo "ldap_bind: Invalid credentials (49)" >&2; exit 3\n')
    with pytest.raises(SourceCommandFailed, match=r"exited with status 3: ldap_bind: Invalid "
                                                  r"credentials \(49\)$") as caught:
        command.fetch(settings, timeout=10)
    assert caught.value.returncode == 3


def test_killed_by_a_signal_fails(tmp_path: Path) -> None:
    with pytest.raises(SourceCommandFailed, match="killed by signal 9") as caught:
        command.fetch(script(tmp_path, "kill -9 $$\n"), timeout=10)
    assert caught.value.returncode == -9


def test_missing_program_fails_as_127(tmp_path: Path) -> None:
    settings = CommandSettings(argv=(str(tmp_path / "absent"),))
    with pytest.raises(SourceCommandFailed, match="cannot run it: No such file") as caught:
        command.fetch(settings, timeout=10)
    assert caught.value.returncode == 127


def test_hanging_command_and_its_children_are_killed_at_the_timeout(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    settings = script(tmp_path, f'echo "alice@example.test"\nsleep 300 & echo $! > {pid_file}\n'
                                f"wait\n")
    started = time.monotonic()
    with pytest.raises(SourceTimeout, match=r"within 1\.5 s.*process group was killed"):
        command.fetch(settings, timeout=1.5)
    assert time.monotonic() - started < 1.5 + 1.0
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead too
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_binary_garbage_is_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(SourceOutputError, match="line 2 is not UTF-8"):
        command.fetch(script(tmp_path, r"printf 'a@example.test\n\377\376garbage\n'" + "\n"),
                      timeout=10)


def test_nul_bytes_are_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(SourceOutputError, match="NUL"):
        command.fetch(script(tmp_path, r"printf 'a@example.test\000\n'" + "\n"), timeout=10)


def test_text_without_any_address_is_an_output_error(tmp_path: Path) -> None:
    settings = script(tmp_path, 'echo "Usage: list-addresses [--all]"; echo "try --help"\n')
    with pytest.raises(SourceOutputError, match="no output line looks like an address; the "
                                                "first is 'Usage: list-addresses"):
        command.fetch(settings, timeout=10)


def test_malformed_lines_among_addresses_are_returned_for_the_caller_to_count(
        tmp_path: Path) -> None:
    settings = script(tmp_path, 'echo "alice@example.test"; echo "not an address"\n')
    assert command.fetch(settings, timeout=10) == ["alice@example.test", "not an address"]
