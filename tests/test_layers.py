"""Imports point one way (DESIGN.md §5): a module imports only modules of a lower layer, click
lives only in the CLI, and nothing below the CLI prints."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "streamsgd"
LAYERS = {
    "errors": 0, "config": 0.5,
    "shuffle": 1, "prefetch": 1, "kernels": 1, "fill": 1, "metrics": 1,
    "sources.fs": 1.7, "sources.retry": 1.6, "sources.cast": 1.6, "sources.columns": 1.6, "sources.arrays": 1.8, "sources.parquet": 1.8, "sources.zarr": 1.8, "sources": 1.9, "sources.subset": 1.95, "sources.labels": 1.85, "optim": 2, "model": 2, "windows": 2.5, "stats": 2.7, "stream": 2.8, "loop": 2.5,
    "noise": 1, "lock": 1, "logs": 1, "jobconfig": 0.7, "plot": 2.1, "checkpoint": 2.2,
    "classes": 2.75, "train": 3, "apply": 3, "generate": 3, "info": 3.5, "tune": 3.5, "api": 3.6, "estimators": 3.7, "job": 3.8,
    "guard": 2.75, "convert": 3, "show": 3.5,
    "cli": 4, "__init__": 5, "__main__": 5,
}


MODULES = sorted(PACKAGE.rglob("*.py"))


def module_name(path):
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports(path):
    """Names (as in LAYERS) of the package modules ``path`` imports; '!name' for others."""
    package = module_name(path).split(".")[:-1] if path.name != "__init__.py" else module_name(path).split(".")
    if path.parent == PACKAGE:
        package = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                yield ".".join(base + [node.module.split(".")[0]])
            else:  # "from . import __version__": a constant of the package's __init__
                yield None
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield "!" + alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield "!" + node.module.split(".")[0]


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_imports_point_down(path):
    me = module_name(path)
    assert me in LAYERS, f"give {me} a layer in this test"
    for name in imports(path):
        if name and name.startswith("!"):
            assert name != "!click" or me == "cli", f"{me} imports click"
            continue
        if name is None:  # "from . import __version__", or a subpackage's own __init__
            continue
        assert LAYERS[name] < LAYERS[me], f"{me} imports {name}, a layer above or beside it"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_nothing_below_the_cli_prints(path):
    if module_name(path) in ("cli", "__main__"):
        return
    calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)]
    assert not [c for c in calls if isinstance(c.func, ast.Name) and c.func.id == "print"]
