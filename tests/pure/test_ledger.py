"""Ledger: schema and migrations, records, and the journal fallback when SQLite fails."""
from __future__ import annotations

import logging
import os
import pwd
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

from backupmx.milter import ledger_schema as ledger_module
from backupmx.milter.journal import Journal, parse_journal
from backupmx.milter.ledger import MIGRATIONS, SCHEMA_VERSION, Ledger, LedgerError, connect, migrate
from tests.harness.command_fakes import record


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(str(tmp_path / "ledger.sqlite3"))
    yield opened
    opened.close()


# ---- schema ---------------------------------------------------------------------------------

def test_new_ledger_is_wal_at_current_version(tmp_path: Path) -> None:
    conn = connect(str(tmp_path / "l.sqlite3"))
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"messages", "message_domains", "flush_events"} <= tables


def test_version_1_ledger_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    path = str(tmp_path / "old.sqlite3")
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(MIGRATIONS[0])
    old.execute("PRAGMA user_version = 1")
    old.execute("INSERT INTO messages (id, queue_id, received_at, sender, size) "
                "VALUES (1, 'OLD1', 5.0, 's@x.test', 42)")
    old.execute("INSERT INTO message_domains (message_id, domain, recipients) "
                "VALUES (1, 'a.test', 'alice@a.test')")
    old.close()
    ledger = Ledger(path)
    assert [(r.queue_id, r.domain, r.seen_in_queue) for r in ledger.held_rows()] == \
        [("OLD1", "a.test", False)]
    conn = ledger._connection()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert "seen_in_queue_at" in {r[1] for r in conn.execute("PRAGMA table_info(messages)")}
    assert "adopted_at" in {r[1] for r in conn.execute("PRAGMA table_info(message_domains)")}
    assert ledger.summaries()["a.test"].adopted_messages == 0  # the old row: milter-recorded
    ledger.close()


def test_version_3_ledger_gains_the_notify_state(tmp_path: Path) -> None:
    path = str(tmp_path / "v3.sqlite3")
    old = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:3]:
        old.executescript(script)
    old.execute("PRAGMA user_version = 3")
    old.execute("INSERT INTO messages (id, queue_id, received_at, sender, size) "
                "VALUES (1, 'OLD1', 5.0, 's@x.test', 42)")
    old.close()
    ledger = Ledger(path)
    assert ledger.notify_states() == {}
    ledger.save_notify_states({"a.test": (10.0, 20.0, None), "b.test": (1.0, 1.0, 3.0)})
    ledger.save_notify_states({"a.test": (10.0, 30.0, None)})   # b.test all clear: gone
    assert ledger.notify_states() == {"a.test": (10.0, 30.0, None)}
    conn = ledger._connection()
    assert conn.execute("SELECT queue_id, size FROM messages").fetchall() == [("OLD1", 42)]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    ledger.close()


def test_migrate_is_idempotent(tmp_path: Path) -> None:
    conn = connect(str(tmp_path / "l.sqlite3"))
    assert migrate(conn) == SCHEMA_VERSION


def test_newer_schema_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = str(tmp_path / "new.sqlite3")
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(LedgerError, match="newer than this backupmx"):
        connect(path)


def test_failed_migration_leaves_the_previous_version(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "l.sqlite3")
    monkeypatch.setattr(ledger_module, "MIGRATIONS", (MIGRATIONS[0], "CREATE TABLE broken ("))
    monkeypatch.setattr(ledger_module, "SCHEMA_VERSION", 2)
    with pytest.raises(sqlite3.Error):
        connect(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1


def test_command_does_not_create_a_missing_ledger(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger yet"):
        Ledger(str(tmp_path / "missing.sqlite3"), create=False).held_rows()
    assert not (tmp_path / "missing.sqlite3").exists()


# ---- records --------------------------------------------------------------------------------

def test_record_is_committed_per_domain(ledger: Ledger) -> None:
    assert ledger.record(record("Q1", a_test="alice@a.test,bob@a.test", b_test="c@b.test")) \
        == "ledger"
    assert ledger.record(record("Q2", size=500)) == "ledger"
    # Visible to another connection at once: committed, not pending in a transaction.
    other = Ledger(ledger.path)
    summaries = other.summaries()
    assert (summaries["a.test"].held_messages, summaries["a.test"].held_bytes) == (2, 1500)
    assert (summaries["b.test"].held_messages, summaries["b.test"].held_bytes) == (1, 1000)
    assert summaries["a.test"].oldest_received_at == 100.0
    rows = other._connection().execute(
        "SELECT recipients FROM message_domains WHERE domain = 'a.test' ORDER BY message_id")
    assert [r[0] for r in rows][0] == "alice@a.test\nbob@a.test"
    other.close()


def test_same_record_twice_is_stored_once(ledger: Ledger) -> None:
    ledger.write([record("Q1"), record("Q1")])
    ledger.record(record("Q1"))
    assert len(ledger.held_rows()) == 1


def test_reused_queue_id_at_another_time_is_another_message(ledger: Ledger) -> None:
    ledger.record(record("Q1", received_at=1.0))
    ledger.record(record("Q1", received_at=2.0))
    assert len(ledger.held_rows()) == 2


def test_concurrent_threads_lose_nothing(ledger: Ledger) -> None:
    def worker(n: int) -> None:
        for i in range(50):
            assert ledger.record(record(f"T{n}-{i}")) == "ledger"
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ledger.summaries()["a.test"].held_messages == 400


def test_flush_events_and_last_flush(ledger: Ledger) -> None:
    first = ledger.start_flush("a.test", "manual", False, "up", 3, now=10.0)
    ledger.finish_flush(first, 3, 0, "complete", "", now=11.0)
    second = ledger.start_flush("a.test", "auto", True, "down", 1, now=20.0)
    ledger.start_flush("b.test", "auto", False, "up", 2, now=21.0)
    last = ledger.last_flushes()
    assert last["a.test"].id == second and last["a.test"].forced
    assert last["a.test"].result == "running"
    assert last["b.test"].held_before == 2
    event = ledger.flush_event(first)
    assert event is not None and (event.delivered, event.remaining, event.result) == \
        (3, 0, "complete")


# ---- journal fallback -----------------------------------------------------------------------

def test_missing_folder_goes_to_journal_then_replays(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "not-yet"
    journal = tmp_path / "journal"
    ledger = Ledger(str(folder / "ledger.sqlite3"), str(journal))
    with caplog.at_level(logging.ERROR, logger="backupmx.milter.ledger"):
        assert ledger.record(record("J1")) == "journal"
        assert ledger.record(record("J2")) == "journal"
    assert "J1" in caplog.text and "kept in journal" in caplog.text
    assert [r.queue_id for r in parse_journal(journal.read_bytes())[0]] == ["J1", "J2"]
    folder.mkdir()
    assert ledger.record(record("L3")) == "ledger"
    assert sorted(r.queue_id for r in ledger.held_rows()) == ["J1", "J2", "L3"]
    assert journal.read_bytes() == b""
    ledger.close()


def test_locked_ledger_goes_to_journal_then_replays(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite3")
    ledger = Ledger(path, busy_timeout=0.05)
    ledger.record(record("BEFORE"))
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        assert ledger.record(record("DURING")) == "journal"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert ledger.journal.pending()
    assert ledger.record(record("AFTER")) == "ledger"
    assert sorted(r.queue_id for r in ledger.held_rows()) == ["AFTER", "BEFORE", "DURING"]
    assert not ledger.journal.pending()
    ledger.close()


def test_disk_full_goes_to_journal(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: Ledger, conn: sqlite3.Connection, records: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")
    with monkeypatch.context() as patch:
        patch.setattr(Ledger, "_insert", full)
        assert ledger.record(record("FULL")) == "journal"
    assert ledger.record(record("ROOM")) == "ledger"
    assert sorted(r.queue_id for r in ledger.held_rows()) == ["FULL", "ROOM"]


def test_replay_failure_keeps_the_journal(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger.journal.append(record("KEPT"))
    original = Ledger._insert
    calls = []

    def flaky(self: Ledger, conn: sqlite3.Connection, records: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        original(self, conn, records)  # type: ignore[arg-type]
    monkeypatch.setattr(Ledger, "_insert", flaky)
    assert ledger.record(record("NEW")) == "journal"
    assert [r.queue_id for r in parse_journal(Path(ledger.journal.path).read_bytes())[0]] == \
        ["KEPT", "NEW"]
    assert ledger.replay_journal() == 2
    assert sorted(r.queue_id for r in ledger.held_rows()) == ["KEPT", "NEW"]


def test_torn_journal_line_is_reported_and_skipped(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal(str(tmp_path / "journal"))
    journal.append(record("GOOD"))
    with open(journal.path, "ab") as handle:
        handle.write(b'{"queue_id": "TORN", "recei')
    seen = []
    with caplog.at_level(logging.ERROR):
        assert journal.replay(seen.extend) == 1
    assert [r.queue_id for r in seen] == ["GOOD"]
    assert "unreadable journal line" in caplog.text
    assert not journal.pending()


def test_ledger_and_journal_both_unwritable_logs_the_record(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "missing"
    ledger = Ledger(str(missing / "ledger.sqlite3"), str(missing / "journal"))
    with caplog.at_level(logging.CRITICAL):
        assert ledger.record(record("LOST1")) == "lost"
    assert "LOST1" in caplog.text and "nor journal" in caplog.text


def _as_nobody(action: Callable[[], str]) -> str:
    """Run action in a child process as user nobody; its result string, or the error."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read)
            nobody = pwd.getpwnam("nobody")
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            result = action()
        except BaseException as error:  # report anything to the parent
            result = f"error: {error!r}"
        os.write(write, result.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        output = pipe.read().decode()
    os.waitpid(pid, 0)
    return output


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child as another user")
def test_read_only_ledger_goes_to_journal_then_replays() -> None:
    top = Path(tempfile.mkdtemp(prefix="ledger-ro-"))
    try:
        top.chmod(0o755)
        ledger_dir = top / "ledger"
        ledger_dir.mkdir(mode=0o755)
        journal_dir = top / "journal"
        journal_dir.mkdir()
        journal_dir.chmod(0o777)
        path = str(ledger_dir / "ledger.sqlite3")
        Ledger(path).close()  # created by root: read-only for nobody
        journal = str(journal_dir / "journal")

        outcome = _as_nobody(lambda: Ledger(path, journal, busy_timeout=0.05)
                             .record(record("RO1")))
        assert outcome == "journal"
        ledger = Ledger(path, journal)
        assert ledger.record(record("RW2")) == "ledger"
        assert sorted(r.queue_id for r in ledger.held_rows()) == ["RO1", "RW2"]
        ledger.close()
    finally:
        import shutil
        shutil.rmtree(top)


def test_concurrent_records_share_one_commit(ledger: Ledger,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    batches = []
    original = Ledger.write

    def counting_write(self: Ledger, records: object) -> int:
        batches.append(len(records))  # type: ignore[arg-type]
        return original(self, records)  # type: ignore[arg-type]
    monkeypatch.setattr(Ledger, "write", counting_write)
    results = []
    with ledger._lock:  # a commit in progress: the next records queue up behind it
        threads = [threading.Thread(target=lambda n=n: results.append(
            ledger.record(record(f"G{n}")))) for n in range(6)]
        for thread in threads:
            thread.start()
        while len(ledger._pending) < 6:
            threading.Event().wait(0.001)
    for thread in threads:
        thread.join()
    assert results == ["ledger"] * 6
    assert batches == [6]
    assert len(ledger.held_rows()) == 6


@pytest.mark.parametrize("sync, level", [("normal", 1), ("full", 2)])
def test_ledger_sync_setting_reaches_sqlite(tmp_path: Path, sync: str, level: int) -> None:
    ledger = Ledger(str(tmp_path / "ledger.sqlite3"), sync=sync).open()
    try:
        assert ledger._connection().execute("PRAGMA synchronous").fetchone()[0] == level
    finally:
        ledger.close()


def test_immediate_commits_rolls_back_on_errors_and_lets_a_block_roll_back(
        tmp_path: Path) -> None:
    from backupmx.milter.ledger_schema import immediate
    conn = sqlite3.connect(str(tmp_path / "t.sqlite3"), isolation_level=None)
    conn.execute("CREATE TABLE t (n INTEGER)")
    with immediate(conn):
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.OperationalError):
        with immediate(conn):
            conn.execute("INSERT INTO t VALUES (2)")
            conn.execute("INSERT INTO missing VALUES (2)")
    with immediate(conn):
        conn.execute("INSERT INTO t VALUES (3)")
        conn.execute("ROLLBACK")  # the block decided not to write after all
    assert not conn.in_transaction
    assert conn.execute("SELECT n FROM t").fetchall() == [(1,)]
