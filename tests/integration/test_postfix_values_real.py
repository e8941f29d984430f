"""common.postfix_values against the real Postfix: the expected answers are Postfix's own.

- time values: Postfix refuses a bad one at start ("bad time value or unit"); ``postmap`` reads
  the global time parameters, and the bounded ``in_flow_delay`` shows the value Postfix computed.
- domain lists: a private smtpd with ``reject_unauth_destination`` relays exactly the names
  ``relay_domains`` matches (554 "Relay access denied" otherwise); ``postqueue -s NAME`` works
  exactly for the names ``fast_flush_domains`` matches (exit 69 otherwise).
"""
from __future__ import annotations

import os
import re
import smtplib
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

from backupmx.common.postfix_values import (
    domain_list_matches,
    parent_matches_subdomains,
    parse_time,
)
from tests.harness.postfix import PostfixInstance, free_port
from tests.integration.conftest import require_postfix

TIME_VALUES = ["5d", "1h30m", "5 d", "10", "3600s", "1w", "2W", "1.5h", "x", "05m", "1d1d",
               "1h 30m", "h1", "7D", "-1d", "", "30m1h", "1s1", "1m 1", "1hx", "11", "2", "h",
               "d", "hh"]


def postfix_time(folder: Path, value: str) -> Optional[int]:
    """What Postfix makes of a time value: None if it refuses it, else its seconds.

    ``in_flow_delay`` is a global time parameter with a maximum of 10 s: above that, Postfix's
    fatal message prints the value it computed; at or below it, the value is whatever <= 10.
    """
    (folder / "main.cf").write_text(f"in_flow_delay = {value}\n")
    past = time.time() - 10  # Postfix tools stall ~2 s re-reading a main.cf just written
    os.utime(folder / "main.cf", (past, past))
    result = subprocess.run(["postmap", "-c", str(folder), "-q", "x", "texthash:/dev/null"],
                            capture_output=True, text=True, timeout=30, check=False)
    if "bad time value" in result.stderr:
        return None
    match = re.search(r"invalid in_flow_delay: (\d+) \(max 10\)", result.stderr)
    assert match or "fatal" not in result.stderr, result.stderr
    return int(match.group(1)) if match else -1  # -1: valid, at most 10


@pytest.mark.parametrize("value", TIME_VALUES)
def test_time_values_are_read_as_postfix_reads_them(tmp_path: Path, value: str) -> None:
    require_postfix()
    (tmp_path / "master.cf").write_text("")
    expected = postfix_time(tmp_path, value)
    try:
        ours: Optional[int] = parse_time(value)
    except ValueError:
        ours = None
    if expected == -1:
        assert ours is not None and ours <= 10, value
    else:
        assert ours == expected, f"{value!r}: Postfix reads {expected}"


NAMES = ["example.test", "sub.example.test", "a.b.example.test", "other.test", "xexample.test",
         "excluded.example.test", "deep.excluded.example.test", "dotonly.test",
         "sub.dotonly.test"]
LISTS = [
    "example.test",
    ".example.test",
    "example.test, .example.test",
    "!sub.example.test, example.test",
    "!example.test, example.test",
    "example.test, !example.test",
    "!excluded.example.test, example.test, .dotonly.test",
]


@pytest.fixture(scope="module")
def postfix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostfixInstance]:
    require_postfix()
    instance = PostfixInstance(tmp_path_factory.mktemp("values"), free_port(),
                               {"example.test": free_port()})
    instance.start()
    yield instance
    instance.stop()


def relayed_by_postfix(instance: PostfixInstance, names: List[str]) -> Dict[str, bool]:
    answers = {}
    with smtplib.SMTP("127.0.0.1", instance.smtpd_port, timeout=30) as client:
        client.ehlo("client.test")
        for name in names:
            client.mail("sender@client.test")
            code, text = client.rcpt(f"user@{name}")
            answers[name] = not (code == 554 and b"Relay access denied" in text)
            client.rset()
    return answers


def flushable_by_postfix(instance: PostfixInstance, name: str) -> bool:
    return instance.run("postqueue", "-s", name, check=False).returncode == 0


@pytest.mark.parametrize("parent_setting", ["default", "empty"])
@pytest.mark.parametrize("value", LISTS)
def test_domain_lists_match_what_postfix_relays_and_flushes(
        postfix: PostfixInstance, value: str, parent_setting: str) -> None:
    postfix.extra_main_cf["relay_domains"] = value
    postfix.extra_main_cf["fast_flush_domains"] = value
    if parent_setting == "empty":
        postfix.extra_main_cf["parent_domain_matches_subdomains"] = ""
    else:
        postfix.extra_main_cf.pop("parent_domain_matches_subdomains", None)
    postfix.reload()
    postconf_lines = postfix.run("postconf", "-x", "parent_domain_matches_subdomains").stdout
    postconf = {"parent_domain_matches_subdomains": postconf_lines.partition("=")[2].strip()}
    relayed = relayed_by_postfix(postfix, NAMES)
    for name in NAMES:
        ours = domain_list_matches(value, name, parent_matches_subdomains(postconf,
                                                                          "relay_domains"))
        assert ours is relayed[name], f"relay_domains = {value}: {name}"
        flush = domain_list_matches(value, name,
                                    parent_matches_subdomains(postconf, "fast_flush_domains"))
        assert flush is flushable_by_postfix(postfix, name), f"fast_flush_domains = {value}: {name}"
