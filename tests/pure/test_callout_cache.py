"""common.callout_rules and common.callout_cache: lifetimes, refresh, persistence."""
from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock

from backupmx.common.callout_cache import (
    CalloutCache,
    CalloutStore,
    CalloutWriter,
    DomainCheck,
    read_store,
    store_path,
)
from backupmx.common.callout_rules import (
    INVALID,
    NEGATIVE,
    POSITIVE,
    UNVERIFIED,
    VALID,
    Entry,
    Lifetimes,
    is_probe,
    probe_address,
    verdict_of,
)

DAY = 86400.0
LIFE = Lifetimes()  # 31 d positive, refreshed after 7 d, 4 h negative


def test_positive_is_kept_31_days_and_refreshed_after_7() -> None:
    entry = Entry("a@x.test", "x.test", VALID, 0.0)
    assert verdict_of(entry, LIFE, 6 * DAY) == (POSITIVE, False, 6 * DAY)
    assert verdict_of(entry, LIFE, 7 * DAY).status == POSITIVE
    assert verdict_of(entry, LIFE, 7 * DAY).refresh
    assert verdict_of(entry, LIFE, 31 * DAY - 1).status == POSITIVE
    assert verdict_of(entry, LIFE, 31 * DAY) == (UNVERIFIED, True, None)


def test_negative_is_kept_4_hours_and_never_refreshed_meanwhile() -> None:
    entry = Entry("z@x.test", "x.test", INVALID, 0.0)
    assert verdict_of(entry, LIFE, 4 * 3600 - 1) == (NEGATIVE, False, 4 * 3600 - 1)
    assert verdict_of(entry, LIFE, 4 * 3600).status == UNVERIFIED
    assert verdict_of(None, LIFE, 0.0) == (UNVERIFIED, True, None)


def test_failed_refresh_never_removes_a_positive_entry() -> None:
    clock = Clock()
    cache = CalloutCache({"x.test": LIFE}, clock.seconds)
    cache.record(Entry("a@x.test", "x.test", VALID, clock.seconds()))
    clock.advance(8 * DAY)
    assert cache.record(Entry("a@x.test", "x.test", INVALID, clock.seconds())) is None
    assert cache.verdict("a@x.test", "x.test", clock.seconds()).status == POSITIVE
    clock.advance(23 * DAY)  # 31 days after the last good answer it expires
    assert cache.verdict("a@x.test", "x.test", clock.seconds()).status == UNVERIFIED
    assert len(cache) == 0


def test_memory_side_expires_per_entry() -> None:
    clock = Clock()
    cache = CalloutCache({"x.test": LIFE}, clock.seconds)
    cache.record(Entry("a@x.test", "x.test", VALID, 0.0))
    cache.record(Entry("z@x.test", "x.test", INVALID, 0.0))
    assert cache.counts() == {("x.test", VALID): 1, ("x.test", INVALID): 1}
    clock.advance(5 * 3600)
    assert cache.counts() == {("x.test", VALID): 1}


def test_store_survives_a_restart_and_skips_expired(tmp_path: Path) -> None:
    path = store_path(str(tmp_path))
    store = CalloutStore(path)
    writer = CalloutWriter(store, on_error=lambda line: None)
    writer.put([Entry("a@x.test", "x.test", VALID, 1000.0, "250 2.1.5 Ok"),
                Entry("z@x.test", "x.test", INVALID, 1000.0, "550 5.1.1 unknown")])
    writer.put_check(DomainCheck("x.test", False, 1000.0, "550 5.1.1"))
    writer.flush()
    writer.close()
    clock = Clock()
    clock.advance(1000.0 + 5 * 3600)
    again = CalloutCache({"x.test": LIFE}, clock.seconds)
    assert again.load(CalloutStore(path).entries()) == 1
    assert again.verdict("a@x.test", "x.test", clock.seconds()).status == POSITIVE
    reader = read_store(str(tmp_path))
    assert reader is not None
    assert reader.get("z@x.test") == Entry("z@x.test", "x.test", INVALID, 1000.0,
                                           "550 5.1.1 unknown")
    assert reader.checks()["x.test"].accept_all is False
    assert reader.counts() == {("x.test", VALID): 1, ("x.test", INVALID): 1}
    assert read_store(str(tmp_path / "nothing")) is None


def test_writer_reports_a_failed_write(tmp_path: Path) -> None:
    errors = []
    store = CalloutStore(str(tmp_path / "missing" / "deeper" / "c.sqlite3"))
    (tmp_path / "missing").write_text("a file where a folder should be")
    writer = CalloutWriter(store, on_error=errors.append)
    writer.put([Entry("a@x.test", "x.test", VALID, 0.0)])
    writer.flush()
    assert len(errors) == 1 and "write failed" in errors[0]


def test_probe_addresses_are_random_and_recognisable() -> None:
    first, second = probe_address("x.test"), probe_address("x.test")
    assert first != second and first.endswith("@x.test") and is_probe(first)
