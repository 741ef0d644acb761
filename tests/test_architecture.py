"""The floor plan holds: layers only point down and no packages import each other (pyproject's
[tool.importlinter] contract, run as `lint-imports` would be, so `pytest` enforces it), and the
package type-checks clean under mypy (pyproject's [tool.mypy]) — docs/architecture.md."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = ("import sys; from importlinter.cli import lint_imports_command; "
        "sys.argv[0] = 'lint-imports'; sys.exit(lint_imports_command())")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` over the fluxstream package under ``root`` with ``root``'s pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", LINT, "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_layers_only_point_down_and_packages_have_no_cycles() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Layers only point down KEPT" in result.stdout
    assert "No cycles between packages KEPT" in result.stdout


def test_contract_breaks_on_an_upward_import(tmp_path: Path) -> None:
    """The contract is not vacuous: one import of the worker from the floor breaks both rules."""
    shutil.copytree(ROOT / "fluxstream", tmp_path / "fluxstream", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    settings = tmp_path / "fluxstream" / "core" / "settings.py"
    settings.write_text(settings.read_text() + "\nimport fluxstream.streams.app  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Layers only point down BROKEN" in result.stdout
    assert "fluxstream.core is not allowed to import fluxstream.streams" in result.stdout
    assert "No cycles between packages BROKEN" in result.stdout


def test_contract_ignores_no_import() -> None:
    """Every layer violation was fixed, not excused: the contracts list no ignored imports."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert [c["name"] for c in contracts if c.get("ignore_imports")] == []


def test_the_package_type_checks_clean(tmp_path: Path) -> None:
    """mypy over fluxstream with pyproject's settings: CI runs the type checker through pytest."""
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout
