"""The one reading of an SQL source's rows (pgsql, mysql, sqlite): their first column, as text."""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence


def first_column(rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    """The first value of each row as text: NULLs skipped, bytes decoded as UTF-8 with U+FFFD
    for what is not (the sync then refuses the value as a malformed address), other types
    (numbers) as ``str()``."""
    for row in rows:
        value = row[0]
        if value is None:
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        yield value if isinstance(value, str) else str(value)
