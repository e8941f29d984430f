"""Pure tests never read the machine's Postfix: $MAIL_CONFIG names a small private main.cf.

Code that asks Postfix (recipient_delimiter, relay_domains) then gets quick, known answers, as
from an instance acting as backup MX for example.test.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import pytest

MAIN_CF = """\
compatibility_level = 3.6
relay_domains = example.test
mydestination =
recipient_delimiter = +
"""


@pytest.fixture(scope="session")
def postfix_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("postfix-etc")
    (folder / "main.cf").write_text(MAIN_CF)
    (folder / "master.cf").write_text("")
    past = time.time() - 10  # Postfix tools stall about 2 s re-reading a main.cf just written
    for name in ("main.cf", "master.cf"):
        os.utime(folder / name, (past, past))
    return folder


@pytest.fixture(autouse=True)
def private_postfix(postfix_config: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MAIL_CONFIG", str(postfix_config))
    yield
