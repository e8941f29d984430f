"""``backupmx [-c FILE] SUBCOMMAND ...``: the admin's command.

Each subcommand lives in its own module exposing ``add_arguments(subparsers)`` (which registers
its parser with ``set_defaults(run=run)``) and ``run(args, config) -> int``. Adding one means
importing its module and appending it to ``SUBCOMMANDS``.

Exit status: common.cli's EXIT_* codes.
"""
from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import List, Optional, Sequence

from backupmx.admin import check, fleet, flush, query, recipients, status
from backupmx.common.cli import load_or_report, parent_parser

SUBCOMMANDS: Sequence[ModuleType] = (status, flush, check, recipients, query, fleet)


def build_parser(subcommands: Sequence[ModuleType] = SUBCOMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backupmx", parents=[parent_parser()],
        description="What the backup MX holds for each relay domain, and handing it back.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in subcommands:
        module.add_arguments(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    config, status = load_or_report("backupmx", args.config)
    if config is None:
        return status
    return int(args.run(args, config))


if __name__ == "__main__":
    sys.exit(main())
