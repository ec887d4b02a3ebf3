"""The import structure that docs/architecture.md describes, checked from the code's own imports.

Every import statement of the package and the components (module level and inside functions alike: a lazy import
is still a dependency) is read with ``ast``; each module belongs to one layer of ``LAYERS``; an import may point to the
same layer or a lower one, never higher; no two modules (and no two areas) import each other, directly or around a
circle; nothing edits ``sys.path``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Lowest first. An area is a top-level module of eqface (eqface.contract) or a sub-package (eqface.service), or
# "components". Keep in step with docs/architecture.md.
LAYERS: list[set[str]] = [
    {
        "eqface",
        "eqface.contract",
        "eqface.registry",
        "eqface.paths",
        "eqface.processes",
        "eqface.config",
        "eqface.aggregation",
    },
    {"eqface.eval", "eqface.losses", "eqface.models", "eqface.data"},
    {"eqface.train", "eqface.export"},
    {"eqface.byor", "eqface.serving", "eqface.service"},
    {"eqface.camera", "eqface.workflow"},
    {"eqface.stack", "components"},
    {"eqface.cli", "eqface.__main__"},
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted([*REPO_ROOT.glob("eqface/**/*.py"), *REPO_ROOT.glob("components/**/*.py")]):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _area(module: str) -> str:
    parts = module.split(".")
    return "components" if parts[0] == "components" else ".".join(parts[:2])


def _layer(area: str) -> int:
    for index, layer in enumerate(LAYERS):
        if area in layer:
            return index
    raise AssertionError(f"{area} is in no layer of LAYERS: add it (and to docs/architecture.md)")


def _imported(module: str, path: Path) -> set[str]:
    """Modules of this tree that ``module`` imports (the longest known prefix of each imported name)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names += [stem] + [f"{stem}.{alias.name}" for alias in node.names]
    targets = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module:
            targets.add(name)
    return targets


GRAPH = {module: _imported(module, path) for module, path in MODULES.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        circles.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return circles


def test_the_package_is_read() -> None:
    assert len(MODULES) > 100 and "eqface.contract" in MODULES and "components.pipeline" in MODULES
    assert "eqface.contract" in GRAPH["eqface.service.config"] or GRAPH["eqface.service.config"], "imports not read"


def test_every_area_has_a_layer() -> None:
    for module in MODULES:
        _layer(_area(module))


def test_no_import_points_upward() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if _layer(_area(target)) > _layer(_area(module))
    ]
    assert not upward, "imports that point to a higher layer:\n" + "\n".join(sorted(upward))


def test_no_module_circles() -> None:
    assert not _circles(GRAPH), f"modules that import each other: {_circles(GRAPH)}"


def test_no_area_circles() -> None:
    areas: dict[str, set[str]] = defaultdict(set)
    for module, targets in GRAPH.items():
        areas[_area(module)] |= {_area(t) for t in targets} - {_area(module)}
    assert not _circles(areas), f"areas that import each other: {_circles(areas)}"


@pytest.mark.parametrize("folder", ["eqface", "components", "bench", "experiments", "tests", "serving", "scripts"])
def test_nothing_edits_sys_path(folder: str) -> None:
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for path in (REPO_ROOT / folder).rglob("*.py")
        if "sys.path.insert" in path.read_text() or "sys.path.append" in path.read_text()
    ]
    offenders = [o for o in offenders if o != "tests/test_architecture.py"]
    assert not offenders, f"sys.path edits (install the package instead): {offenders}"
