"""The milter follows [domains] edits of its configuration file without a restart."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from backupmx.common.config import load_config
from backupmx.milter.app import MilterSettings
from backupmx.milter.config_watch import ConfigWatcher


def write(path: Path, domains: str, milter: str = "") -> None:
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(f"[milter]\nledger = /var/lib/b/ledger.sqlite3\n{milter}\n[domains]\n{domains}")
    os.utime(path, ns=(before + 10**9, before + 10**9))


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "backupmx.conf"
    write(path, "a.test = mx\n")
    return path


def watcher_for(conf: Path, interval: float = 2.0) -> ConfigWatcher:
    config = load_config(str(conf))
    return ConfigWatcher(config, MilterSettings(None, frozenset(config.domains)), interval)


def test_added_domain_is_applied_once_the_file_stopped_changing(
        conf: Path, caplog: pytest.LogCaptureFixture) -> None:
    watcher = watcher_for(conf)
    assert watcher.check() is False  # nothing changed
    write(conf, "a.test = mx\nNew.Test = [127.0.0.1]:25\n")
    with caplog.at_level(logging.INFO, logger="backupmx.milter"):
        assert watcher.check() is False  # changed: wait for it to stay the same
        assert watcher.settings.domains == {"a.test"}
        assert watcher.check() is True
    assert watcher.settings.domains == {"a.test", "new.test"}
    assert [r.getMessage() for r in caplog.records] == [
        "configuration re-read: recording mail for 2 relay domains (added new.test)"]
    write(conf, "new.test = mx\n")
    watcher.check()
    watcher.check()
    assert watcher.settings.domains == {"new.test"}


def test_invalid_file_keeps_the_domains_and_is_logged_once(
        conf: Path, caplog: pytest.LogCaptureFixture) -> None:
    watcher = watcher_for(conf)
    write(conf, "a.test = mx\nnot a domain = mx\n")
    with caplog.at_level(logging.INFO, logger="backupmx.milter"):
        for _ in range(4):
            watcher.check()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and f"{conf}:6: [domains]" in errors[0]
    assert watcher.settings.domains == {"a.test"}
    write(conf, "a.test = mx\nb.test = mx\n")
    watcher.check()
    assert watcher.check() is True and watcher.settings.domains == {"a.test", "b.test"}


def test_milter_settings_needing_a_restart_are_named(
        conf: Path, caplog: pytest.LogCaptureFixture) -> None:
    watcher = watcher_for(conf)
    write(conf, "a.test = mx\n", milter="listen = unix:/run/m.sock\nledger_sync = full\n")
    with caplog.at_level(logging.INFO, logger="backupmx.milter"):
        watcher.check()
        assert watcher.check() is False  # the domains did not change
    assert [r.getMessage() for r in caplog.records] == [
        "configuration changed: [milter] listen, [milter] ledger_sync; restart backupmx-milter "
        "to use the new values (running with the old until then)"]


def test_the_thread_applies_an_edit_and_stops(conf: Path) -> None:
    watcher = watcher_for(conf, interval=0.01)
    thread = watcher.start()
    try:
        write(conf, "a.test = mx\nc.test = mx\n")
        deadline = time.monotonic() + 10
        while "c.test" not in watcher.settings.domains and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watcher.settings.domains == {"a.test", "c.test"}
    finally:
        watcher.stop()
    assert not thread.is_alive()
