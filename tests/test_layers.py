"""Imports point one way (DESIGN.md §5): a module imports only modules of a lower layer, click
lives only in the CLI, and nothing below the CLI prints."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "streamsgd"
LAYERS = {
    "errors": 0, "config": 0.5,
    "shuffle": 1, "prefetch": 1, "kernels": 1, "metrics": 1,
    "sources": 2, "optim": 2, "model": 2, "windows": 2.5, "stats": 2.7, "batches": 2.8,
    "train": 3, "apply": 3, "generate": 3, "info": 3.5,
    "cli": 4, "__init__": 5, "__main__": 5,
}


def imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            yield node.module.split(".")[0] if node.module else None
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield "!" + alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield "!" + node.module.split(".")[0]


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.stem)
def test_imports_point_down(path):
    assert path.stem in LAYERS, f"give {path.stem} a layer in this test"
    for name in imports(path):
        if name and name.startswith("!"):
            assert name != "!click" or path.stem == "cli", f"{path.stem} imports click"
            continue
        if name is None:  # "from . import __version__"
            continue
        assert LAYERS[name] < LAYERS[path.stem], f"{path.stem} imports {name}, a layer above or beside it"


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.stem)
def test_nothing_below_the_cli_prints(path):
    if path.stem in ("cli", "__main__"):
        return
    calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)]
    assert not [c for c in calls if isinstance(c.func, ast.Name) and c.func.id == "print"]
