"""Command source: a program whose standard output lists the recipients.

The program (``argv``, no shell) runs with standard input from /dev/null, in a session and
process group of its own, so that on timeout the whole group (the program and whatever it
started) is killed with SIGKILL. Output: UTF-8 text, one address or ``@domain`` a line;
blank lines and lines starting with ``#`` are skipped, surrounding white space removed. Exit
status 0 means the list is complete; anything else is a failed sync.
"""
from __future__ import annotations

import os
import signal
import subprocess
from typing import List, Optional

from backupmx.common.source_settings import CommandSettings
from backupmx.sources.deadline import Deadline
from backupmx.sources.errors import SourceCommandFailed, SourceOutputError

REAP_TIMEOUT = 5.0  # seconds to collect a killed group's last output before giving up on it


def fetch(settings: CommandSettings, timeout: float) -> List[str]:
    """The output's address lines (raw strings: the caller validates each).

    Raises SourceTimeout (still running after ``timeout`` s; its process group is killed),
    SourceCommandFailed (cannot be started: returncode 126/127 as a shell would say; non-zero
    exit or killed by a signal; the message ends with its last line of standard error),
    SourceOutputError (not UTF-8, NUL bytes, or lines none of which looks like an address)."""
    program = settings.argv[0]
    deadline = Deadline(timeout, f"command {program}")
    try:
        process = subprocess.Popen(list(settings.argv), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True, close_fds=True)
    except OSError as error:
        code = 127 if isinstance(error, FileNotFoundError) else 126
        raise SourceCommandFailed(f"command {program}: cannot run it: {error.strerror}",
                                  code) from None
    try:
        stdout, stderr = process.communicate(timeout=deadline.remaining())
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise deadline.expired("waiting for the command; its process group was killed") \
            from None
    except BaseException:  # SourceTimeout from remaining(), KeyboardInterrupt: no orphans
        _kill_group(process)
        raise
    if process.returncode != 0:
        how = (f"killed by signal {-process.returncode}" if process.returncode < 0
               else f"exited with status {process.returncode}")
        last = _last_line(stderr)
        raise SourceCommandFailed(f"command {program}: {how}" + (f": {last}" if last else ""),
                                  process.returncode)
    return parse_output(stdout, f"command {program}")


def parse_output(data: bytes, where: str) -> List[str]:
    """The address lines of a source's text output (see the module's docstring).

    Raises SourceOutputError for NUL bytes, text that is not UTF-8 (naming the line), or when no
    line at all contains ``@`` (an error message printed to standard output, for instance)."""
    if b"\0" in data:
        raise SourceOutputError(f"{where}: output contains NUL bytes: not a list of addresses")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise SourceOutputError(f"{where}: output line {line} is not UTF-8 text") from None
    lines = [line.strip() for line in text.splitlines()]
    addresses = [line for line in lines if line and not line.startswith("#")]
    if addresses and not any("@" in line for line in addresses):
        raise SourceOutputError(f"{where}: no output line looks like an address; "
                                f"the first is {_shorten(addresses[0])!r}")
    return addresses


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the command's whole process group and reap the command."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is gone already
    try:
        process.communicate(timeout=REAP_TIMEOUT)
    except subprocess.TimeoutExpired:
        # A descendant left the group and still holds the pipes: stop reading them.
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        process.wait()


def _last_line(stderr: bytes) -> Optional[str]:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()
             if line.strip()]
    return _shorten(lines[-1]) if lines else None


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
