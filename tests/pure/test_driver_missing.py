"""A recipient source whose driver is not installed stops policyd at start with one line naming
the Debian package (and ``backupmx recipients sync`` with the same line)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from backupmx.common.config import ConfigError, parse_config
from backupmx.policyd.main import require_drivers


@pytest.mark.parametrize("source_type,module,package,keys", [
    ("ldap", "ldap", "python3-ldap", "uri = ldap://127.0.0.1\nbase = dc=x\n"),
    ("pgsql", "psycopg", "python3-psycopg", "dsn = host=/x\nquery = SELECT 1\n"),
    ("mysql", "pymysql", "python3-pymysql",
     "host = 127.0.0.1\nuser = u\ndatabase = d\nquery = SELECT 1\n"),
])
def test_missing_driver_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          source_type: str, module: str, package: str,
                                          keys: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # "import module" raises ImportError
    config = parse_config(f"[recipients dir]\ntype = {source_type}\n{keys}"
                          "[domains]\na.test = mx\n", "/etc/backupmx/backupmx.conf")
    with pytest.raises(ConfigError) as caught:
        require_drivers(config)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("/etc/backupmx/backupmx.conf: [recipients dir]: ")
    assert message.endswith(f"install the package {package}")
