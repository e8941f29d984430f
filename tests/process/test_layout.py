"""The layout's one-way dependencies, checked on the source (static imports) and at run time.

common <- sources, common <- policyd, common <- milter, (common, milter) <- fleet,
(common, milter, sources, fleet) <- admin; the milter process never loads Twisted (it only needs
pymilter and SQLite).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Set

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED: Dict[str, Set[str]] = {
    "common": {"common"},
    "sources": {"common", "sources"},
    "policyd": {"common", "sources", "policyd"},  # sources: only to check drivers at start
    "milter": {"common", "milter"},
    "fleet": {"common", "milter", "fleet"},
    "admin": {"common", "sources", "milter", "fleet", "admin"},
}


def imported_packages(path: Path) -> Set[str]:
    """The backupmx.X packages a module imports (anywhere in it, also inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "backupmx" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_dependencies_run_one_way(package: str) -> None:
    for module in sorted((ROOT / package).glob("*.py")):
        wrong = imported_packages(module) - ALLOWED[package]
        assert not wrong, f"{module.relative_to(ROOT)} imports backupmx.{', backupmx.'.join(wrong)}"


def printed_by_fresh_python(code: str) -> str:
    """What ``code`` prints in a new interpreter (nothing imported before it)."""
    return subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True,
                          text=True, timeout=60, check=True).stdout.strip()


def test_the_milter_process_never_loads_twisted() -> None:
    assert printed_by_fresh_python(
        "import sys, backupmx.milter.main as m, backupmx.milter.app, backupmx.milter.ledger; "
        "print(sorted({n.split('.')[0] for n in sys.modules} & {'twisted', 'backupmx'}))"
    ) == "['backupmx']"


def test_the_command_loads_twisted_only_to_probe() -> None:
    """``backupmx`` starts fast (bench/command_start.py): its parser, the decision and the
    checks load no Twisted; probing a primary does."""
    assert printed_by_fresh_python("import sys, backupmx.admin.main as m; m.build_parser(); "
                                   "print('twisted' in sys.modules)") == "False"


def test_the_command_points_into_admin() -> None:
    from importlib.metadata import entry_points
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")
               if e.name.startswith("backupmx")}
    assert scripts == {"backupmx": "backupmx.admin.main:main",
                       "backupmx-policyd": "backupmx.policyd.main:main",
                       "backupmx-milter": "backupmx.milter.main:main"}
