"""What a cached recipient callout result means now: pure rules on plain data (no I/O).

A callout asks the domain's primary MX ``RCPT TO:<address>`` (policyd.callout_session). Its
definite answers are cached (common.callout_cache): ``valid`` (2xx) and ``invalid`` (5xx).
Temporary failures (4xx, greylisting, a timeout, a lost connection) are never cached: they prove
nothing. The lifetimes are Postfix's verify(8) rules with the ``[recipients NAME]`` keys of a
``callout`` source: a valid entry is known for ``positive_expire_time`` (31 days) and verified
again once it is older than ``positive_refresh_time`` (7 days); a refresh that fails, even with
5xx, never replaces a valid entry that has not expired (Postfix: "do not overwrite a good
status with a bad one"); an invalid entry is known for ``negative_expire_time`` (4 hours).
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, NamedTuple, Optional, Tuple

from backupmx.common.addresses import split_address
from backupmx.common.recipient_map import unquote_local

if TYPE_CHECKING:
    from backupmx.common.config import Config
    from backupmx.common.source_settings import SourceSettings

VALID, INVALID, TEMPORARY = "valid", "invalid", "temporary"
#: verdict statuses the decision reads
POSITIVE, NEGATIVE, UNVERIFIED = "positive", "negative", "unverified"
#: seconds between two checks of a domain's primary with a random address (accept-all)
ACCEPT_ALL_INTERVAL = 86400.0
#: the local part prefix of those random addresses
PROBE_PREFIX = "backupmx-verify-"


@dataclass(frozen=True)
class Lifetimes:
    """A callout source's cache lifetimes, in seconds."""

    positive_expire: float = 31 * 86400.0
    positive_refresh: float = 7 * 86400.0
    negative_expire: float = 4 * 3600.0


@dataclass(frozen=True)
class Entry:
    """One cached result: ``status`` ``valid`` or ``invalid``, ``verified_at`` (Unix seconds
    of the callout that gave it) and the primary's ``reply`` (first line, for logs)."""

    address: str
    domain: str
    status: str
    verified_at: float
    reply: str = ""

    def expires_at(self, lifetimes: Lifetimes) -> float:
        """Unix seconds after which the entry says nothing any more."""
        if self.status == VALID:
            return self.verified_at + lifetimes.positive_expire
        return self.verified_at + lifetimes.negative_expire


class Verdict(NamedTuple):
    """What the cache says of an address now: ``status`` POSITIVE, NEGATIVE or UNVERIFIED;
    ``refresh``: a callout should be made (no entry, or a valid one due for refresh);
    ``age``: seconds since the callout that gave it (None without an entry)."""

    status: str
    refresh: bool
    age: Optional[float] = None


NO_ENTRY = Verdict(UNVERIFIED, True)


def verdict_of(entry: Optional[Entry], lifetimes: Lifetimes, now: float) -> Verdict:
    """The verdict an entry (or None) gives at ``now``; see the module docstring."""
    if entry is None:
        return NO_ENTRY
    age = now - entry.verified_at
    if entry.status == VALID and age < lifetimes.positive_expire:
        return Verdict(POSITIVE, age >= lifetimes.positive_refresh, age)
    if entry.status == INVALID and age < lifetimes.negative_expire:
        return Verdict(NEGATIVE, False, age)
    return NO_ENTRY


def merged(old: Optional[Entry], new: Entry, lifetimes: Lifetimes) -> Optional[Entry]:
    """The entry to keep after a definite result ``new`` (None: keep ``old``): an unexpired
    valid entry is never replaced by an invalid one, and no entry by an older one (a flush
    learned from later gives results of its own time)."""
    if old is None:
        return new
    if new.verified_at < old.verified_at:
        return None
    if (old.status == VALID and new.status == INVALID
            and new.verified_at - old.verified_at < lifetimes.positive_expire):
        return None
    return new


#: RCPT replies that say the mailbox does not exist (RFC 5321 section 4.2.2)
MAILBOX_REFUSED = frozenset({550, 551, 553})
#: RFC 3463 enhanced status codes about the sender's address, not the recipient's
SENDER_STATUS = frozenset({"5.1.7", "5.1.8"})
_ENHANCED = re.compile(r"\s*([245]\.\d{1,3}\.\d{1,3})(?:\s|$)")


def rcpt_verdict(code: int, text: str) -> str:
    """What a reply to ``RCPT TO`` says of the recipient: VALID (2xx); INVALID only when it
    says the mailbox does not exist: a code of MAILBOX_REFUSED whose enhanced status code
    (RFC 3463, at the start of ``text``, the reply after its code), when there is one, is
    ``5.0.0`` or an address status ``5.1.x`` other than the sender's (SENDER_STATUS);
    TEMPORARY for every other reply (4xx, a full mailbox 5.2.x, a policy or relay refusal
    5.7.x, a refused sender or client, 552, 554, ...), which proves nothing about the address.
    Used for callouts and for the deliveries of a flush alike."""
    if code // 100 == 2:
        return VALID
    if code not in MAILBOX_REFUSED:
        return TEMPORARY
    enhanced = _ENHANCED.match(text)
    if enhanced is None:
        return INVALID
    status = enhanced.group(1)
    if status == "5.0.0" or (status.startswith("5.1.") and status not in SENDER_STATUS):
        return INVALID
    return TEMPORARY


def cache_key(address: str) -> Tuple[str, str]:
    """(the address as the callout cache keys it, its domain), in the form policyd is asked
    about (Postfix's internal form): lower-case, the domain normalised, the local part without
    RFC 5321 quoting (``"odd user"@x.test`` -> ``odd user@x.test``)."""
    local, domain = split_address(address)
    if '"' in local or "\\" in local:
        local = unquote_local(local)
    return f"{local}@{domain}", domain


def probe_address(domain: str, token: Optional[str] = None) -> str:
    """A random address of ``domain`` no real mailbox has, to find out whether the primary
    accepts every recipient (then callouts prove nothing)."""
    return f"{PROBE_PREFIX}{token or secrets.token_hex(8)}@{domain}"


def is_probe(address: str) -> bool:
    return address.startswith(PROBE_PREFIX)


def callout_sources(config: "Config") -> Dict[str, "SourceSettings"]:
    """Relay domain -> the ``callout`` source speaking for it (its ``driver`` is a
    CalloutSettings): the first ``[recipients NAME]`` section of that type naming the domain.
    policyd asks the primaries of these domains; the command reads and adds to their cache."""
    from backupmx.common.source_settings import CalloutSettings
    found: Dict[str, SourceSettings] = {}
    for source in config.sources:
        if isinstance(source.driver, CalloutSettings):
            for domain in source.domains:
                if domain in config.domains and domain not in found:
                    found[domain] = source
    return found
