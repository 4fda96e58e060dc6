"""Imports flow one way (docs/architecture.md): every package of ``diffuseg`` imports only its own
modules and the packages of lower layers, no module takes part in an import circle (imports
inside functions count), and neither do the benchmark scripts."""

from __future__ import annotations

import ast
from pathlib import Path

import diffuseg

SRC = Path(diffuseg.__file__).resolve().parent
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
# lowest first; a package may import the packages of its own or a lower layer
LAYERS: list[set[str]] = [
    {"__init__", "errors"},
    {"core"},
    {"config"},
    {"processes", "networks", "metrics", "io"},
    {"sampling", "data"},
    {"methods"},
    {"run"},
    {"pretrained"},
    {"inference"},
    {"synthesis"},
    {"training", "evaluation", "review"},
    {"service"},
    {"demo"},
    {"cli"},
    {"__main__"},
]
LAYER_OF = {name: k for k, layer in enumerate(LAYERS) for name in layer}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path, known: set[str], prefix: str = "diffuseg") -> set[str]:
    """Modules of ``known`` that ``path`` imports anywhere in it (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known and (n.startswith(prefix) or not prefix)}
    return found


def graph_of_src() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in SRC.rglob("*.py")}
    known = set(paths)
    return {m: imports(p, known) - {m} for m, p in paths.items()}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (a list of nodes, the first repeated last), or None."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_every_package_has_a_layer():
    packages = {package_of(m) for m in graph_of_src()}
    assert packages <= set(LAYER_OF), f"add {sorted(packages - set(LAYER_OF))} to LAYERS"


def test_no_package_imports_a_higher_layer():
    upward = sorted(f"{a} -> {b}" for a, targets in graph_of_src().items() for b in targets
                    if LAYER_OF[package_of(b)] > LAYER_OF[package_of(a)])
    assert upward == []


def test_no_import_circle_in_the_package():
    # a package's __init__ that imports its own modules is not a circle unless they import it back
    assert cycle(graph_of_src()) is None


def test_no_import_circle_among_the_benchmarks():
    scripts = {p.stem: p for p in BENCHMARKS.glob("*.py")}
    graph = {name: imports(p, set(scripts), prefix="") - {name} for name, p in scripts.items()}
    assert cycle(graph) is None


def test_the_circle_finder_finds_a_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
