"""Imports point one way (DESIGN.md §5): each folder imports only the folders its rule names,
click lives only in the CLI, and nothing below the CLI prints."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "streamsgd"

#: Folder (or top-level module) -> the folders it may import besides itself (DESIGN.md §5).
#: Data flows one way: sources -> plan -> pipeline -> compute -> train -> persist/run -> tools,
#: with ``api`` and ``cli`` as the two doors. ``persist`` and ``compute`` sit low: they know
#: files and numbers, not runs.
BASE = {"errors", "config", "hints"}  # hints: a compiled prefetch, a leaf that imports nothing of ours
RULES = {
    "errors": set(),
    "config": {"errors"},
    "hints": set(),
    "sources": BASE,
    "plan": BASE,
    "compute": BASE,
    "persist": BASE | {"sources"},  # sources.fs: the one fsspec layer, for remote model files
    "pipeline": BASE | {"sources", "plan"},
    "train": BASE | {"sources", "plan", "pipeline", "compute", "persist"},
}
RULES["run"] = RULES["train"] | {"train"}
RULES["tools"] = RULES["train"] | {"train"}
RULES["api"] = RULES["train"] | {"train", "integrations"}  # integrations.dask, imported on use: workers=, scheduler=
RULES["integrations"] = RULES["api"] | {"api"}
RULES["cli"] = RULES["integrations"] | {"integrations", "run", "tools"}  # integrations.dask: --workers, --scheduler
RULES["__init__"] = set()  # imports on first use only, by name (see streamsgd/__init__.py)
RULES["__main__"] = {"cli"}
RULES["torch"] = {"integrations"}  # the door of the [torch] extra: streamsgd.torch.StreamDataset


def folder(module):
    """The folder (``sources``, ``train``, …) or top-level module a dotted module name lives in."""
    return module.split(".")[0] if module else "__init__"


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
    mine = folder(me)
    assert mine in RULES, f"give the folder of {me} a rule in this test"
    for name in imports(path):
        if name and name.startswith("!"):
            assert name != "!click" or me == "cli", f"{me} imports click"
            continue
        if name is None:  # "from . import __version__", or a subpackage's own __init__
            continue
        theirs = folder(name)
        assert theirs == mine or theirs in RULES[mine], f"{me} imports {name}: {mine}/ may not import {theirs}/"


def test_every_folder_has_a_rule():
    """A new folder must say what it may import before anything lands in it."""
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert folders | modules == set(RULES)


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_nothing_below_the_cli_prints(path):
    if module_name(path) in ("cli", "__main__"):
        return
    calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)]
    assert not [c for c in calls if isinstance(c.func, ast.Name) and c.func.id == "print"]
