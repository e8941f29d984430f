"""``backupmx-policyd -c FILE``: the policy service's command line and process wiring."""
from __future__ import annotations

import argparse
import itertools
import signal
import sys
import time
from typing import Any, List, Optional

from backupmx.common import version
from backupmx.common.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, parent_parser
from backupmx.common.config import Config, ConfigError, load_config
from backupmx.common.listen import ListenAddress
from backupmx.common.maps import load_maps
from backupmx.common.recipient_map import MapError


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="backupmx-policyd", parents=[parent_parser()],
        description="Postfix policy service of backupmx (check_policy_service).")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration and maps, then exit")
    return parser.parse_args(argv)


def require_drivers(config: Config) -> None:
    """ConfigError (one line naming the Debian package) when a source's driver is missing."""
    from backupmx.sources import require_driver
    from backupmx.sources.errors import DriverMissing
    for source in config.sources:
        try:
            require_driver(source.type)
        except DriverMissing as error:
            raise ConfigError(f"{config.path}: [recipients {source.name}]: {error}") from None


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
        require_drivers(config)
        if not args.check_config:
            return run(config)
        maps = load_maps(config)
    except (ConfigError, MapError) as error:
        print(f"backupmx-policyd: {error}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in maps.warnings:
        print(f"backupmx-policyd: warning: {warning}", file=sys.stderr)
    print(f"{config.path}: OK, {len(config.domains)} domains, "
          f"{len(maps.recipients)} recipient keys")
    return EXIT_OK


def run(config: Config) -> int:
    """Load the maps, start listening, then serve until SIGTERM/SIGINT; SIGHUP reloads.

    Raises ConfigError or MapError when the maps cannot be loaded at start.
    """
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError
    from twisted.logger import Logger

    from backupmx.common import daemon
    from backupmx.policyd.callout_start import local_names
    from backupmx.policyd.flush_on_return import FlushOnReturn
    from backupmx.policyd.logs import start_logging
    from backupmx.policyd.primary_monitor import PrimaryMonitor
    from backupmx.policyd.protocol import PolicyFactory
    from backupmx.policyd.service import PolicyService

    maps = load_maps(config)
    log = Logger(namespace="backupmx.policyd")
    start_logging(reactor=reactor)
    settings = config.policyd
    primaries = PrimaryMonitor(reactor, config.domains, settings.probe_interval,
                               settings.probe_timeout, up_after=settings.primary_up_after,
                               down_after=settings.primary_down_after,
                               interval_down=settings.probe_interval_down,
                               local_names=local_names(config))
    service = PolicyService(reactor, config, maps, primaries)
    from backupmx.policyd.recipient_sync import SyncScheduler
    service.scheduler = SyncScheduler(reactor, config, service.check_maps)
    primaries.listeners.append(FlushOnReturn(reactor, lambda: service.config))
    service.callouts = _callouts(reactor, config, primaries, log)
    # the service holds the maps now: no frame of ours may keep the start-up maps alive after
    # a reload has replaced them (a 1,000,000-address map holds about 110 MiB)
    del maps
    factory = PolicyFactory.from_settings(service.respond, settings)
    service.reconfigured.append(lambda new: factory.configure(new.policyd))
    try:
        port = daemon.listen(reactor, settings.listen, factory)
        metrics_port = _serve_metrics(reactor, settings.metrics, service, factory)
    except CannotListenError as error:
        print(f"backupmx-policyd: cannot listen on {error.interface or ''}:{error.port}: "
              f"{error.socketError}", file=sys.stderr)
        return EXIT_FAILED
    dropped = daemon.drop_privileges(settings.user)
    log.info("backupmx-policyd {version} listening on {address}: {domains} domains, "
             "{count} recipient keys{dropped}", version=version(),
             address=daemon.bound_address(port, settings.listen), domains=len(config.domains),
             count=len(service.maps.recipients), dropped=f", {dropped}" if dropped else "")
    if metrics_port is not None and settings.metrics is not None:
        log.info("Prometheus metrics on {address}",
                 address=daemon.bound_address(metrics_port, settings.metrics))
    reloads = itertools.count(1)
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(
        _reload_on_signal, service, next(reloads)))
    reactor.callWhenRunning(service.start)
    reactor.callWhenRunning(daemon.notify, f"READY=1\nSTATUS={_serving(service)}")
    reactor.addSystemEventTrigger("before", "shutdown", service.stop)
    # the callout engine may also come with a reload: closed whichever it is
    reactor.addSystemEventTrigger("after", "shutdown", service.close_callouts)
    reactor.addSystemEventTrigger("before", "shutdown", daemon.notify, "STOPPING=1")
    reactor.run()
    return EXIT_OK


def _callouts(reactor: Any, config: Config, primaries: Any, log: Any) -> Any:
    """The recipient callout engine with its cache loaded from the state directory (blocking:
    before listening), or None without a callout source. Raises ConfigError when the cache
    file cannot be opened."""
    from backupmx.policyd.callouts import callout_setup
    setup = callout_setup(config)
    if not setup:
        return None
    from backupmx.policyd import callout_start
    return callout_start.build(reactor, setup, callout_start.load(config), primaries, log)


def _serving(service: Any) -> str:
    """The STATUS text systemd shows while policyd serves."""
    return (f"serving {len(service.config.domains)} domains, "
            f"{len(service.maps.recipients)} recipient keys")


def _reload_on_signal(service: Any, number: int) -> None:
    """SIGHUP: reload, telling systemd ``RELOADING=1`` now and ``READY=1`` once it is done.

    The STATUS text ``reload #N: ok ...`` or ``reload #N: failed ...`` is what the unit's
    ExecReload helper (/usr/lib/backupmx/policyd-reload) waits for, so that ``systemctl reload``
    returns when the reload is applied and fails when it was refused. MONOTONIC_USEC makes the
    same messages serve systemd 253's Type=notify-reload.
    """
    from backupmx.common.daemon import notify

    notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}\n"
           f"STATUS=reload #{number}: reloading")

    def done(applied: bool) -> None:
        outcome = (f"ok, {_serving(service)}" if applied
                   else "failed, keeping the running configuration (see the log)")
        notify(f"READY=1\nSTATUS=reload #{number}: {outcome}")

    service.reload_and_report().addCallback(done)


def _serve_metrics(reactor: Any, address: Optional[ListenAddress], service: Any,
                   factory: Any) -> Any:
    """Serve Prometheus metrics when ``[policyd] metrics`` is set; the listening port or None."""
    if address is None:
        return None
    from backupmx.policyd.metrics import PolicydMetrics, reactor_caller, serve
    metrics = PolicydMetrics()
    metrics.attach(service, factory, reactor_caller(reactor))
    return serve(reactor, address, metrics)


if __name__ == "__main__":
    sys.exit(main())
