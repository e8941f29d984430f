"""``backupmx status --prometheus``: the status document in Prometheus text format.

Meant for node_exporter's textfile collector (a timer writes the output to
``/var/lib/node_exporter/textfile_collector/backupmx.prom`` through a temporary file and a
rename). Rendered with prometheus_client from the same document ``status --json`` prints, so the
two can never disagree.
"""
from __future__ import annotations

from typing import Any, Mapping

from prometheus_client.core import CollectorRegistry, GaugeMetricFamily


class _StatusCollector:
    def __init__(self, status: Mapping[str, Any]) -> None:
        self.status = status

    def collect(self) -> Any:
        rows = self.status.get("domains", [])
        families = {
            "held_messages": GaugeMetricFamily(
                "backupmx_held_messages", "Messages held for a relay domain", labels=["domain"]),
            "held_bytes": GaugeMetricFamily(
                "backupmx_held_bytes", "Bytes held for a relay domain", labels=["domain"]),
            "oldest_held_seconds": GaugeMetricFamily(
                "backupmx_oldest_held_seconds", "Age of the oldest held message",
                labels=["domain"]),
            "bounces_in_seconds": GaugeMetricFamily(
                "backupmx_bounces_in_seconds", "Time until Postfix's maximal_queue_lifetime "
                "bounces the oldest held message", labels=["domain"]),
        }
        primary = GaugeMetricFamily("backupmx_status_primary_up", "1 when the primary MX "
                                    "answered the status probe, 0 down, -1 unknown",
                                    labels=["domain"])
        for row in rows:
            domain = row["domain"]
            for key, family in families.items():
                value = row.get(key)
                if value is not None:  # no held mail: no age, no bounce deadline
                    family.add_metric([domain], float(value))
            state = row.get("primary", "unknown")
            primary.add_metric([domain], {"up": 1.0, "down": 0.0}.get(state, -1.0))
        yield from families.values()
        yield primary
        fleet = self.status.get("fleet")
        if fleet:
            yield GaugeMetricFamily("backupmx_fleet_pending_changes", "Ledger changes not yet "
                                    "pushed to the fleet store", value=fleet["pending_changes"])
            yield GaugeMetricFamily("backupmx_fleet_push_lag_seconds", "Age of the oldest "
                                    "ledger change not yet in the fleet store (0: none)",
                                    value=fleet["lag_seconds"])
            if fleet.get("last_push_at") is not None:
                yield GaugeMetricFamily("backupmx_fleet_last_push_timestamp_seconds",
                                        "When this host last pushed to the fleet store",
                                        value=fleet["last_push_at"])
        generated = self.status.get("generated_at")
        if generated is not None:
            yield GaugeMetricFamily("backupmx_status_generated_timestamp_seconds",
                                    "When this status was collected", value=float(generated))


def render_prometheus(status: Mapping[str, Any]) -> str:
    """The status document (as ``status --json`` prints it) in Prometheus text format."""
    from prometheus_client import generate_latest
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatusCollector(status))
    return generate_latest(registry).decode()
