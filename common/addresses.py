"""Addresses and domain names, normalised one way everywhere.

Postfix compares domains case-insensitively and ignores one trailing dot; it hands policy services
and milters recipients in its internal (unquoted) form, the domain after the last ``@``
(RFC 5321 section 4.1.2: the local part may itself contain a quoted ``@``). Every part of backupmx
reads addresses through these functions.
"""
from __future__ import annotations

from typing import Optional, Tuple


def normalize_domain(name: str) -> str:
    """``Example.TEST.`` -> ``example.test``: lower case, surrounding blanks and one trailing dot
    dropped."""
    return name.strip().lower().rstrip(".")


def split_address(text: str) -> Tuple[str, str]:
    """``<User@Example.TEST.>`` -> (``user``, ``example.test``), both lower-case.

    The domain is what follows the last ``@``; no ``@`` gives (text, ""). Angle brackets and
    surrounding blanks are dropped. Local parts are compared case-insensitively, as
    relay_recipient_maps lookups are (postmap(1): keys are case-folded).
    """
    local, at, domain = text.strip().strip("<>").lower().rpartition("@")
    if not at:
        return domain, ""
    return local, normalize_domain(domain)


def address_domain(address: str) -> Optional[str]:
    """The normalised domain of an address; None when there is no domain."""
    _, domain = split_address(address)
    return domain or None
