"""A map file in flux never turns a valid user into a 5xx (maps rewritten while policyd runs).

Two rules, on the service with a fake clock: a changed file is loaded only once two checks in a
row see the same size, mtime and inode (and not if it changed while it was read); a new map that
cuts a domain's keys by more than ``[policyd] max_shrink`` is held back, unless SIGHUP asks.
Files are rewritten the ways admins and tools do it: in place (truncate, then write, as ``cp``,
editors and ``>`` do), slowly in chunks, renamed over, and behind a symlink that is swapped.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List

import pytest
from twisted.logger import LogLevel

from backupmx.common.config import ConfigError, parse_config
from backupmx.common.recipient_map import load_recipient_map
from backupmx.policyd.metrics import PolicydMetrics
from backupmx.policyd.protocol import PolicyFactory
from backupmx.policyd.service import only_changed, shrunk_domains
from tests.harness.service_setup import Setup, make_service, messages, rcpt, settle

UNKNOWN = "550 5.1.1 "
USERS = [f"user{n}@example.test OK\n" for n in range(400)]
FULL = "".join(USERS)


def write_in_place(path: Path, text: str, mode: str = "w") -> None:
    """Write (or append) without replacing the file, moving the mtime on by one second."""
    before = path.stat().st_mtime_ns
    with path.open(mode, encoding="utf-8") as handle:
        handle.write(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    made = Setup(tmp_path)
    made.recipients.write_text(FULL, encoding="utf-8")
    return made


def never_refused(service: Any) -> None:
    for user in ("user0", "user399"):
        assert service.respond(rcpt(f"{user}@example.test")) == "DUNNO", user


def test_rewrite_in_place_checked_at_every_step_never_refuses_a_valid_user(setup: Setup) -> None:
    service, _, _ = make_service(setup)
    write_in_place(setup.recipients, "")  # truncated
    service.check_maps()
    never_refused(service)
    for start in range(0, 400, 50):  # then written again, a check after each write
        write_in_place(setup.recipients, "".join(USERS[start:start + 50]), "a")
        service.check_maps()
        never_refused(service)
    write_in_place(setup.recipients, "new@example.test OK\n", "a")
    service.check_maps()
    assert service.respond(rcpt("new@example.test")).startswith(UNKNOWN)  # still changing
    service.check_maps()  # the same as at the last check: stopped changing, loaded
    assert service.respond(rcpt("new@example.test")) == "DUNNO"
    never_refused(service)
    assert service.held_back == ()


def test_slow_writer_pausing_between_chunks_is_held_back(setup: Setup,
                                                         events: List[dict]) -> None:
    service, _, clock = make_service(setup)
    metrics = PolicydMetrics()
    metrics.attach(service, PolicyFactory(service.respond))
    write_in_place(setup.recipients, "".join(USERS[:100]))  # a quarter, then a long pause
    settle(service)
    never_refused(service)
    errors = [m for m in messages(events, LogLevel.error) if "max_shrink" in m]
    assert errors == ["recipient maps changed but would cut example.test 400 -> 100 keys (more "
                      "than max_shrink 20%: file truncated or half written?): keeping the last "
                      "good maps; send SIGHUP to use the change"]
    assert service.last_reload == (False, clock.seconds())
    assert b"backupmx_recipient_map_held_back 1.0" in metrics.text()
    write_in_place(setup.recipients, "".join(USERS[100:300]), "a")  # 300 of 400: still held
    settle(service)
    never_refused(service)
    write_in_place(setup.recipients, "".join(USERS[300:]) + "new@example.test OK\n", "a")
    settle(service)
    never_refused(service)
    assert service.respond(rcpt("new@example.test")) == "DUNNO"
    assert service.held_back == () and service.last_reload[0] is True
    assert b"backupmx_recipient_map_held_back 0.0" in metrics.text()
    assert len([m for m in messages(events, LogLevel.error) if "max_shrink" in m]) == 2


def test_file_renamed_over_with_the_same_size_and_mtime_is_loaded(setup: Setup) -> None:
    service, _, _ = make_service(setup)
    old = setup.recipients.stat()
    replacement = setup.folder / "relay_recipients.new"
    replacement.write_text(FULL.replace("user7@", "uzer7@"), encoding="utf-8")
    os.utime(replacement, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(replacement, setup.recipients)  # only the inode tells the change
    settle(service)
    assert service.respond(rcpt("uzer7@example.test")) == "DUNNO"
    assert service.respond(rcpt("user7@example.test")).startswith(UNKNOWN)


def test_swapped_symlink_is_followed(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    first, second = tmp_path / "recipients.1", tmp_path / "recipients.2"
    first.write_text(FULL, encoding="utf-8")
    second.write_text(FULL.replace("user9@", "uzer9@"), encoding="utf-8")
    os.utime(second, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns))
    setup.recipients.unlink()
    setup.recipients.symlink_to(first)
    service, _, _ = make_service(setup)
    assert service.respond(rcpt("user9@example.test")) == "DUNNO"
    swap = tmp_path / "swap"
    swap.symlink_to(second)
    os.replace(swap, setup.recipients)  # ln -sfn, atomically
    settle(service)
    assert service.respond(rcpt("uzer9@example.test")) == "DUNNO"
    assert service.respond(rcpt("user9@example.test")).startswith(UNKNOWN)


def test_swapped_symlink_to_a_partial_file_is_held_back(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    first, second = tmp_path / "recipients.1", tmp_path / "recipients.2"
    first.write_text(FULL, encoding="utf-8")
    second.write_text("".join(USERS[:10]), encoding="utf-8")
    setup.recipients.unlink()
    setup.recipients.symlink_to(first)
    service, _, _ = make_service(setup)
    swap = tmp_path / "swap"
    swap.symlink_to(second)
    os.replace(swap, setup.recipients)
    settle(service)
    never_refused(service)
    assert [str(s) for s in service.held_back] == ["example.test 400 -> 10 keys"]


def test_file_that_changes_while_it_is_read_is_read_again(setup: Setup, events: List[dict],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import backupmx.policyd.service as service_module
    service, _, _ = make_service(setup)
    real_load = service_module.load_maps
    writes = [FULL + "late@example.test OK\n"]

    def load_then_write(*args: Any, **kwargs: Any) -> Any:
        loaded = real_load(*args, **kwargs)
        if writes:
            write_in_place(setup.recipients, writes.pop())  # the writer went on meanwhile
        return loaded

    monkeypatch.setattr(service_module, "load_maps", load_then_write)
    write_in_place(setup.recipients, FULL + "early@example.test OK\n")
    settle(service)
    assert service.respond(rcpt("early@example.test")).startswith(UNKNOWN)  # not used
    assert any("changed while it was read" in m for m in messages(events, LogLevel.info))
    settle(service)
    assert service.respond(rcpt("late@example.test")) == "DUNNO"


def test_sighup_applies_a_shrunk_map(setup: Setup, events: List[dict]) -> None:
    service, _, _ = make_service(setup)
    write_in_place(setup.recipients, "".join(USERS[:10]))
    settle(service)
    assert service.respond(rcpt("user399@example.test")) == "DUNNO"  # held back
    service.reload()  # the admin's word
    assert service.respond(rcpt("user399@example.test")).startswith(UNKNOWN)
    assert service.held_back == ()
    assert any("example.test 400 -> 10 keys" in m and "applied" in m
               for m in messages(events, LogLevel.warn))


@pytest.mark.parametrize("share, kept, used", [
    ("50%", 250, True),     # 37.5% cut, allowed
    ("50%", 150, False),    # 62.5% cut
    ("100%", 1, True),      # never held back
    ("0%", 399, False),     # any cut is held back
])
def test_max_shrink_setting(setup: Setup, share: str, kept: int, used: bool) -> None:
    setup.write_config(f"max_shrink = {share}\n")
    service, _, _ = make_service(setup)
    write_in_place(setup.recipients, "".join(USERS[:kept]))
    settle(service)
    refused = service.respond(rcpt("user399@example.test")).startswith(UNKNOWN)
    assert refused is used


def test_shrink_counts_subdomains_of_configured_domains_only(tmp_path: Path) -> None:
    def parse(name: str, text: str) -> Any:
        (tmp_path / name).write_text(text, encoding="utf-8")
        return load_recipient_map([str(tmp_path / name)])

    old = parse("old", "a@example.test x\nb@example.test x\na@sub.example.test x\n"
                "b@sub.example.test x\nc@sub.example.test x\na@other.test x\nb@other.test x\n")
    new = parse("new", "a@example.test x\nb@example.test x\nc@sub.example.test x\n")
    cut = shrunk_domains(old, new, ["example.test"], 0.2)
    assert [str(s) for s in cut] == ["sub.example.test 3 -> 1 keys"]  # other.test: not ours


@pytest.mark.parametrize("value, expected", [("20%", 0.2), ("0.35", 0.35), ("0%", 0.0),
                                             ("100%", 1.0)])
def test_max_shrink_values(value: str, expected: float) -> None:
    config = parse_config(f"[policyd]\nmax_shrink = {value}\n", "b.conf")
    assert config.policyd.max_shrink == pytest.approx(expected)


@pytest.mark.parametrize("value", ["120%", "-1%", "a lot", "35"])
def test_max_shrink_bad_values_name_the_line(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^b\.conf:2: \[policyd\] max_shrink: "):
        parse_config(f"[policyd]\nmax_shrink = {value}\n", "b.conf")


def test_catch_all_widens_and_losing_one_is_a_shrink(tmp_path: Path) -> None:
    def parse(name: str, text: str) -> Any:
        (tmp_path / name).write_text(text, encoding="utf-8")
        return load_recipient_map([str(tmp_path / name)])

    users = parse("users", "a@example.test x\nb@example.test x\nc@example.test x\n")
    catch_all = parse("catch_all", "@example.test x\n")
    assert shrunk_domains(users, catch_all, ["example.test"], 0.2) == []
    assert [str(s) for s in shrunk_domains(catch_all, users, ["example.test"], 0.2)] == \
        ["example.test @example.test (every address) -> 3 keys"]
    assert shrunk_domains(catch_all, users, ["example.test"], 1.0) == []


def source_setup(tmp_path: Path) -> Setup:
    setup = Setup(tmp_path)
    setup.write_config(f"state_directory = {tmp_path}/state\n\n[recipients dir]\n"
                       "type = command\ncommand = /bin/true\n")
    (tmp_path / "state" / "recipients").mkdir(parents=True)
    return setup


def test_a_source_snapshot_is_loaded_at_the_first_check_and_never_held_back(
        tmp_path: Path) -> None:
    # A sync writes the snapshot whole and renames it into place, after judging it with the
    # source's own max_shrink: policyd neither waits for it to settle nor judges it again.
    setup = source_setup(tmp_path)
    snapshot = tmp_path / "state" / "recipients" / "dir.map"
    service, _, _ = make_service(setup)
    snapshot.write_text("".join(USERS), encoding="utf-8")
    service.check_maps()
    assert service.respond(rcpt("user399@example.test")) == "DUNNO"
    replacement = snapshot.with_suffix(".pending")
    replacement.write_text("".join(USERS[:10]), encoding="utf-8")
    os.replace(replacement, snapshot)
    service.check_maps()
    assert service.held_back == ()
    assert not service.respond(rcpt("user399@example.test")) == "DUNNO"
    assert service.respond(rcpt("user9@example.test")) == "DUNNO"
    write_in_place(setup.recipients, "alice@example.test OK\nzed@example.test OK\n")
    service.check_maps()  # a recipient file changed too: wait for it to settle
    assert service.respond(rcpt("zed@example.test")) != "DUNNO"
    service.check_maps()
    assert service.respond(rcpt("zed@example.test")) == "DUNNO"


def test_only_changed() -> None:
    old = (("/a", (1, 2, 3)), ("/s", "No such file or directory"))
    assert only_changed(old, (("/a", (1, 2, 3)), ("/s", (4, 5, 6))), ["/s"])
    assert not only_changed(old, (("/a", (1, 2, 9)), ("/s", (4, 5, 6))), ["/s"])
    assert not only_changed(old, (("/a", (1, 2, 3)),), ["/s"])
