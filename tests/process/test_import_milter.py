"""From the repository root, ``import milter`` must give pymilter's C module, not our folder.

Our milter code lives in a folder called milter/ (import name ``backupmx.milter``); it has no
``__init__.py`` at its top so that, with the repository root on sys.path (``python -c`` run from
the root, pytest's rootdir), pymilter's compiled ``milter`` still wins.
"""
from __future__ import annotations

import importlib.machinery
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_repository_root_is_where_our_milter_folder_is() -> None:
    assert (ROOT / "milter").is_dir()
    assert not (ROOT / "milter" / "__init__.py").exists()


def test_import_milter_from_the_root_gives_pymilter() -> None:
    path = run_python("import sys, milter; assert sys.path[0] == ''; print(milter.__file__)")
    assert path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), path
    assert not Path(path).resolve().is_relative_to(ROOT / "milter")
    assert run_python("import milter; print(callable(milter.register))") == "True"


def test_pymilter_python_layer_imports_from_the_root() -> None:
    assert run_python("import Milter; print(Milter.Base.__name__)") == "Base"


def test_backupmx_milter_is_importable() -> None:
    location = run_python("import backupmx.milter as m; print(list(m.__path__)[0])")
    assert Path(location).resolve() == (ROOT / "milter").resolve()
