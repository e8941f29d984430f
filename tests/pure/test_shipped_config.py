"""The shipped etc/backupmx.conf: valid, documents every key, and its defaults are the real ones.

In the shipped file a commented ``#key = value`` line shows a built-in default, and uncommented
lines are the few settings the packages change (unix sockets inside Postfix's queue directory,
the example allowlist). Both must stay true when the schema changes.
"""
from __future__ import annotations

import re
from pathlib import Path

from backupmx.common.config import OPTIONAL_SECTIONS, SCHEMA, parse_config
from backupmx.common.listen import parse_listen

SHIPPED = Path(__file__).resolve().parents[2] / "etc" / "backupmx.conf"
# An optional section ([fleet]) is shipped with its header commented out too: "#[fleet]".
SECTION = re.compile(r"^#?\[(\w+)\]\s*$")
DOCUMENTED_DEFAULT = re.compile(r"^#(\w+) = ?(.*)$")
SETTING = re.compile(r"^(\w+) = ?(.*)$")

# What the packages set on purpose, and why (see the comments in the file).
PACKAGED_SETTINGS = {
    ("policyd", "listen"): "unix:/var/spool/postfix/backupmx/policyd.sock:0660",
    ("policyd", "sender_networks"): "/etc/backupmx/sender_networks",
    ("milter", "listen"): "unix:/var/spool/postfix/backupmx/milter.sock:0660",
    ("postfix", "recipient_table"): "/var/lib/backupmx/relay_recipients",
}


def _scan():
    """(section, key) -> value for documented defaults and for active settings."""
    defaults, settings, section = {}, {}, None
    for line in SHIPPED.read_text(encoding="utf-8").splitlines():
        match = SECTION.match(line)
        if match:
            section = match.group(1)
            continue
        match = DOCUMENTED_DEFAULT.match(line)
        if match and section in SCHEMA:
            defaults[(section, match.group(1))] = match.group(2).strip()
            continue
        match = SETTING.match(line)
        if match:
            settings[(section, match.group(1))] = match.group(2).strip()
    return defaults, settings


def test_shipped_file_is_valid():
    config = parse_config(SHIPPED.read_text(encoding="utf-8"), str(SHIPPED))
    assert config.domains == {}
    assert config.policyd.listen == parse_listen(PACKAGED_SETTINGS[("policyd", "listen")])
    assert config.milter.listen == parse_listen(PACKAGED_SETTINGS[("milter", "listen")])


def test_every_key_is_documented_with_its_embedded_default():
    defaults, _ = _scan()
    expected = {(section, key): default
                for section, keys in SCHEMA.items() for key, (_, default) in keys.items()}
    assert defaults == expected


def test_documented_defaults_parse_to_the_embedded_defaults():
    defaults, _ = _scan()
    sections = {}
    for (section, key), value in defaults.items():
        if section in OPTIONAL_SECTIONS:  # absent unless written; its defaults tested below
            continue
        sections.setdefault(section, []).append(f"{key} = {value}")
    text = "".join(f"[{name}]\n" + "\n".join(lines) + "\n" for name, lines in sections.items())
    assert parse_config(text) == parse_config("")


def test_only_the_packaged_settings_differ_from_the_defaults():
    _, settings = _scan()
    assert settings == PACKAGED_SETTINGS
    packaged = parse_config(SHIPPED.read_text(encoding="utf-8"))
    embedded = parse_config("")
    assert packaged.policyd.recipients == embedded.policyd.recipients
    assert packaged.milter.ledger == embedded.milter.ledger
    assert packaged.postfix.config_directory == embedded.postfix.config_directory
    assert packaged.sources == embedded.sources


def test_optional_sections_are_off_and_their_documented_defaults_are_the_embedded_ones():
    assert parse_config(SHIPPED.read_text(encoding="utf-8")).fleet is None
    defaults, _ = _scan()
    lines = [f"{key} = {value}" for (section, key), value in defaults.items()
             if section == "fleet" and key != "database"]
    database = "database = host=/run/postgresql dbname=backupmx\n"
    documented = parse_config("[fleet]\n" + database + "\n".join(lines) + "\n")
    assert documented.fleet == parse_config("[fleet]\n" + database).fleet
