"""The one clock of a sync: every network wait of a driver gets what is left of its timeout."""
from __future__ import annotations

import time

from backupmx.sources.errors import SourceTimeout


class Deadline:
    """Started with the sync's ``timeout`` in seconds; ``remaining()`` is what is left."""

    def __init__(self, timeout: float, what: str) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.timeout = timeout
        self.what = what
        self._end = time.monotonic() + timeout

    def remaining(self) -> float:
        """Seconds left (> 0). Raises SourceTimeout once the deadline has passed."""
        left = self._end - time.monotonic()
        if left <= 0:
            raise self.expired()
        return left

    def expired(self, doing: str = "") -> SourceTimeout:
        """The SourceTimeout to raise, naming the source and what it was doing."""
        during = f" while {doing}" if doing else ""
        return SourceTimeout(f"{self.what}: no complete answer within {self.timeout:g} s{during}")
