"""The README's set-up commands run as written by root on a fresh Debian 12 (no sudo there)."""
from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def setup_commands() -> list:
    section = README.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "no ```sh block in the README's set-up section"
    return [line.split("#", 1)[0].split() for line in block.group(1).splitlines()
            if line.split("#", 1)[0].strip()]


def test_setup_commands_are_executable_files_of_the_checkout_without_sudo() -> None:
    commands = setup_commands()
    assert [words[0] for words in commands] == [".ci/demo", ".ci/run"]
    for words in commands:
        path = ROOT / words[0]
        assert path.is_file() and os.access(path, os.X_OK), words[0]
        assert path.read_text(encoding="utf-8").startswith("#!/usr/bin/env bash\n")
    assert not re.search(r"(^|[\s`])sudo \.ci/", README, re.M)  # commands written for root
