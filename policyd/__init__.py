"""backupmx.policyd: the Postfix policy service of backupmx, and the pieces both daemons share
(configuration, listen addresses, the Postfix tools wrapper)."""


def version() -> str:
    """The installed distribution's version (one source of truth: setup.cfg)."""
    from importlib.metadata import PackageNotFoundError, version as distribution_version
    try:
        return distribution_version("backupmx")
    except PackageNotFoundError:  # running from a bare checkout
        return "0+unknown"
