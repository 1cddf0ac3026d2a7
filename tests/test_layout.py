# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""The package's layering, read from its source: which subpackage may import which (docs/architecture.md), and no
import cycle between modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "monai_sacb"

# a subpackage may import itself and these; the bundle configs and benchmarks sit above all of them
ALLOWED = {
    "networks": set(),
    "losses": {"networks"},
    "metrics": set(),
    "data": set(),
    "transforms": {"networks", "data"},
    "apps": {"data", "transforms"},
    "inferers": {"networks", "losses"},
    "engines": set(),
    "utils": set(),
    "visualize": {"metrics", "data"},
    "handlers": {"metrics", "visualize", "data"},
    # the command line sits on top, beside the bundle configs: it may import every subpackage
    "cli": {
        "networks", "losses", "metrics", "data", "transforms", "apps", "inferers", "engines", "visualize", "handlers",
        "utils",
    },
    "__main__": {"cli"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """``monai_sacb`` modules imported by the file at ``path`` (absolute and relative imports, any depth)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("monai_sacb"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("monai_sacb"):
                found.add(target)
    return found


def _modules() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_subpackage_is_in_the_layer_table():
    found = {_subpackage(m) for m in _modules()} - {None}
    assert found == set(ALLOWED), f"update ALLOWED and docs/architecture.md: {sorted(found ^ set(ALLOWED))}"


def test_imports_point_down_the_layers():
    wrong = []
    for module, imports in _modules().items():
        source = _subpackage(module)
        for target in imports:
            dest = _subpackage(target)
            if source and dest and dest != source and dest not in ALLOWED[source]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layering of docs/architecture.md:\n" + "\n".join(wrong)


def test_no_import_cycle_between_modules():
    graph = _modules()
    modules = set(graph)

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: {t for t in map(resolve, imports) if t and t != m} for m, imports in graph.items()}
    # a package's __init__ importing its own modules is how packages are built, not a cycle
    edges = {m: {t for t in ts if not (t.startswith(m + ".") or m.startswith(t + "."))} for m, ts in edges.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_reader_sees_what_it_checks():
    imports = _imports(PACKAGE / "transforms" / "io.py")
    assert "monai_sacb.data.utils" in imports  # an absolute import
    assert "monai_sacb.transforms.check" in _imports(PACKAGE / "transforms" / "__init__.py")  # a relative one
