"""``backupmx [-c FILE] SUBCOMMAND ...``: the admin's command.

Each subcommand lives in its own module exposing ``add_arguments(subparsers)`` (which registers
its parser with ``set_defaults(run=run)``) and ``run(args, config) -> int``. Adding one means
importing its module and appending it to ``SUBCOMMANDS``.

Exit status: 0 done, 1 refused or failed (the message says why), 2 configuration error.
"""
from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import List, Optional, Sequence

from backupmx.milter import flush, status
from backupmx.policyd import check, version
from backupmx.policyd.config import DEFAULT_CONFIG_PATH, ConfigError, load_config

EXIT_CONFIG = 2
SUBCOMMANDS: Sequence[ModuleType] = (status, flush, check)


def build_parser(subcommands: Sequence[ModuleType] = SUBCOMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backupmx",
        description="What the backup MX holds for each relay domain, and handing it back.")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG_PATH,
                        help=f"configuration file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in subcommands:
        module.add_arguments(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"backupmx: {error}", file=sys.stderr)
        return EXIT_CONFIG
    return int(args.run(args, config))


if __name__ == "__main__":
    sys.exit(main())
