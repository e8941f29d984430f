"""``backupmx-milter -c FILE``: the ledger milter's command line and process wiring.

A process of its own: libmilter owns the signals (SIGTERM, SIGINT and SIGHUP stop it) and runs one
thread per SMTP connection; a small thread follows edits of the configuration file's [domains]
(config_watch.py). Privileges are dropped to ``[milter] user`` before anything is created, so the
ledger, its journal and a unix socket belong to that user.
"""
from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
from typing import TYPE_CHECKING, List, Optional

from backupmx.common import version
from backupmx.common.cli import EXIT_FAILED, EXIT_OK, load_or_report, parent_parser
from backupmx.common.config import Config
from backupmx.common.daemon import journald_stream, syslog_prefix

if TYPE_CHECKING:  # the ledger module is imported only when the milter runs
    from backupmx.milter.ledger import Ledger

MILTER_NAME = "backupmx"

log = logging.getLogger("backupmx.milter")


class _Formatter(logging.Formatter):
    """One line per event; journald gets ``<N>`` priorities instead of our timestamps."""

    def __init__(self, journald: bool) -> None:
        super().__init__("%(message)s" if journald else "%(asctime)s %(levelname)s %(message)s")
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.journald:
            return f"{syslog_prefix(record.levelname)}{text}"
        return text


def start_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(journald_stream()))
    root = logging.getLogger("backupmx")
    root.handlers[:] = [handler]
    root.setLevel(level)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="backupmx-milter", parents=[parent_parser()],
        description="Postfix milter of backupmx: records every accepted relay message in the "
                    "ledger (never changes or rejects mail).")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    config, status = load_or_report("backupmx-milter", args.config)
    if config is None:
        return status
    start_logging()
    return run(config)


def open_ledger(config: Config) -> "Ledger":
    """The ledger, written once now so a problem is logged at start (and the journal replayed)."""
    from backupmx.milter.ledger import Ledger, LedgerError

    ledger = Ledger(config.milter.ledger, config.milter.journal, busy_timeout=2.0,
                    sync=config.milter.ledger_sync)
    try:
        replayed = ledger.write([])
        if replayed:
            log.warning("replayed %d journaled records into %s", replayed, ledger.path)
    except (sqlite3.Error, OSError, LedgerError) as error:
        log.error("cannot write ledger %s (%s): records go to journal %s until it can be "
                  "written", ledger.path, error, ledger.journal.path)
    return ledger


def run(config: Config) -> int:
    """Drop privileges, open the ledger, serve until libmilter is told to stop."""
    import Milter

    import milter as libmilter
    from backupmx.common.daemon import drop_privileges, notify, remove_stale_socket
    from backupmx.milter.app import milter_factory
    from backupmx.milter.config_watch import ConfigWatcher
    from backupmx.milter.readiness import announce_when_listening

    settings = config.milter
    dropped = drop_privileges(settings.user)
    ledger = open_ledger(config)
    factory = milter_factory(ledger, config.domains)
    Milter.factory = factory
    # libmilter takes SIGHUP as "stop": [domains] edits are picked up by watching the file
    watcher = ConfigWatcher(config, factory.settings)
    watcher.start()
    if settings.listen.kind == "unix":
        remove_stale_socket(settings.listen.path)
        # libmilter creates the socket with the process umask: make it give the configured mode.
        os.umask(0o777 & ~settings.listen.mode)
    log.info("backupmx-milter %s starting on %s: %d relay domains, ledger %s%s", version(),
             settings.listen, len(config.domains), ledger.path, f", {dropped}" if dropped else "")
    if os.environ.get("NOTIFY_SOCKET"):  # Type=notify: READY=1 once the socket listens
        announce_when_listening(settings.listen, notify)
    try:
        Milter.runmilter(MILTER_NAME, settings.listen.libmilter_socket(), rmsock=False)
    except libmilter.error as error:
        log.error("cannot serve on %s: %s", settings.listen, error)
        return EXIT_FAILED
    finally:
        watcher.stop()
        ledger.close()
    log.info("backupmx-milter stopped")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
