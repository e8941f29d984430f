"""The decision log line: its text, and that it is the event Logger.info would publish."""
from __future__ import annotations

from typing import List

from twisted.logger import Logger, LogLevel, LogPublisher, eventAsText

from backupmx.common.decision import Decision
from backupmx.policyd.decision_log import DecisionLog, describe

REQUEST = {"queue_id": "", "instance": "i1", "client_name": "c.test",
           "client_address": "192.0.2.1", "sender": "", "recipient": "r@x.test"}
DECISION = Decision("550 x", "unknown_user", "x.test", "why")


def test_describe() -> None:
    assert describe(REQUEST, DECISION) == (
        'unknown_user: queue_id=- instance=i1 client=c.test[192.0.2.1] sender=<> '
        'recipient=<r@x.test> action="550 x" reason="why"')


def test_unknown_client_name_and_missing_attributes() -> None:
    line = describe({"recipient": "r@x.test"}, DECISION)
    assert "queue_id=- instance=- client=unknown[] sender=<> recipient=<r@x.test>" in line


class Owner:
    """Stands for PolicyService: a Logger bound to an instance has a namespace and a source."""

    log = Logger(namespace="backupmx.policyd.service.PolicyService")


def test_the_event_is_the_one_logger_info_publishes() -> None:
    published: List[dict] = []
    owner = Owner()
    logger = Logger(namespace=Owner.log.namespace, source=owner,
                    observer=LogPublisher(published.append))
    logger.info("{line}", line=describe(REQUEST, DECISION))
    DecisionLog(logger, clock=lambda: published[0]["log_time"])(REQUEST, DECISION)
    by_logger_info, by_decision_log = published
    assert by_decision_log == by_logger_info
    assert by_decision_log["log_level"] is LogLevel.info
    assert eventAsText(by_decision_log, includeTimestamp=False, includeSystem=False) == (
        describe(REQUEST, DECISION))
