"""The log line written for each refused request (and each accepted one with log_accepts).

It is a twisted.logger event like any other, published to the same observers, but built here
and handed straight to the logger's observer. ``Logger.info`` would first check that ``info``
is a valid level by sorting LogLevel's constants (0.8 us), then copy the keyword arguments into
the event: on the request path that was two fifths of the cost of a line.
"""
from __future__ import annotations

import time
from typing import Callable, Mapping

from twisted.logger import Logger, LogLevel

from backupmx.common.decision import Decision

_INFO = LogLevel.info


def describe(request: Mapping[str, str], decision: Decision) -> str:
    """One greppable log line: Postfix's queue id and instance first."""
    get = request.get
    return (f"{decision.outcome}: queue_id={get('queue_id') or '-'} "
            f"instance={get('instance') or '-'} client={get('client_name') or 'unknown'}"
            f"[{get('client_address', '')}] sender=<{get('sender', '')}> "
            f"recipient=<{get('recipient', '')}> action=\"{decision.action}\" "
            f"reason=\"{decision.reason}\"")


class DecisionLog:
    """Publishes ``logger.info("{line}", line=describe(request, decision))``, cheaply."""

    def __init__(self, logger: Logger, clock: Callable[[], float] = time.time) -> None:
        self.logger = logger
        self.clock = clock

    def __call__(self, request: Mapping[str, str], decision: Decision) -> None:
        logger = self.logger
        logger.observer({
            "log_logger": logger, "log_level": _INFO, "log_namespace": logger.namespace,
            "log_source": logger.source, "log_format": "{line}", "log_time": self.clock(),
            "line": describe(request, decision),
        })
