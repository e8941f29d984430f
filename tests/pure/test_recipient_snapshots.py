"""Recipient sources without servers: the configuration, the safety rules, the snapshot store,
a sync's bookkeeping (with a fetch function standing in for a driver), the import format, the
Postfix table's content and each domain's freshness."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import pytest

from backupmx.admin.recipients import parse_import
from backupmx.common.config import ConfigError, parse_config
from backupmx.common.recipient_map import RecipientMap, load_recipient_map
from backupmx.common.recipient_sources import callout_domains, freshness, snapshot_sources
from backupmx.common.recipient_table import table_lines
from backupmx.common.snapshots import SnapshotStore, SourceState
from backupmx.common.source_rules import classify, judge, owner_of
from backupmx.common.source_settings import SourceSettings
from backupmx.sources.errors import SourceUnreachable
from backupmx.sources.sync import accept, apply_rows, sync_source

DOMAINS = "[domains]\nexample.test = [127.0.0.1]:25\nother.test = mx\n"


def config_text(tmp_path: Path, sources: str) -> str:
    return (f"[policyd]\nrecipients = {tmp_path}/rr\nstate_directory = {tmp_path}/state\n"
            f"{sources}\n{DOMAINS}")


# ---- configuration ----------------------------------------------------------------------------

def test_sources_follow_the_recipient_files_and_default_to_every_domain(tmp_path: Path) -> None:
    config = parse_config(config_text(tmp_path, "[recipients Dir]\ntype = command\n"
                                      "command = /bin/echo a@example.test\nmax_shrink = 10%\n"))
    assert [(s.name, s.type) for s in config.sources] == [(f"{tmp_path}/rr", "file"),
                                                          ("Dir", "command")]
    directory = config.source("Dir")
    assert directory is not None
    assert directory.domains == ("example.test", "other.test")
    assert directory.max_shrink == pytest.approx(0.1)
    assert config.policyd.state_directory == f"{tmp_path}/state"
    assert parse_config("").postfix.recipient_table is None


@pytest.mark.parametrize("section,expected", [
    ("[recipients d]\ntype = ldap\nuri = ldap://x\nbase = dc=x\nscope = base\n",
     "/c:8: [recipients d] scope: 'base' is not one of sub, one"),
    ("[recipients d]\ntype = command\ncommand = /bin/true\ndomains = nope.test\n",
     "/c:7: [recipients d] domains: nope.test not in [domains]"),
    ("[recipients d]\ntype = pgsql\nquery = SELECT 1\n",
     "/c:4: [recipients d] dsn: missing (required for type pgsql)"),
    ("[recipients d]\ntype = push\ncolour = blue\n",
     "/c:6: [recipients d] colour: unknown key for type push"),
    ("[recipients d]\ntype = push\n[recipients d]\ntype = push\n",
     "/c:6: section [recipients d] appears twice"),
])
def test_a_bad_source_section_names_file_line_and_key(tmp_path: Path, section: str,
                                                      expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config_text(tmp_path, section), "/c")
    assert str(caught.value).startswith(expected)


# ---- rules ------------------------------------------------------------------------------------

def test_classify_normalises_groups_ignores_and_counts_malformed_rows() -> None:
    found = classify(["Alice@Example.TEST", "bob@sub.example.test.", "@example.test",
                      "carol@elsewhere.test", "no address", "x@y@example.test",
                      "odd user@example.test"], ("example.test", "other.test"))
    assert found.keys["example.test"] == {"alice@example.test", "bob@sub.example.test",
                                          "@example.test", '"odd user"@example.test'}
    assert found.keys["other.test"] == frozenset()
    assert (found.ignored, found.malformed) == (1, 2)
    assert found.first_malformed == "'no address': no '@domain'"


def test_owner_is_the_nearest_configured_parent() -> None:
    assert owner_of("a.b.example.test", ("example.test", "b.example.test")) == "b.example.test"
    assert owner_of("notexample.test", ("example.test",)) is None


@pytest.mark.parametrize("old,new,shrink,held", [
    (None, 0, 0.2, True), (10, 0, 1.0, True), (None, 5, 0.2, False), (10, 8, 0.2, False),
    (10, 7, 0.2, True), (10, 5, 0.5, False), (10, 12, 0.0, False), (10, 9, 0.0, True),
])
def test_judge_holds_back_empty_and_shrinking_results(old, new, shrink, held) -> None:
    assert (judge(old, new, shrink) is not None) is held


# ---- store and sync ---------------------------------------------------------------------------

def source(**changes) -> SourceSettings:
    from backupmx.common.source_settings import CommandSettings
    settings = dict(name="dir", type="command", driver=CommandSettings(("/bin/true",)),
                    domains=("example.test", "other.test"), max_shrink=0.2, stale_after=60)
    settings.update(changes)
    return SourceSettings(**settings)  # type: ignore[arg-type]


class Fetch:
    def __init__(self) -> None:
        self.rows: List[str] = []
        self.error: Exception = None  # type: ignore[assignment]

    def __call__(self, _source: SourceSettings) -> List[str]:
        if self.error is not None:
            raise self.error
        return list(self.rows)


def users(n: int, domain: str = "example.test") -> List[str]:
    return [f"user{i}@{domain}" for i in range(n)]


def test_sync_stores_applies_holds_back_and_accepts(tmp_path: Path) -> None:
    store, fetch, log = SnapshotStore(str(tmp_path)), Fetch(), []  # type: ignore[var-annotated]
    fetch.rows = users(10) + users(3, "other.test")
    outcome = sync_source(source(), store, log.append, fetch, clock=lambda: 100.0)
    assert outcome.ok and sorted(outcome.applied) == ["example.test", "other.test"]
    loaded = load_recipient_map([store.map_path("dir")])
    assert len(loaded.users["example.test"]) == 10 and loaded.accepts("user2", "other.test")
    fetch.rows = users(5) + users(3, "other.test")  # half of example.test gone
    outcome = sync_source(source(), store, log.append, fetch, clock=lambda: 200.0)
    assert outcome.held_back == ["example.test"]
    assert len(load_recipient_map([store.map_path("dir")]).users["example.test"]) == 10
    state = store.read_state("dir", "command")
    assert state.last_result == "held_back" and state.domains["example.test"].applied_at == 100
    assert state.domains["other.test"].applied_at == 200
    assert sum("held back" in line for line in log) == 1
    sync_source(source(), store, log.append, fetch, clock=lambda: 300.0)
    assert sum("held back" in line for line in log) == 1  # once per change, not per attempt
    assert accept(source(), store, log.append) == ["example.test"]
    assert len(load_recipient_map([store.map_path("dir")]).users["example.test"]) == 5
    state = store.read_state("dir", "command")
    assert state.domains["example.test"].applied_at == 300 and state.last_result == "ok"
    assert accept(source(), store, log.append) == []


def test_a_failure_keeps_the_snapshot_and_is_logged_once_per_change(tmp_path: Path) -> None:
    store, fetch, log = SnapshotStore(str(tmp_path)), Fetch(), []  # type: ignore[var-annotated]
    fetch.rows = users(4)
    sync_source(source(), store, log.append, fetch, clock=lambda: 1.0)
    before = Path(store.map_path("dir")).read_bytes()
    fetch.error = SourceUnreachable("LDAP ldap://x: connection refused")
    for now in (2.0, 3.0, 4.0):
        assert not sync_source(source(), store, log.append, fetch, clock=lambda now=now: now).ok
    assert Path(store.map_path("dir")).read_bytes() == before
    assert [line for line in log if "failed" in line] == [
        "recipient source dir: sync failed, keeping the last good snapshot: "
        "LDAP ldap://x: connection refused"]
    state = store.read_state("dir", "command")
    assert (state.last_success, state.last_attempt, state.last_result) == (1.0, 4.0, "error")
    fetch.error = None  # type: ignore[assignment]
    sync_source(source(), store, log.append, fetch, clock=lambda: 5.0)
    assert log[-1] == "recipient source dir: sync works again"


def test_import_of_one_domain_leaves_the_others(tmp_path: Path) -> None:
    store = SnapshotStore(str(tmp_path))
    push = source(type="push")
    apply_rows(push, store, users(3) + users(2, "other.test"), print)
    apply_rows(push, store, ["new@other.test", "new2@other.test", "x@example.test"], print,
               only=["other.test"])
    loaded = load_recipient_map([store.map_path("dir")])
    assert loaded.users == {"example.test": frozenset({"user0", "user1", "user2"}),
                            "other.test": frozenset({"new", "new2"})}


def test_state_file_round_trips_and_a_broken_one_counts_as_none(tmp_path: Path) -> None:
    store = SnapshotStore(str(tmp_path))
    apply_rows(source(), store, users(2), print, clock=lambda: 7.0)
    text = Path(store.state_path("dir")).read_text()
    assert SourceState.from_json(text) == store.read_state("dir", "command")
    assert json.loads(text)["domains"]["example.test"]["addresses"] == 2
    Path(store.state_path("dir")).write_text("{not json")
    assert store.read_state("dir", "command").last_attempt is None


@pytest.mark.parametrize("text,rows", [
    ("a@x.test\n@y.test\n# end 2\n", ["a@x.test", "@y.test"]),
    ("# header\n\na@x.test\n# end 1\n\n", ["a@x.test"]),
    ("# end 0\n", []),
])
def test_import_input_with_its_end_line(text: str, rows: List[str]) -> None:
    assert parse_import(text) == rows


@pytest.mark.parametrize("text", ["a@x.test\nb@x.test\n", "a@x.test\nb@x.test\n# end 3\n",
                                  "a@x.test\n# end\n", "", "a@x.test\n# end 1\nb@x.test\n"])
def test_import_input_that_may_be_truncated_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_import(text)


# ---- Postfix table and freshness --------------------------------------------------------------

def test_table_has_every_key_and_a_catch_all_for_stale_and_unlisted_domains() -> None:
    recipients = RecipientMap({"example.test": frozenset({"alice", '"odd user"'}),
                               "sub.stale.test": frozenset({"bob"}),
                               "stale.test": frozenset({"carol"})}, frozenset({"all.test"}))
    lines = table_lines(recipients, ["example.test", "stale.test", "empty.test", "all.test"],
                        {"example.test": 200.0, "stale.test": 100.0}, now=150.0)
    assert lines == ["@all.test OK", "@empty.test OK", "@stale.test OK", "@sub.stale.test OK",
                     '"odd user"@example.test OK', "alice@example.test OK"]


def test_table_lets_policyd_judge_callout_domains() -> None:
    recipients = RecipientMap({"example.test": frozenset({"alice"})}, frozenset())
    lines = table_lines(recipients, ["example.test"], {"example.test": 200.0}, now=150.0,
                        verified=["example.test"])
    # a recipient the primary confirmed is in no snapshot: Postfix must not refuse it
    assert lines == ["@example.test OK"]


def test_callout_source_has_no_snapshot_and_no_freshness(tmp_path: Path) -> None:
    config = parse_config(config_text(tmp_path, "[recipients verify]\ntype = callout\n"
                                      "domains = example.test\n"))
    assert snapshot_sources(config) == ()
    assert callout_domains(config) == ("example.test",)
    assert freshness(config, {}, []) == {}


def test_a_domain_is_fresh_while_one_of_its_sources_is(tmp_path: Path) -> None:
    (tmp_path / "rr").write_text("a@other.test OK\n")
    config = parse_config(config_text(tmp_path, "[recipients dir]\ntype = command\n"
                                      "command = /bin/true\nstale_after = 50\n"))
    state = SourceState("dir", "command")
    store = SnapshotStore(config.policyd.state_directory)
    assert freshness(config, {"dir": state}, [(f"{tmp_path}/rr", frozenset({"other.test"}))]
                     ) == {"example.test": float("-inf"), "other.test": float("inf")}
    apply_rows(config.sources[1], store, users(1), print, clock=lambda: 1000.0)
    state = store.read_state("dir", "command")
    fresh = freshness(config, {"dir": state}, [(f"{tmp_path}/rr", frozenset({"other.test"}))],
                      readable={f"{tmp_path}/rr": False})
    assert fresh == {"example.test": 1050.0, "other.test": float("-inf")}
