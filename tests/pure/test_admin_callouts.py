"""admin.callouts: what check, recipients status and query show of the callout cache."""
from __future__ import annotations

from pathlib import Path

from backupmx.admin.callouts import (
    StoredVerdicts,
    cached_verdict,
    callout_rows,
    check_callouts,
    check_flush_learning,
    read_cache,
    readable_by_flush_user,
)
from backupmx.admin.setup_checks import OK, WARN
from backupmx.common.callout_cache import CalloutStore, DomainCheck, store_path
from backupmx.common.callout_rules import INVALID, VALID, Entry
from backupmx.common.config import parse_config

NOW = 2_000_000.0


def config(tmp_path: Path):  # noqa: ANN201
    return parse_config(f"[policyd]\nrecipients = {tmp_path}/rr\nstate_directory = {tmp_path}\n"
                        "[domains]\nexample.test = [127.0.0.1]:25\nother.test = mx\n"
                        "[recipients verify]\ntype = callout\ndomains = example.test\n")


def fill(tmp_path: Path, accept_all: bool = False) -> None:
    store = CalloutStore(store_path(str(tmp_path)))
    store.put([Entry("dave@example.test", "example.test", VALID, NOW - 3600, "250 2.1.5 Ok"),
               Entry("zz@example.test", "example.test", INVALID, NOW - 60, "550 5.1.1 no")])
    store.put_check(DomainCheck("example.test", accept_all, NOW - 100, "250 2.1.5 Ok"
                                if accept_all else "550 5.1.1 no"))
    store.close()


def test_nothing_cached_yet(tmp_path: Path) -> None:
    conf = config(tmp_path)
    assert read_cache(conf) == ({}, {}, None)
    assert cached_verdict(conf, "example.test", "dave@example.test", NOW)["status"] is None
    assert cached_verdict(conf, "other.test", "x@other.test", NOW) is None  # no callout source
    assert callout_rows(conf)[0]["domains"][0]["accept_all"] is None
    assert [r.status for r in check_callouts(conf, {}, None)] == [OK]


def test_query_status_and_check_read_the_cache(tmp_path: Path) -> None:
    fill(tmp_path)
    conf = config(tmp_path)
    dave = cached_verdict(conf, "example.test", "Dave@Example.test", NOW)
    assert dave is not None
    assert (dave["verdict"], dave["status"], dave["age"], dave["accept_all"]) == (
        "positive", VALID, 3600, False)
    zz = StoredVerdicts(conf, lambda: NOW).verdict("example.test", "zz@example.test", NOW)
    assert zz is not None and zz.status == "negative"
    late = cached_verdict(conf, "example.test", "zz@example.test", NOW + 5 * 3600)
    assert late is not None and late["verdict"] == "unverified"  # expired after 4 hours
    row = callout_rows(conf)[0]
    assert row["name"] == "verify" and row["type"] == "callout"
    assert row["domains"] == [{"domain": "example.test", "valid": 1, "invalid": 1,
                               "accept_all": False, "checked_at": NOW - 100}]


def test_accept_all_primary_is_a_check_warning_and_turns_the_verdicts_off(tmp_path: Path) -> None:
    fill(tmp_path, accept_all=True)
    conf = config(tmp_path)
    _, checks, error = read_cache(conf)
    results = check_callouts(conf, checks, error)
    assert [r.status for r in results] == [WARN]
    assert "accepted a random address" in results[0].message
    assert StoredVerdicts(conf, lambda: NOW).verdict("example.test", "zz@example.test",
                                                     NOW) is None


def test_check_says_where_flushes_learn_from(tmp_path: Path) -> None:
    journal = check_flush_learning({"maillog_file": ""}, lambda path: None)
    assert journal.status == OK and "journal" in journal.message
    assert check_flush_learning({"maillog_file": "/dev/stdout"}, lambda path: None).status == WARN
    readable = check_flush_learning({"maillog_file": "/var/log/postfix.log"}, lambda path: True)
    assert readable.status == OK and "/var/log/postfix.log" in readable.message
    closed = check_flush_learning({"maillog_file": "/var/log/postfix.log"}, lambda path: False)
    assert closed.status == WARN and "not readable by user backupmx" in closed.message
    assert "setfacl -m u:backupmx:r /var/log/postfix.log" in closed.fix


def test_readable_by_the_flush_user_follows_the_mode_bits(tmp_path: Path) -> None:
    import os
    import pwd
    log = tmp_path / "maillog"
    log.write_text("")
    assert readable_by_flush_user(str(tmp_path / "missing")) is None
    try:
        user = pwd.getpwnam("backupmx")
    except KeyError:  # no such user here: whoever runs the check
        assert readable_by_flush_user(str(log)) is True
        return
    os.chown(log, 0, 0)
    os.chmod(log, 0o600)  # postlogd's mode, root's
    assert readable_by_flush_user(str(log)) is (user.pw_uid == 0)
    os.chmod(log, 0o644)
    assert readable_by_flush_user(str(log)) is True


def test_query_says_a_damaged_cache_cannot_be_read(tmp_path: Path) -> None:
    (tmp_path / "callouts.sqlite3").write_bytes(b"this is no database" * 100)
    found = cached_verdict(config(tmp_path), "example.test", "dave@example.test", NOW)
    assert found is not None and found["verdict"] == "unverified"
    assert "callouts.sqlite3" in found["error"]
    verdict = StoredVerdicts(config(tmp_path), lambda: NOW).verdict(
        "example.test", "dave@example.test", NOW)
    assert verdict is not None and verdict.status == "unverified"  # 450 while down: safe
