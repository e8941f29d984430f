"""``backupmx check`` on recipient sources and the Postfix recipient table (pure rules)."""
from __future__ import annotations

from pathlib import Path

from backupmx.admin.setup_checks import FAIL, OK, WARN
from backupmx.admin.source_checks import check_recipient_table, check_sources
from backupmx.common.config import parse_config
from backupmx.common.snapshots import DomainState, HeldBack, SourceState


def config(tmp_path: Path, extra: str = ""):
    password = tmp_path / "pw"
    password.write_text("secret\n")
    return parse_config(
        f"[policyd]\nstate_directory = {tmp_path}\n[postfix]\nrecipient_table = /t/rr\n"
        "[recipients dir]\ntype = pgsql\ndsn = host=/x\nquery = SELECT 1\n"
        f"password_file = {password}\nstale_after = 100\n{extra}"
        "[domains]\na.test = mx\n")


def test_relay_recipient_maps_must_name_the_table(tmp_path: Path) -> None:
    conf = config(tmp_path)
    missing = check_recipient_table(conf, {"relay_recipient_maps": "hash:/other"})
    assert missing[0].status == FAIL and "hash:/t/rr" in missing[0].fix
    named = {"relay_recipient_maps": "texthash:/x, hash:/t/rr"}
    assert check_recipient_table(conf, named, exists=lambda p: p == "/t/rr.db")[0].status == OK
    assert check_recipient_table(conf, named, exists=lambda p: False)[0].status == WARN
    assert check_recipient_table(parse_config(""), {}) == []


def test_stale_held_back_unreachable_and_readable_password(tmp_path: Path) -> None:
    conf = config(tmp_path)
    (tmp_path / "pw").chmod(0o644)
    state = SourceState("dir", "pgsql", last_attempt=990.0, last_success=800.0,
                        last_result="error", last_error="PostgreSQL: connection refused",
                        error_kind="SourceUnreachable",
                        domains={"a.test": DomainState(5, 800.0,
                                                       HeldBack(1, "it would shrink", 700, 800))})
    results = check_sources(conf, {"dir": state}, 1000.0)
    messages = [(r.status, r.message) for r in results]
    assert (WARN, "cannot connect: PostgreSQL: connection refused") in messages
    assert any(s == WARN and "a.test is stale" in m for s, m in messages)
    assert any(s == WARN and "held back: it would shrink" in m for s, m in messages)
    assert any(s == WARN and "readable by every user" in m for s, m in messages)


def test_a_healthy_source_and_a_private_password_file(tmp_path: Path) -> None:
    conf = config(tmp_path)
    (tmp_path / "pw").chmod(0o640)
    state = SourceState("dir", "pgsql", last_attempt=990.0, last_success=990.0,
                        last_result="ok", domains={"a.test": DomainState(5, 990.0)})
    assert {r.status for r in check_sources(conf, {"dir": state}, 1000.0)} == {OK}
    never = check_sources(conf, {}, 1000.0)
    assert never[0].status == WARN and never[0].message == "never synced"
