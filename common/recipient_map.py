"""The relay recipient map: the text an admin would feed to ``postmap``, read directly.

Format (postmap(1), "text" input): ``key value`` lines, ``#`` comment lines, blank lines, and
lines starting with whitespace continue the previous line. Keys are ``user@domain`` or the
catch-all ``@domain``; they are compared case-insensitively. The value is not used (as with
relay_recipient_maps, any value means "valid"). A lookup of ``user+tag@domain`` also tries
``user@domain`` when ``+`` is a recipient delimiter, then ``@domain`` — Postfix's own order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import (
    AbstractSet,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    Iterator,
    List,
    Optional,
    Set,
    Tuple,
)


class MapError(ValueError):
    """A map file that cannot be used as a whole; the message names file and line."""


@dataclass(frozen=True)
class RecipientMap:
    """Valid relay recipients, grouped by domain for compact storage and fast lookup."""

    users: Dict[str, FrozenSet[str]] = field(default_factory=dict)  # domain -> local parts
    catch_all: FrozenSet[str] = frozenset()  # domains whose every recipient is valid
    delimiters: str = ""
    sources: Tuple[str, ...] = ()

    def covers(self, domain: str) -> bool:
        """True when the map says anything about this (lower-case) domain."""
        return domain in self.users or domain in self.catch_all

    def accepts(self, local: str, domain: str) -> bool:
        """Is local@domain a valid recipient? Arguments are already lower-case."""
        if domain in self.catch_all:
            return True
        locals_ = self.users.get(domain)
        if locals_ is None:
            return False
        if local in locals_:
            return True
        base = _strip_extension(local, self.delimiters)
        return base is not None and base in locals_

    def __len__(self) -> int:
        return sum(len(v) for v in self.users.values()) + len(self.catch_all)


def _strip_extension(local: str, delimiters: str) -> Optional[str]:
    """``user+tag`` -> ``user`` at the first delimiter character past position 0, else None.

    One ``find`` per delimiter character rather than a Python loop over the local part: every
    unknown recipient comes through here.
    """
    cut = -1
    for char in delimiters:
        position = local.find(char, 1)
        if position > 0 and (cut < 0 or position < cut):
            cut = position
    return local[:cut] if cut > 0 else None


def logical_lines(lines: Iterable[str]) -> Iterator[Tuple[int, str]]:
    """Join postmap continuation lines; yield (first line number, text) without comments."""
    pending: Optional[Tuple[int, str]] = None
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace():
            if pending is None:
                raise MapError(f"line {number}: continuation line with nothing to continue")
            pending = (pending[0], f"{pending[1]} {stripped}")
            continue
        if pending is not None:
            yield pending
        pending = (number, stripped)
    if pending is not None:
        yield pending


def parse_recipient_lines(
    lines: Iterable[str], source: str = "<text>"
) -> Tuple[Dict[str, Set[str]], Set[str]]:
    """Parse one map file's lines into (domain -> local parts, catch-all domains)."""
    users: Dict[str, Set[str]] = {}
    catch_all: Set[str] = set()
    try:
        for number, text in logical_lines(lines):
            parts = text.split(None, 1)
            if len(parts) < 2:
                raise MapError(f"line {number}: expected 'key value', got {text[:80]!r}")
            key = parts[0]
            local, at, domain = key.lower().rpartition("@")
            domain = domain.rstrip(".")
            if not at or not domain or "@" in local and not local.startswith('"'):
                raise MapError(f"line {number}: key {key[:80]!r} is not user@domain or @domain")
            if local:
                users.setdefault(domain, set()).add(local)
            else:
                catch_all.add(domain)
    except MapError as error:
        raise MapError(f"{source}:{error}") from None
    return users, catch_all


#: lines parsed between two pauses: about 4 ms of work
PAUSE_EVERY = 2000


def _pausing(lines: Iterable[str], pause: Callable[[], None]) -> Iterator[str]:
    for count, line in enumerate(lines, start=1):
        if count % PAUSE_EVERY == 0:
            pause()
        yield line


def load_recipient_map(paths: Iterable[str], delimiters: str = "",
                       pause: Optional[Callable[[], None]] = None) -> RecipientMap:
    """Read and merge map files (blocking: call it off the reactor thread).

    ``pause`` (if given) is called every PAUSE_EVERY lines and between the per-domain steps. A
    worker thread parsing a large map would otherwise hold the GIL for stretches of tens to
    hundreds of milliseconds while the reactor thread waits for it; a pause that sleeps lets the
    reactor run at least that often.
    """
    users: Dict[str, Set[str]] = {}
    catch_all: Set[str] = set()
    sources: List[str] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="strict") as handle:
                lines = handle if pause is None else _pausing(handle, pause)
                file_users, file_catch_all = parse_recipient_lines(lines, path)
        except OSError as error:
            raise MapError(f"{path}: cannot read: {error.strerror}") from None
        except UnicodeDecodeError as error:
            raise MapError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})"
                           ) from None
        # domain by domain, freeing each temporary set at once: one free of them all at the end
        # would be a single long stretch holding the GIL (about 1 us per address)
        for domain in list(file_users):
            locals_ = file_users.pop(domain)
            merged = users.get(domain)
            if merged is None:
                users[domain] = locals_
            else:
                merged.update(locals_)
            del locals_, merged
            if pause is not None:
                pause()
        catch_all |= file_catch_all
        sources.append(path)
    frozen: Dict[str, FrozenSet[str]] = {}
    for domain in list(users):
        frozen[domain] = frozenset(users.pop(domain))
        if pause is not None:
            pause()
    return RecipientMap(
        users=frozen,
        catch_all=frozenset(catch_all),
        delimiters=delimiters,
        sources=tuple(sources),
    )


def release_in_steps(users: Dict[str, AbstractSet[str]], pause: Callable[[], None]) -> None:
    """Empty a replaced map's domain -> set dict one domain at a time, pausing in between.

    Run in a worker thread on a dict that holds the last references to the sets: each set (and
    its strings) is then freed here, in pieces the size of one domain, not in the reactor.
    """
    while users:
        users.popitem()
        pause()
