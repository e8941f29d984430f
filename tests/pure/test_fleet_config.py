"""The optional [fleet] section: strict like the rest, absent by default."""
from __future__ import annotations

import pytest

from backupmx.common.config import ConfigError, FleetConfig, parse_config

PATH = "/etc/backupmx/test.conf"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, PATH)
    return str(caught.value)


def test_no_section_means_no_fleet() -> None:
    assert parse_config("").fleet is None


def test_defaults() -> None:
    config = parse_config("[fleet]\ndatabase = postgresql://backupmx@db.example.test/backupmx\n")
    assert config.fleet == FleetConfig(database="postgresql://backupmx@db.example.test/backupmx",
                                       password_file=None, host_id=None, push_interval=60.0,
                                       retention=30 * 86400)


def test_every_key() -> None:
    config = parse_config("""
[fleet]
database = host=/run/postgresql dbname=backupmx user=backupmx   ; conninfo
password_file = /etc/backupmx/fleet.secret
host_id = MX2.example.test
push_interval = 30
retention = 2w
""", PATH)
    assert config.fleet == FleetConfig("host=/run/postgresql dbname=backupmx user=backupmx",
                                       "/etc/backupmx/fleet.secret", "mx2.example.test", 30.0,
                                       14 * 86400)
    assert parse_config("[fleet]\ndatabase = dbname=x\nretention = 12h\n").fleet.retention \
        == 12 * 3600


@pytest.mark.parametrize("text, expected", [
    ("[fleet]\n", f"{PATH}:1: [fleet] database: is required"),
    ("[fleet]\ndatabase = mysql://db/x\n", f"{PATH}:2: [fleet] database: 'mysql://db/x' is not "
                                           f"a postgresql:// URI"),
    ("[fleet]\ndatabase = backupmx\n", "is neither a postgresql:// URI nor key=value conninfo"),
    ("[fleet]\ndatabase = dbname=x password=secret\n", "holds a password: put it in "
                                                       "password_file instead"),
    ("[fleet]\ndatabase = postgresql://u:secret@db/x\n", "holds a password"),
    ("[fleet]\ndatabase = dbname=x\npassword_file = fleet.secret\n",
     f"{PATH}:3: [fleet] password_file: 'fleet.secret' must be an absolute path"),
    ("[fleet]\ndatabase = dbname=x\nhost_id = not a host\n", "[fleet] host_id: 'not a host' is "
                                                             "not a host name"),
    ("[fleet]\ndatabase = dbname=x\npush_interval = 0\n", "[fleet] push_interval: '0' must be"),
    ("[fleet]\ndatabase = dbname=x\nretention = 30 days\n", "[fleet] retention: '30 days' is "
                                                            "not a time"),
    ("[fleet]\ndatabase = dbname=x\nretention = 0\n", "[fleet] retention: '0' must be positive"),
    ("[fleet]\ndatabase = dbname=x\nhosts = a, b\n", f"{PATH}:3: [fleet] hosts: unknown key"),
])
def test_bad_values_name_file_line_and_key(text: str, expected: str) -> None:
    assert expected in error_of(text)
