"""What is known of a domain's primary MX: plain data, no Twisted (common.smtp_probe finds it
out; the decision, the command and the metrics read it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["UP", "DOWN", "UNKNOWN", "PrimaryState"]

UP, DOWN, UNKNOWN = "up", "down", "unknown"


@dataclass(frozen=True)
class PrimaryState:
    """What is known of a domain's primary MX at one moment.

    ``status`` is ``up``, ``down`` or ``unknown``; ``host`` names the host that greeted (up) or
    the hosts tried (down); ``checked_at`` and ``changed_at``
    are Unix seconds (None when never); ``error`` is a configuration problem found by the probe
    (null MX, this host as MX), shown by the log and ``backupmx check``.
    """

    status: str
    host: str = ""
    checked_at: Optional[float] = None
    changed_at: Optional[float] = None
    error: Optional[str] = None

    @property
    def up(self) -> bool:
        return self.status == UP
