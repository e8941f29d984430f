"""The relay recipient map: the text an admin would feed to ``postmap``, read directly.

Format (postmap(1), "text" input): ``key value`` lines, ``#`` comment lines, blank lines, and
lines starting with whitespace continue the previous line. Keys are ``user@domain`` or the
catch-all ``@domain``; they are compared case-insensitively. The value is not used (as with
relay_recipient_maps, any value means "valid"). A lookup of ``user+tag@domain`` also tries
``user@domain`` when ``+`` is a recipient delimiter, then ``@domain`` — Postfix's own order.

Keys and lookups follow Postfix 3.7 (measured with ``postmap -s``/``-q`` and a private Postfix's
``relay_recipient_maps``; tests/integration/test_postfix_addresses.py repeats the measurement):

- A key ends at the first whitespace outside double quotes (a backslash escapes the next
  character), so ``"odd user"@example.test OK`` is one key; a line with an unbalanced quote is an
  error (postmap warns and skips it). Keys are case-folded whole (``Straße`` is ``strasse``) and
  kept literally otherwise: no quote is removed and no trailing dot dropped.
- Postfix hands policyd the recipient in its internal, unquoted form (``odd user@example.test``)
  and looks it up in the quoted form first (RFC 822 quoting of the local part, as
  ``quote_822_local`` does: 8-bit text left alone), then in the unquoted form if they differ
  (``mail_addr_find``'s legacy "external-first" query form), for the full address, then without
  its extension, then ``@domain``.
- So a key in neither form does not match the address it seems to name: ``"plain"@example.test``
  (Postfix looks up ``plain@example.test``), ``alice@example.test.`` (the recipient's domain has
  no trailing dot). Such keys load as Postfix reads them, with a warning naming the key to write.
- A UTF-8 byte-order mark at the start of a file is dropped with a warning (Postfix would make it
  part of the first key, which then never matches).
"""
from __future__ import annotations

import re
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

    #: domain -> local parts; never changed once built (sets, not frozensets: freezing a
    #: million-address domain would hold the GIL for one long stretch, see load_recipient_map)
    users: Dict[str, AbstractSet[str]] = field(default_factory=dict)
    catch_all: FrozenSet[str] = frozenset()  # domains whose every recipient is valid
    delimiters: str = ""
    sources: Tuple[str, ...] = ()
    #: one line each, naming the file: a dropped BOM, keys not matching what they seem to name
    warnings: Tuple[str, ...] = ()
    #: some local part is quoted (starts with "): only then can a quoted lookup match
    quoted_keys: bool = False
    #: (source file, the domains it has keys for), in load order
    source_domains: Tuple[Tuple[str, FrozenSet[str]], ...] = ()

    def covers(self, domain: str) -> bool:
        """True when the map says anything about this (lower-case) domain."""
        return domain in self.users or domain in self.catch_all

    def count(self, domain: str) -> int:
        """Keys of this (lower-case) domain: its addresses, plus 1 for an ``@domain`` key."""
        return len(self.users.get(domain, ())) + (domain in self.catch_all)

    def domains(self) -> FrozenSet[str]:
        """Every domain the map says anything about."""
        return frozenset(self.users) | self.catch_all

    def accepts(self, local: str, domain: str) -> bool:
        """Is local@domain a valid recipient? Arguments are already lower-case.

        ``local`` is in Postfix's internal (unquoted) form, as policyd receives it. Each form is
        tried as Postfix does: quoted (when it differs), unquoted, then without the extension.
        """
        if domain in self.catch_all:
            return True
        locals_ = self.users.get(domain)
        if locals_ is None:
            return False
        if not local.isascii():
            local = local.casefold()
        if local in locals_ or self.quoted_keys and quote_local(local) in locals_:
            return True
        base = _strip_extension(local, self.delimiters)
        if base is None:
            return False
        return base in locals_ or self.quoted_keys and quote_local(base) in locals_

    def __len__(self) -> int:
        return sum(len(v) for v in self.users.values()) + len(self.catch_all)


#: what makes a local part not an RFC 822 dot-string (Postfix's is_822_dot_string, with 8-bit
#: text counted as clean): empty, a leading, trailing or doubled dot, a space, a control
#: character or one of ()<>@,;:\"[]
_NOT_DOT_STRING = re.compile(r'^$|^\.|\.$|\.\.|[\x00-\x20\x7f()<>@,;:\\"\[\]]')


def quote_local(local: str) -> str:
    """The quoted (external) form of an internal local part, as Postfix's quote_822_local.

    ``odd user`` -> ``"odd user"``, ``a\\b`` -> ``"a\\\\b"``, ``alice`` -> ``alice``. Source:
    Postfix global/quote_822_local.c (backslash before ``"``, ``\\`` and CR inside the quotes).
    """
    if _NOT_DOT_STRING.search(local) is None:
        return local
    escaped = "".join("\\" + char if char in '"\\\r' else char for char in local)
    return f'"{escaped}"'


def unquote_local(local: str) -> str:
    """The internal form of a local part as written: quotes dropped, backslash escapes undone.

    Source: Postfix global/quote_822_local.c, unquote_822_local.
    """
    out = []
    chars = iter(local)
    for char in chars:
        if char == '"':
            continue
        if char == "\\":
            char = next(chars, "")
        out.append(char)
    return "".join(out)


def split_key(text: str) -> Tuple[str, str]:
    """``"odd user"@example.test OK`` -> (``"odd user"@example.test``, ``OK``).

    The key ends at the first whitespace outside double quotes; ``\\`` escapes the next
    character (postmap's reading). The value is the rest, stripped ("" if none). Raises
    MapError (without a line number) on an unbalanced quote.
    """
    if '"' not in text and "\\" not in text:  # nearly every line: no character loop
        parts = text.split(None, 1)
        return parts[0], parts[1].strip() if len(parts) > 1 else ""
    blanks, unbalanced = _outside_quotes(text, str.isspace)
    if blanks:
        return text[:blanks[0]], text[blanks[0]:].strip()
    if unbalanced:
        raise MapError(f"unbalanced '\"' in {text[:80]!r}")
    return text, ""


def _outside_quotes(text: str, wanted: Callable[[str], bool]) -> Tuple[List[int], bool]:
    """Positions of the characters ``wanted`` accepts outside double quotes and not escaped by
    ``\\`` (postmap(1)'s reading of a key), and whether a quote is left open at the end."""
    found: List[int] = []
    quoted = escaped = False
    for position, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and wanted(char):
            found.append(position)
    return found, quoted


def split_address_key(key: str) -> Tuple[str, str, bool]:
    """A key -> (local part, domain, routing?) split at the last ``@`` outside quotes.

    ``routing`` is True when an ``@`` outside quotes remains in the local part. The local part
    is "" for ``@domain``; the domain is "" when there is no ``@`` at all.
    """
    if '"' not in key and "\\" not in key:
        local, at, domain = key.rpartition("@")
        return (local, domain, "@" in local) if at else (key, "", False)
    ats, _ = _outside_quotes(key, lambda char: char == "@")
    if not ats:
        return key, "", False
    return key[:ats[-1]], key[ats[-1] + 1:], len(ats) > 1


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


def strip_bom(lines: Iterable[str], source: str, warnings: List[str]) -> Iterator[str]:
    """The lines with a UTF-8 byte-order mark dropped from the first; a warning if there was one.

    Postfix would make the BOM part of the first key, so that key's user would be refused.
    """
    first = True
    for line in lines:
        if first:
            first = False
            if line.startswith("\ufeff"):
                line = line[1:]
                warnings.append(f"{source}: starts with a UTF-8 byte-order mark; ignoring it "
                                "(Postfix would not: save the file without it)")
        yield line


#: longest address accepted from a source (RFC 5321 section 4.5.3.1.3: a path of 256 octets)
MAX_ADDRESS_LENGTH = 254
_DOMAIN_KEY = re.compile(r"(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*"
                         r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def address_key(text: str) -> Tuple[str, str]:
    """One address from a recipient source -> (local part key, domain), as a map key.

    ``Alice@Example.TEST`` -> (``alice``, ``example.test``); ``@example.test`` -> (``""``,
    ``example.test``) (a catch-all); ``odd user@example.test`` or ``"odd user"@example.test``
    -> (``"odd user"``, ``example.test``): the local part in the quoted form Postfix looks up
    first (quote_local), so the key matches in policyd and in a Postfix table alike. The domain
    is normalised (common.addresses.normalize_domain: lower case, one trailing dot dropped).

    Raises ValueError with a short reason for text that is no such address: empty, longer than
    MAX_ADDRESS_LENGTH, control characters, no ``@``, routing (``@`` in the unquoted local
    part), an unbalanced quote or a domain that is not a host name.
    """
    from backupmx.common.addresses import normalize_domain
    address = text.strip()
    if not address:
        raise ValueError("empty")
    if len(address) > MAX_ADDRESS_LENGTH:
        raise ValueError(f"longer than {MAX_ADDRESS_LENGTH} characters")
    if any(ord(char) < 32 or ord(char) == 127 for char in address) or "\ufffd" in address:
        raise ValueError("control characters or undecodable bytes")
    if address.count('"') % 2:
        raise ValueError("unbalanced '\"'")
    local, domain, routing = split_address_key(address)
    if not domain and "@" not in address:
        raise ValueError("no '@domain'")
    if routing:
        raise ValueError("an '@' in the local part (routing)")
    domain = normalize_domain(domain)
    if not _DOMAIN_KEY.fullmatch(domain):
        raise ValueError(f"{domain!r} is not a domain name")
    if not local:
        return "", domain
    internal = unquote_local(local)
    if not internal:
        raise ValueError("empty local part")
    folded = internal.lower() if internal.isascii() else internal.casefold()
    return quote_local(folded), domain


#: at most this many warnings about keys per file, then one line with the count of the rest
MAX_KEY_WARNINGS = 5


def _postfix_form(local: str, domain: str) -> str:
    """The key Postfix would match for the address this key was probably meant as."""
    local = quote_local(unquote_local(local)) if local else ""
    return f"{local}@{domain.rstrip('.')}"


def parse_recipient_lines(
    lines: Iterable[str], source: str = "<text>", warnings: Optional[List[str]] = None,
    quoted_domains: Optional[Set[str]] = None,
) -> Tuple[Dict[str, Set[str]], Set[str]]:
    """Parse one map file's lines into (domain -> local parts, catch-all domains).

    Local parts and domains are the key's text, case-folded. ``quoted_domains`` (when given)
    receives the domains with a quoted local part (one starting with ``"``). Keys that do not
    match the address they seem to name are kept (they match exactly what they match in
    Postfix) and reported in ``warnings`` (when given), one line each naming file and line, at
    most MAX_KEY_WARNINGS per file.
    Raises MapError naming source and line for a line that is not ``key value`` with an
    address key.
    """
    users: Dict[str, Set[str]] = {}
    catch_all: Set[str] = set()
    odd_keys = 0
    try:
        for number, text in logical_lines(lines):
            if '"' in text or "\\" in text:
                try:
                    key, value = split_key(text)
                except MapError as error:
                    raise MapError(f"line {number}: {error}") from None
                local, domain, routing = split_address_key(key.casefold())
                if quoted_domains is not None and local.startswith('"'):
                    quoted_domains.add(domain)
            else:  # nearly every line: no quoting, no character loop
                parts = text.split(None, 1)
                key, value = parts[0], parts[1] if len(parts) > 1 else ""
                local, at, domain = (key.lower() if key.isascii() else key.casefold()
                                     ).rpartition("@")
                routing = "@" in local
                if not at:
                    domain = ""
            if not value:
                raise MapError(f"line {number}: expected 'key value', got {text[:80]!r}")
            if not domain or routing:
                raise MapError(f"line {number}: key {key[:80]!r} is not user@domain or @domain")
            if domain.endswith(".") or '"' in local:
                meant = _postfix_form(local, domain)
                if meant != f"{local}@{domain}":
                    odd_keys += 1
                    if warnings is not None and odd_keys <= MAX_KEY_WARNINGS:
                        warnings.append(
                            f"{source}:line {number}: key {key[:80]!r} does not match the "
                            f"address {meant[:80]!r} (not in Postfix, not here): write "
                            f"{meant[:80]!r}")
            if local:
                users.setdefault(domain, set()).add(local)
            else:
                catch_all.add(domain)
    except MapError as error:
        raise MapError(f"{source}:{error}") from None
    if warnings is not None and odd_keys > MAX_KEY_WARNINGS:
        warnings.append(f"{source}: {odd_keys - MAX_KEY_WARNINGS} more keys that do not match "
                        "the address they seem to name")
    return users, catch_all


#: lines parsed between two pauses: about 4 ms of work
PAUSE_EVERY = 2000
#: addresses freed between two pauses when a replaced map is released
RELEASE_STEP = 20_000
#: larger domains stay mutable sets (see load_recipient_map)
FREEZE_MAX = 5 * RELEASE_STEP


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
    warnings: List[str] = []
    quoted_domains: Set[str] = set()
    source_domains: List[Tuple[str, FrozenSet[str]]] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="strict") as handle:
                lines = strip_bom(handle if pause is None else _pausing(handle, pause), path,
                                  warnings)
                file_users, file_catch_all = parse_recipient_lines(lines, path, warnings,
                                                                   quoted_domains)
        except OSError as error:
            raise MapError(f"{path}: cannot read: {error.strerror}") from None
        except UnicodeDecodeError as error:
            raise MapError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})"
                           ) from None
        source_domains.append((path, frozenset(file_users) | frozenset(file_catch_all)))
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
    # A domain's set is frozen (a compact copy: a grown set keeps up to 4 times the slots it
    # needs) unless it is larger than FREEZE_MAX: frozenset() of a domain with a million
    # addresses copies it in one step that holds the GIL for about 100 ms, and a mutable set
    # can later be freed in small steps (release_in_steps).
    built: Dict[str, AbstractSet[str]] = {}
    for domain in list(users):
        locals_ = users.pop(domain)
        built[domain] = frozenset(locals_) if len(locals_) <= FREEZE_MAX else locals_
        del locals_
        if pause is not None:
            pause()
    return RecipientMap(
        users=built,
        catch_all=frozenset(catch_all),
        delimiters=delimiters,
        sources=tuple(sources),
        warnings=tuple(warnings),
        quoted_keys=bool(quoted_domains),
        source_domains=tuple(source_domains),
    )




def release_in_steps(users: Dict[str, AbstractSet[str]], pause: Callable[[], None]) -> None:
    """Empty a replaced map's domain -> set dict, pausing every RELEASE_STEP addresses.

    Run in a worker thread on a dict that holds the last references to the sets: each set (and
    its strings) is then freed here, in small pieces, not in the reactor. A mutable set (what a
    reload builds) is drained RELEASE_STEP elements at a time, so even a single domain of a
    million addresses is never freed in one long stretch holding the GIL.
    """
    while users:
        _, locals_ = users.popitem()
        if isinstance(locals_, set):
            while locals_:
                for _ in range(min(RELEASE_STEP, len(locals_))):
                    locals_.pop()
                pause()
        del locals_
        pause()
