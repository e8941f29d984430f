"""After SIGHUP every [policyd] setting means what the file says, or the log says it does not yet.

On the service with a fake clock: the map check loop takes the new interval, listeners (the
protocol factory) get the new configuration, and one warning names each changed setting that
needs a restart. The real daemon's wiring is tested in tests/integration/test_reload_settings.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel

from backupmx.common.config import Config
from backupmx.policyd.protocol import PolicyFactory
from tests.harness.service_setup import Setup, make_service, messages, rcpt, rewrite

LISTEN = "listen = inet:127.0.0.1:10040\n"


def test_new_map_check_interval_restarts_the_loop(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    service, _, clock = make_service(setup)
    service.start()
    setup.conf.write_text(setup.conf.read_text().replace("map_check_interval = 5",
                                                         "map_check_interval = 1"))
    service.reload()
    assert service.config.policyd.map_check_interval == 1.0
    rewrite(setup.recipients, "alice@example.test OK\nbob@example.test OK\n")
    clock.advance(1.0)  # a check: changed
    clock.advance(1.0)  # a check: stopped changing, loaded
    assert service.respond(rcpt("bob@example.test")) == "DUNNO"
    service.stop()
    assert clock.getDelayedCalls() == []  # the old loop is gone too


def test_reload_passes_the_new_config_to_listeners_and_the_factory(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    service, _, _ = make_service(setup)
    factory = PolicyFactory.from_settings(service.respond, service.config.policyd)
    seen: List[Config] = []
    service.reconfigured.append(seen.append)
    service.reconfigured.append(lambda config: factory.configure(config.policyd))
    before = factory.buildProtocol(None)
    before.makeConnection(StringTransport())
    setup.write_config("idle_timeout = 7\nmax_line_length = 64\nmax_attributes = 3\n")
    service.reload()
    assert seen == [service.config]
    assert (factory.idle_timeout, factory.max_line_length, factory.max_attributes) == (7, 64, 3)
    after = factory.buildProtocol(None)
    after.makeConnection(StringTransport())
    assert after.timeOut == 7 and before.timeOut == 600  # open connections keep theirs
    assert after.decoder.max_line_length == 64 and after.decoder.max_attributes == 3
    for protocol in (before, after):
        protocol.connectionLost()  # cancels their idle timers in the global reactor


def test_settings_needing_a_restart_are_named_in_one_line(tmp_path: Path,
                                                          events: List[dict]) -> None:
    setup = Setup(tmp_path)
    setup.write_config(LISTEN)
    service, _, _ = make_service(setup)
    setup.write_config("listen = inet:127.0.0.1:10041\nmetrics = inet:127.0.0.1:9469\n"
                       "user = nobody\nprobe_interval = 9\n")
    service.reload()
    warnings = [m for m in messages(events, LogLevel.warn) if "restart" in m]
    assert warnings == ["reload: [policyd] listen, [policyd] metrics, [policyd] user changed; "
                        "restart policyd to use the new values (running with the old until "
                        "then)"]
    events.clear()
    service.reload()  # nothing changed since: nothing to say
    assert [m for m in messages(events, LogLevel.warn) if "restart" in m] == []
