"""What every backupmx program's command line shares: ``-c/--config``, ``--version``, exit codes.

Exit status (the same for ``backupmx``, ``backupmx-policyd`` and ``backupmx-milter``):
0 done, 1 refused or failed at run time (the message says why), 2 configuration error
(sysexits-like "usage/config": systemd units use ``RestartPreventExitStatus=2``).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, TextIO, Tuple

from backupmx.common import version
from backupmx.common.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def parent_parser() -> argparse.ArgumentParser:
    """A parser with ``-c/--config`` and ``--version`` only, for ``parents=[...]``."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG_PATH,
                        help=f"configuration file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    return parser


def load_or_report(prog: str, path: str,
                   err: Optional[TextIO] = None) -> Tuple[Optional[Config], int]:
    """(config, 0), or (None, EXIT_CONFIG) after printing ``prog: file:line: ...`` to stderr."""
    try:
        return load_config(path), EXIT_OK
    except ConfigError as error:
        print(f"{prog}: {error}", file=err or sys.stderr)
        return None, EXIT_CONFIG
