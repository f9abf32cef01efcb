"""The pipeline flows one way: the import-linter contracts in pyproject.toml hold, and cover every module."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "mslesion"


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def top_level_modules() -> set[str]:
    names = {f"mslesion.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    return names | {f"mslesion.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}


def test_the_import_contracts_are_kept():
    # in a child process: import-linter configures logging with dictConfig, which disables every logger already made
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True, no_logo=True))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_module_has_a_layer():
    layers = next(c for c in contracts() if c["type"] == "layers")["layers"]
    layered = {name.strip() for layer in layers for name in layer.split("|")}
    assert top_level_modules() - layered == set(), "a new module needs its place in the layers contract"
    assert layered - top_level_modules() == set(), "the contract names a module that does not exist"


LIBRARY = sorted(p for p in PACKAGE.rglob("*.py")
                 if "cli" not in p.relative_to(PACKAGE).parts and p.name != "__main__.py")  # __main__ runs the CLI


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_code_never_imports_the_cli(path: Path):
    # independent of import-linter: also catches imports that only run inside functions
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert not node.module.startswith("mslesion.cli"), f"{path.name}:{node.lineno} imports {node.module}"
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("mslesion.cli") for a in node.names), f"{path.name}:{node.lineno}"
