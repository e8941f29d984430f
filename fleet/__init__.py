"""backupmx.fleet: a fleet of backup MXes sharing their ledgers through PostgreSQL.

Each host's SQLite ledger stays the source of truth; the fleet store is filled asynchronously
from an outbox in that ledger (``outbox.py``) by ``backupmx fleet push`` and at the end of each
``backupmx flush --auto`` run, never on the SMTP path. Modules: ``store`` (connecting, psycopg 3),
``schema`` (the store's tables and migrations), ``outbox`` (the ledger side), ``push``, ``requests``
(fleet-wide flush requests), ``view`` (``status --fleet``), ``leader`` (one host sends the
notifications). Imports backupmx.common and backupmx.milter only.
"""
from __future__ import annotations

from backupmx.fleet.leader import leader

__all__ = ["leader"]
