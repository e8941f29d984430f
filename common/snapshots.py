"""The snapshot store: each source's last good result per domain, on local disk.

Folder ``[policyd] state_directory``/``recipients``, three files per source NAME:

- ``NAME.map``: the last good keys of every domain, in postmap text format (``key OK`` lines,
  a ``# domain D N`` comment before each domain's keys), so policyd loads it as it loads the
  files of ``[policyd] recipients``;
- ``NAME.pending.map``: the held-back results (same format), applied by ``accept``;
- ``NAME.state.json``: last attempt, last success, last error, and per domain the address
  count, when its snapshot was applied and the held-back change (see SourceState).

Every file is written atomically: a temporary file in the same folder, fsync, rename, fsync of
the folder; a reader sees the old file or the new one, never a mix. ``lock(NAME)`` (flock on
``NAME.lock``) serialises a sync, an import and an accept of the same source.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Dict, FrozenSet, Iterator, Mapping, Optional, Set, Tuple

from backupmx.common.source_rules import owner_of

FOLDER = "recipients"
STATE_VERSION = 1


@dataclass
class HeldBack:
    """A domain's change that was not applied: its address count, why, when first held
    (``since``) and when the held result was fetched (``at``), Unix seconds."""

    addresses: int
    reason: str
    since: float
    at: float


@dataclass
class DomainState:
    """One domain of a source: addresses in the snapshot in use, when it was last applied
    (None: never), the held-back change (None: none)."""

    addresses: int = 0
    applied_at: Optional[float] = None
    held_back: Optional[HeldBack] = None


@dataclass
class SourceState:
    """What ``NAME.state.json`` holds (times in Unix seconds, None when never).

    ``last_result``: ``ok``, ``held_back`` (the sync worked, some domain was held back) or
    ``error``; ``last_error`` the one-line message of the last failure (None after a success);
    ``error_kind`` its class name (log once per change of it)."""

    name: str
    type: str
    last_attempt: Optional[float] = None
    last_success: Optional[float] = None
    last_result: Optional[str] = None
    last_error: Optional[str] = None
    error_kind: Optional[str] = None
    ignored: int = 0
    malformed: int = 0
    first_malformed: Optional[str] = None
    domains: Dict[str, DomainState] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"version": STATE_VERSION, **asdict(self)}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SourceState":
        """Raises ValueError for text that is not a state file."""
        try:
            data = json.loads(text)
            data.pop("version", None)
            domains = {
                d: DomainState(
                    addresses=int(v.get("addresses", 0)), applied_at=v.get("applied_at"),
                    held_back=HeldBack(**v["held_back"]) if v.get("held_back") else None)
                for d, v in data.pop("domains", {}).items()}
            return cls(domains=domains, **data)
        except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as error:
            raise ValueError(f"not a recipient source state file: {error}") from None


def write_temporary(path: str, data: bytes, mode: int, suffix: str = "") -> str:
    """A new file beside ``path`` (same folder, so a rename over ``path`` is atomic) holding
    ``data``, flushed to disk (fsync), with ``mode``; its name. Raises OSError, leaving
    nothing behind."""
    folder = os.path.dirname(path) or "."
    handle, temporary = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=suffix,
                                         dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return temporary


def write_atomically(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data``: temporary file, fsync, rename, fsync of the folder.
    Raises OSError."""
    folder = os.path.dirname(path) or "."
    temporary = write_temporary(path, data, 0o640, ".tmp")
    try:
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def map_text(keys: Mapping[str, FrozenSet[str]], title: str) -> bytes:
    """Domain -> keys as postmap text, domains and keys sorted (same content, same bytes)."""
    lines = [f"# {title}\n"]
    for domain in sorted(keys):
        lines.append(f"# domain {domain} {len(keys[domain])}\n")
        lines.extend(f"{key} OK\n" for key in sorted(keys[domain]))
    return "".join(lines).encode("utf-8")


class SnapshotStore:
    """The snapshot files of every source under ``state_directory``."""

    def __init__(self, state_directory: str) -> None:
        self.folder = os.path.join(state_directory, FOLDER)

    def map_path(self, name: str) -> str:
        return os.path.join(self.folder, f"{name}.map")

    def pending_path(self, name: str) -> str:
        return os.path.join(self.folder, f"{name}.pending.map")

    def state_path(self, name: str) -> str:
        return os.path.join(self.folder, f"{name}.state.json")

    def ensure_folder(self) -> None:
        """Create the folder (mode 0750) if needed; OSError when it cannot be."""
        os.makedirs(self.folder, mode=0o750, exist_ok=True)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the source's lock (blocking flock) for the ``with`` block."""
        self.ensure_folder()
        with open(os.path.join(self.folder, f"{name}.lock"), "a") as file:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(file.fileno(), fcntl.LOCK_UN)

    def read_state(self, name: str, source_type: str) -> SourceState:
        """The source's state; a fresh one when it has none yet. A state file that cannot be
        parsed counts as none (its snapshot file stays what policyd reads)."""
        try:
            with open(self.state_path(name), encoding="utf-8") as file:
                state = SourceState.from_json(file.read())
        except (OSError, ValueError, UnicodeDecodeError):
            return SourceState(name=name, type=source_type)
        state.type = source_type
        return state

    def write_state(self, state: SourceState) -> None:
        self.ensure_folder()
        write_atomically(self.state_path(state.name), state.to_json().encode("utf-8"))

    def read_keys(self, path: str, domains: Tuple[str, ...]) -> Dict[str, Set[str]]:
        """A snapshot file's keys grouped by source domain (``owner_of``); {} when missing.
        Keys of domains the source no longer speaks for are dropped."""
        keys: Dict[str, Set[str]] = {}
        try:
            with open(path, encoding="utf-8") as file:
                for line in file:
                    if not line.strip() or line.startswith("#"):
                        continue
                    key = line.rsplit(" ", 1)[0]
                    owner = owner_of(key.rpartition("@")[2], domains)
                    if owner is not None:
                        keys.setdefault(owner, set()).add(key)
        except FileNotFoundError:
            return {}
        return keys

    def write_keys(self, path: str, keys: Mapping[str, FrozenSet[str]], title: str) -> bool:
        """Write a snapshot file unless it holds these very keys already; True if written.
        An empty mapping removes the file."""
        if not keys:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return False
        data = map_text(keys, title)
        try:
            with open(path, "rb") as file:
                if file.read() == data:
                    return False
        except FileNotFoundError:
            pass
        self.ensure_folder()
        write_atomically(path, data)
        return True
