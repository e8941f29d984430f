"""What every ``backupmx`` subcommand works with, built once from the configuration.

Subcommands receive this instead of reaching for globals, so unit tests hand in a fake Postfix,
prober, clock and output streams.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, TextIO

from backupmx.admin.primaries import Prober, probe_primaries
from backupmx.common.config import Config
from backupmx.common.postfix import Postfix
from backupmx.milter.ledger import Ledger

DEFAULT_PROBE_TIMEOUT = 5.0


@dataclass
class CommandContext:
    config: Config
    postfix: Postfix
    probe: Prober = probe_primaries
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    _ledger: Optional[Ledger] = None

    @classmethod
    def from_config(cls, config: Config) -> "CommandContext":
        return cls(config=config, postfix=Postfix.from_setting(config.postfix.config_directory),
                   probe_timeout=config.policyd.probe_timeout)

    def ledger(self) -> Ledger:
        """The ledger the milter writes; LedgerError when it does not exist yet."""
        if self._ledger is None:
            self._ledger = Ledger(self.config.milter.ledger, self.config.milter.journal,
                                  create=False).open()
        return self._ledger

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def warn(self, message: str) -> None:
        print(f"backupmx: {message}", file=self.err)
