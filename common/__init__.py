"""backupmx.common: what every part of backupmx shares.

Configuration, listen addresses, address and domain rules, Postfix value syntax, the Postfix tool
wrapper, daemon plumbing and the SMTP probe. Nothing here imports ``backupmx.policyd``,
``backupmx.milter`` or ``backupmx.admin``; nothing imports Twisted at module top except the
probe module, which is Twisted by nature.
"""


def version() -> str:
    """The installed distribution's version (one source of truth: setup.cfg)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version
    try:
        return distribution_version("backupmx")
    except PackageNotFoundError:  # running from a bare checkout
        return "0+unknown"
