# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""The import graph of monai_sacb.data: no circle inside it, and nothing from transforms, networks or apps."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "monai_sacb" / "data"
MODULES = ["ixi", "datalists", "folder", "learn2reg", "lpba40", "pairing", "utils"]

# In a fresh interpreter, for each order: forget every monai_sacb module, import, record what got loaded.
# (monai itself stays loaded between orders: it is the slow part and not under test.)
_SCRIPT = """
import importlib, json, sys
result = []
for order in json.loads(sys.argv[1]):
    for name in [m for m in sys.modules if m.startswith("monai_sacb")]:
        del sys.modules[name]
    for module in order:
        importlib.import_module(module)
    result.append(sorted(m for m in sys.modules if m.startswith("monai_sacb")))
print(json.dumps(result))
"""


def _loaded_after(orders: list[list[str]]) -> list[list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(orders)], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_data_imports_no_transforms_networks_or_apps_and_no_circle():
    # a circular import fails only when its modules load in one order: start from each module in turn
    orders = [["monai_sacb.data"]] + [
        [f"monai_sacb.data.{first}"] + [f"monai_sacb.data.{m}" for m in MODULES if m != first] for first in MODULES
    ]
    for loaded in _loaded_after(orders):
        assert {f"monai_sacb.data.{m}" for m in MODULES} <= set(loaded)
        outside = ("monai_sacb.transforms", "monai_sacb.networks", "monai_sacb.apps")
        assert not [m for m in loaded if m.startswith(outside)]


def _imports(path: Path) -> set[str]:
    """Every monai_sacb module that ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom):  # relative: only the package's __init__ uses them
            found.add(f"monai_sacb.data.{node.module}" if node.module else "monai_sacb.data")
    return {name for name in found if name.startswith("monai_sacb")}


def test_no_import_of_transforms_networks_or_apps_anywhere_in_the_code():
    """Imports inside functions too: a deferred import is still a dependency."""
    for path in PACKAGE.glob("*.py"):
        outside = [m for m in _imports(path) if not m.startswith("monai_sacb.data")]
        assert outside == [], f"{path.name} imports {outside}"


def test_modules_import_each_other_without_a_circle():
    graph = {path.stem: {m.rsplit(".", 1)[-1] for m in _imports(path)} - {"data"} for path in PACKAGE.glob("*.py")}
    graph.pop("__init__")

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(n == target or (n not in seen and reaches(n, target, seen | {n})) for n in graph.get(start, ()))

    assert [m for m in graph if reaches(m, m, {m})] == []
