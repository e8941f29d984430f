"""The manual pages' sources (man/*.scd): backupmx.conf(5) documents every key with its default.

The schema is the truth (an embedded default as it would be written in the file): each key of
each section must have its entry under the section's heading, ``*key* = ...``, whose paragraph
ends with ``Default: *VALUE*.`` or, for an empty default, ``Default: empty``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict

import pytest

from backupmx.common.config import SCHEMA

MAN = Path(__file__).resolve().parents[2] / "man"
HEADING = re.compile(r"^# \[(\w+)\]\s*$")
ENTRY = re.compile(r"^\*(\w+)\* = ")


def entries() -> Dict[str, Dict[str, str]]:
    """section -> key -> the text of its entry (the key line and its indented paragraph)."""
    found: Dict[str, Dict[str, str]] = {}
    section = key = None
    for line in (MAN / "backupmx.conf.5.scd").read_text(encoding="utf-8").splitlines():
        heading = HEADING.match(line)
        if heading or line.startswith("# "):
            section = heading.group(1) if heading else None
            key = None
            continue
        entry = ENTRY.match(line)
        if entry and section:
            key = entry.group(1)
            found.setdefault(section, {})[key] = line
        elif key and section and line.startswith("\t"):
            found[section][key] += " " + line.strip()
        elif line.strip():
            key = None
    return found


@pytest.mark.parametrize("section, key", [(s, k) for s, keys in SCHEMA.items() for k in keys])
def test_every_key_is_documented_with_its_default(section: str, key: str) -> None:
    documented = entries()
    assert key in documented.get(section, {}), f"[{section}] {key} missing in backupmx.conf(5)"
    default = SCHEMA[section][key][1]
    wanted = f"Default: *{default}*." if default else "Default: empty"
    assert wanted in documented[section][key]


def test_no_key_is_documented_that_the_schema_does_not_know() -> None:
    documented = {(s, k) for s, keys in entries().items() for k in keys}
    assert documented == {(s, k) for s, keys in SCHEMA.items() for k in keys}


def test_every_program_has_a_page_from_one_source() -> None:
    pages = sorted(p.name for p in MAN.glob("*.scd"))
    assert pages == ["backupmx-milter.8.scd", "backupmx-policyd.8.scd", "backupmx.8.scd",
                     "backupmx.conf.5.scd"]
    for page in pages:
        name, section = page[:-len(".scd")].rsplit(".", 1)
        first = (MAN / page).read_text(encoding="utf-8").splitlines()[0]
        assert first == f"{name}({section})"  # scdoc's title line
