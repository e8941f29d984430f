"""Secrets of recipient sources come only from files (``*_password_file``), never from
backupmx.conf itself, so the configuration can stay world-readable."""
from __future__ import annotations

import os
import stat
from typing import Optional

from backupmx.sources.errors import PasswordFileError


def read_password_file(path: str) -> str:
    """The password in ``path``: its first line without the line end (the rest is ignored).

    Raises ``PasswordFileError`` (one line naming the file) when the file cannot be read, is not
    UTF-8, or its first line is empty."""
    try:
        with open(path, encoding="utf-8") as file:
            first = file.readline()
    except OSError as error:
        raise PasswordFileError(f"cannot read password file {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise PasswordFileError(f"password file {path} is not UTF-8 text") from None
    password = first.rstrip("\r\n")
    if not password:
        raise PasswordFileError(f"password file {path} is empty")
    return password


def password_file_warning(path: str) -> Optional[str]:
    """A one-line warning when ``path`` is readable by others (mode o+r) or writable by group or
    others, else None. Nothing is logged here: ``backupmx check`` prints the returned text. A file
    that cannot be examined also gives a warning (it would fail the sync anyway)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        return f"password file {path} cannot be examined: {error.strerror}"
    if mode & stat.S_IROTH:
        return (f"password file {path} is readable by every user (mode {stat.filemode(mode)}): "
                f"chmod o-r {path}")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (f"password file {path} is writable by other users (mode {stat.filemode(mode)}): "
                f"chmod go-w {path}")
    return None
