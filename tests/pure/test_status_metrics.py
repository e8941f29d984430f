"""``backupmx status --prometheus`` rendering, parsed back with prometheus_client's parser."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from backupmx.admin.status_metrics import render_prometheus

STATUS = {
    "generated_at": 1700000000.0,
    "domains": [
        {"domain": "a.test", "primary": "down", "held_messages": 6, "held_bytes": 8123,
         "oldest_held_seconds": 3600, "bounces_in_seconds": 2588400, "last_flush": None},
        {"domain": "b.test", "primary": "up", "held_messages": 0, "held_bytes": 0,
         "oldest_held_seconds": None, "bounces_in_seconds": None, "last_flush": None},
        {"domain": "c.test", "primary": "unknown", "held_messages": 0, "held_bytes": 0,
         "oldest_held_seconds": None, "bounces_in_seconds": None, "last_flush": None},
    ],
}


def test_status_as_prometheus_text() -> None:
    samples = {(s.name, s.labels.get("domain")): s.value
               for family in text_string_to_metric_families(render_prometheus(STATUS))
               for s in family.samples}
    assert samples[("backupmx_held_messages", "a.test")] == 6
    assert samples[("backupmx_held_bytes", "a.test")] == 8123
    assert samples[("backupmx_oldest_held_seconds", "a.test")] == 3600
    assert samples[("backupmx_bounces_in_seconds", "a.test")] == 2588400
    assert samples[("backupmx_held_messages", "b.test")] == 0
    assert ("backupmx_oldest_held_seconds", "b.test") not in samples
    assert [samples[("backupmx_status_primary_up", d)] for d in ("a.test", "b.test", "c.test")] \
        == [0, 1, -1]
    assert samples[("backupmx_status_generated_timestamp_seconds", None)] == 1700000000.0


def test_status_command_prints_prometheus_text(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from backupmx.admin.status import show_status
    from backupmx.milter.ledger import Ledger
    from tests.harness.command_fakes import (
        FakeClock,
        FakePostfix,
        ScriptedProber,
        make_context,
        record,
    )
    postfix = FakePostfix()
    ctx = make_context(tmp_path, postfix, ScriptedProber({"a.test": "up"}), FakeClock(1000.0))
    ledger = Ledger(ctx.config.milter.ledger)
    ledger.record(record("Q1", received_at=900.0, size=0))
    postfix.add("Q1", "alice@a.test", size=300)
    assert show_status(ctx, probe=True, as_prometheus=True) == 0
    text = ctx.out.getvalue()
    assert 'backupmx_held_messages{domain="a.test"} 1.0' in text
    assert 'backupmx_held_bytes{domain="a.test"} 300.0' in text
    assert 'backupmx_oldest_held_seconds{domain="a.test"} 100.0' in text
    ledger.close()
