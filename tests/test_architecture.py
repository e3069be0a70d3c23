"""The import rules of docs/architecture.md, checked on the source with ast.

Every import counts, including those inside functions (a lazy import is still a
dependency); imports under ``if TYPE_CHECKING:`` are exempt from the loop rule only.
MARSCONN_ARCH_ROOT may name another checkout's directory that holds ``marsconn/``
(used to show that these rules catch the loops of an older layout).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("MARSCONN_ARCH_ROOT", Path(__file__).resolve().parents[1]))
PACKAGE = ROOT / "marsconn"

HALVES = ("core", "plan", "wire", "run")
ENGINE = "marsconn.run.engine"


def _front_end(module: str) -> bool:
    """The front ends (cli, demo, probe...) are the modules directly in marsconn/."""
    return module.count(".") == 1


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    type_checking: bool

    def __str__(self) -> str:
        hint = " (TYPE_CHECKING)" if self.type_checking else ""
        return f"{self.source} -> {self.target} (line {self.line}){hint}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for inner in node.body:
                    lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def _edges(modules: dict[str, Path]) -> Iterator[Edge]:
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        guarded = _type_checking_lines(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                # "from . import audit" imports a module; "from .x import name" imports x.
                targets = [
                    f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
                    for alias in node.names
                ]
            for target in targets:
                if target.split(".")[0] == "marsconn" and target in modules and target != name:
                    yield Edge(name, target, node.lineno, node.lineno in guarded)


def _graph() -> tuple[dict[str, Path], list[Edge]]:
    modules = _modules()
    return modules, sorted(set(_edges(modules)), key=str)


def _cycles(nodes: list[str], edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    succ: dict[str, set[str]] = {n: set() for n in nodes}
    for edge in edges:
        succ[edge.source].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(succ[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in nodes:
        if node not in index:
            visit(node)
    return found


def _in(module: str, *areas: str) -> bool:
    return any(module == f"marsconn.{a}" or module.startswith(f"marsconn.{a}.") for a in areas)


def _broken(rule: str, edges: list[Edge]) -> str:
    return rule + ":\n  " + "\n  ".join(map(str, edges))


def test_the_halves_exist() -> None:
    missing = [h for h in HALVES if not (PACKAGE / h / "__init__.py").is_file()]
    assert not missing, f"marsconn has no sub-package {missing} (see docs/architecture.md)"


def test_no_import_cycles() -> None:
    modules, edges = _graph()
    runtime = [e for e in edges if not e.type_checking]
    cycles = _cycles(list(modules), runtime)
    shown = [
        " <-> ".join(c)
        + "\n    "
        + "\n    ".join(str(e) for e in runtime if {e.source, e.target} <= set(c))
        for c in cycles
    ]
    assert not cycles, "import loops:\n  " + "\n  ".join(shown)


def test_core_imports_nothing_outside_core() -> None:
    _, edges = _graph()
    bad = [e for e in edges if _in(e.source, "core") and not _in(e.target, "core")]
    assert not bad, _broken("core imports another part of marsconn", bad)


def test_plan_half_imports_only_core_and_plan() -> None:
    _, edges = _graph()
    bad = [e for e in edges if _in(e.source, "plan") and not _in(e.target, "core", "plan")]
    assert not bad, _broken("the plan half imports outside core and plan", bad)


def test_wire_imports_only_core() -> None:
    _, edges = _graph()
    bad = [e for e in edges if _in(e.source, "wire") and not _in(e.target, "core", "wire")]
    assert not bad, _broken("a wire state machine imports outside core", bad)


def test_only_front_ends_import_the_engine() -> None:
    # Transports (and everything else in run) make one attempt; only the engine walks servers.
    _, edges = _graph()
    bad = [
        e
        for e in edges
        if e.target == ENGINE
        and e.source != "marsconn"
        and not _front_end(e.source)
        and not _in(e.source, "testing")
    ]
    assert not bad, _broken("the engine is imported by", bad)


def test_run_imports_no_front_end_or_testing() -> None:
    _, edges = _graph()
    bad = [
        e
        for e in edges
        if _in(e.source, "run") and (_front_end(e.target) or _in(e.target, "testing"))
    ]
    assert not bad, _broken("the run half imports a front end or marsconn.testing", bad)


def test_nothing_imports_the_package_init() -> None:
    # The package __init__ is the lazy public API: code inside marsconn imports the module
    # that defines a name (marsconn.core.version for __version__), never the package.
    _, edges = _graph()
    bad = [e for e in edges if e.target == "marsconn"]
    assert not bad, _broken("imports of the package __init__", bad)


@pytest.mark.parametrize("area", HALVES)
def test_every_area_module_is_seen(area: str) -> None:
    # Guards the checks above against passing because they looked at nothing.
    modules = _modules()
    assert [m for m in modules if _in(m, area) and m != f"marsconn.{area}"], area
