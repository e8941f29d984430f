"""Fixed primary states for decision tests, answering like PrimaryMonitor.state."""
from __future__ import annotations

from typing import Dict

from backupmx.common.primary_state import PrimaryState


class States(Dict[str, PrimaryState]):
    """Fixed primary states, answering like PrimaryMonitor.state (freshness is its job)."""

    def state(self, domain: str, now: float) -> PrimaryState:
        return self.get(domain, PrimaryState("unknown"))
