"""The layering rule (docs/architecture.md): ``core`` is plain Python over psycopg. Nothing
in it imports Dagster, apprise or the layers above it, so importing ``mv_orchestration`` or
``mv_orchestration.core`` never pulls them in."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mv_orchestration"
CORE_MODULES = sorted(
    "mv_orchestration.core" + ("" if p.stem == "__init__" else f".{p.stem}")
    for p in (PACKAGE / "core").glob("*.py")
)
# Import names a core module may not use, and why.
FORBIDDEN = {
    "dagster": "the orchestrator belongs in lib/",
    "apprise": "alert delivery belongs in lib/",
    "mv_orchestration.lib": "core sits below lib/",
    "mv_orchestration.cli": "core sits below the CLI",
    "mv_orchestration.demo": "core sits below the demo",
}


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports, at any depth (function bodies included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _forbidden(name: str) -> str | None:
    for prefix in FORBIDDEN:
        if name == prefix or name.startswith(prefix + "."):
            return prefix
    return None


@pytest.mark.parametrize("path", sorted((PACKAGE / "core").glob("*.py")), ids=lambda p: p.name)
def test_core_modules_import_nothing_from_above(path: Path) -> None:
    bad = {n: FORBIDDEN[p] for n in _imports(path) if (p := _forbidden(n))}
    assert not bad, f"{path.name} imports {bad}"


def test_the_forbidden_check_sees_a_nested_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f():\n    import dagster as dg\n    from mv_orchestration.lib import x\n"
    )
    assert {_forbidden(n) for n in _imports(sample)} == {"dagster", "mv_orchestration.lib"}


def test_importing_the_package_and_core_loads_neither_dagster_nor_apprise() -> None:
    modules = ["mv_orchestration", "mv_orchestration.errors", *CORE_MODULES]
    probe = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print(sorted(m for m in ('dagster', 'apprise') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
