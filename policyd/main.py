"""``backupmx-policyd -c FILE``: the policy service's command line and process wiring."""
from __future__ import annotations

import argparse
import itertools
import signal
import sys
import time
from typing import List, Optional

from backupmx.policyd import version
from backupmx.policyd.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from backupmx.policyd.maps import LoadedMaps, load_maps
from backupmx.policyd.recipients import MapError

EXIT_CONFIG = 2


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="backupmx-policyd",
        description="Postfix policy service of backupmx (check_policy_service).")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG_PATH,
                        help=f"configuration file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration and maps, then exit")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
        maps = load_maps(config)
    except (ConfigError, MapError) as error:
        print(f"backupmx-policyd: {error}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(f"{config.path}: OK, {len(config.domains)} domains, "
              f"{len(maps.recipients)} recipient keys")
        return 0
    # Handed over in a list that run() empties, so that no frame keeps the start-up maps alive
    # after a reload has replaced them (a 1,000,000-address map holds about 110 MiB).
    startup_maps = [maps]
    del maps
    return run(config, startup_maps)


def run(config: "Config", startup_maps: "List[LoadedMaps]") -> int:
    """Start listening, then serve until SIGTERM/SIGINT; SIGHUP reloads."""
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError
    from twisted.logger import Logger

    from backupmx.policyd import runtime
    from backupmx.policyd.prober import PrimaryProber
    from backupmx.policyd.protocol import PolicyFactory
    from backupmx.policyd.service import PolicyService

    log = Logger(namespace="backupmx.policyd")
    runtime.start_logging(reactor=reactor)
    settings = config.policyd
    prober = PrimaryProber(reactor, config.domains, settings.probe_interval,
                           settings.probe_timeout, up_after=settings.primary_up_after,
                           down_after=settings.primary_down_after)
    service = PolicyService(reactor, config, startup_maps.pop(), prober)
    factory = PolicyFactory(service.respond, settings.idle_timeout, settings.max_line_length,
                            settings.max_attributes)
    try:
        port = runtime.listen(reactor, settings.listen, factory)
        metrics_port = _serve_metrics(reactor, settings.metrics, service, factory)
    except CannotListenError as error:
        print(f"backupmx-policyd: cannot listen on {error.interface or ''}:{error.port}: "
              f"{error.socketError}", file=sys.stderr)
        return 1
    dropped = runtime.drop_privileges(settings.user)
    log.info("backupmx-policyd {version} listening on {address}: {domains} domains, "
             "{count} recipient keys{dropped}", version=version(),
             address=runtime.bound_address(port, settings.listen), domains=len(config.domains),
             count=len(service.maps.recipients), dropped=f", {dropped}" if dropped else "")
    if metrics_port is not None:
        log.info("Prometheus metrics on {address}",
                 address=runtime.bound_address(metrics_port, settings.metrics))
    reloads = itertools.count(1)
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(
        _reload_on_signal, service, next(reloads)))
    reactor.callWhenRunning(service.start)
    reactor.callWhenRunning(runtime.notify, f"READY=1\nSTATUS={_serving(service)}")
    reactor.addSystemEventTrigger("before", "shutdown", service.stop)
    reactor.addSystemEventTrigger("before", "shutdown", runtime.notify, "STOPPING=1")
    reactor.run()
    return 0


def _serving(service) -> str:  # type: ignore[no-untyped-def]
    return (f"serving {len(service.config.domains)} domains, "
            f"{len(service.maps.recipients)} recipient keys")


def _reload_on_signal(service, number: int) -> None:  # type: ignore[no-untyped-def]
    """SIGHUP: reload, telling systemd ``RELOADING=1`` now and ``READY=1`` once it is done.

    The STATUS text ``reload #N: ok ...`` or ``reload #N: failed ...`` is what the unit's
    ExecReload helper (/usr/lib/backupmx/policyd-reload) waits for, so that ``systemctl reload``
    returns when the reload is applied and fails when it was refused. MONOTONIC_USEC makes the
    same messages serve systemd 253's Type=notify-reload.
    """
    from backupmx.policyd import runtime

    runtime.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}\n"
                   f"STATUS=reload #{number}: reloading")

    def done(applied: bool) -> None:
        outcome = (f"ok, {_serving(service)}" if applied
                   else "failed, keeping the running configuration (see the log)")
        runtime.notify(f"READY=1\nSTATUS=reload #{number}: {outcome}")

    service.reload_and_report().addCallback(done)


def _serve_metrics(reactor, address, service, factory):  # type: ignore[no-untyped-def]
    """Serve Prometheus metrics when ``[policyd] metrics`` is set; the listening port or None."""
    if address is None:
        return None
    from backupmx.policyd.metrics import PolicydMetrics, reactor_caller, serve
    metrics = PolicydMetrics()
    metrics.attach(service, factory, reactor_caller(reactor))
    return serve(reactor, address, metrics)


if __name__ == "__main__":
    sys.exit(main())
