"""The project's import graph, read from the source with :mod:`ast` (nothing is imported).

Every ``import`` and ``from ... import`` counts, at module level, inside functions and under
``TYPE_CHECKING`` alike: an import inside a function is still a dependency, only a later one.
An edge goes from a module to the most specific module it names (``from carto_viz import
images`` -> ``carto_viz.explained_images``; ``from carto_assets.schema import PREDICTION`` ->
``carto_assets.schema``); the parent packages that Python initialises on the way are not edges.

Used by tests/test_import_layers.py (which declares the layers) and benchmarks/imports.py.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("carto_assets", "carto_viz")


@dataclass(frozen=True)
class Import:
    """``source`` imports ``target`` at ``line`` (``target`` may be outside the project)."""

    source: str
    target: str
    line: int


def modules(root: Path = ROOT, packages: Sequence[str] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``packages`` (a package is its
    ``__init__``)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _resolve(name: str, known: Mapping[str, Path]) -> str:
    """The longest prefix of ``name`` that is a known module, else ``name``'s top package."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        candidate = ".".join(parts[:k])
        if candidate in known:
            return candidate
    return parts[0]


def imports(root: Path = ROOT, packages: Sequence[str] = PACKAGES) -> list[Import]:
    """Every import statement of every module of ``packages``, resolved to a module."""
    found = modules(root, packages)
    out = []
    for name, path in found.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, up level - 1
                    here = name.split(".") if is_package else name.split(".")[:-1]
                    here = here[: len(here) - (node.level - 1)]
                    base = ".".join([*here, base] if base else here)
                # ``from package import module`` names the module; else the names are objects.
                targets = [f"{base}.{alias.name}" for alias in node.names]
                targets = [t if t in found else base for t in targets]
            else:
                continue
            for target in targets:
                resolved = _resolve(target, found)
                if resolved != name:
                    out.append(Import(name, resolved, node.lineno))
    return sorted(set(out), key=lambda i: (i.source, i.line, i.target))


def cycles(edges: Iterable[Import]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others (the strongly
    connected components of two or more modules, by Tarjan's algorithm), each sorted."""
    graph = _graph(edges)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(groups)


def _graph(edges: Iterable[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    return graph


def describe_cycle(group: list[str], edges: Iterable[Import]) -> str:
    """The group and one shortest cycle through its first module, with the lines:
    ``a, b, c: a:20 -> b:235 -> a``."""
    edges = list(edges)
    lines = {(e.source, e.target): e.line for e in edges}
    graph = _graph(edges)
    start, members = group[0], set(group)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    path = [*reversed(path), start]
                    steps = [f"{a}:{lines[a, b]}" for a, b in itertools.pairwise(path)]
                    return f"{', '.join(group)}: {' -> '.join([*steps, start])}"
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {group}")


def layer_of(module: str, layers: Sequence[Sequence[str]]) -> int | None:
    """The index of the layer whose most specific prefix matches ``module`` (None: no layer).

    A prefix matches the module itself and everything under it (``carto_assets.core`` matches
    ``carto_assets.core.similarity.minhash``, not ``carto_assets.corex``).
    """
    best: tuple[int, int] | None = None
    for level, prefixes in enumerate(layers):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), level)
    return None if best is None else best[1]


def upward(edges: Iterable[Import], layers: Sequence[Sequence[str]]) -> list[Import]:
    """The imports from a module to one in a higher layer (modules outside every layer, such
    as third-party packages, are not judged here)."""
    out = []
    for edge in edges:
        source, target = layer_of(edge.source, layers), layer_of(edge.target, layers)
        if source is not None and target is not None and target > source:
            out.append(edge)
    return out


def unplaced(
    layers: Sequence[Sequence[str]], root: Path = ROOT, packages: Sequence[str] = PACKAGES
) -> list[str]:
    """The modules that no layer's prefix matches, but for packages whose ``__init__`` imports
    nothing (a docstring at most: there is nothing to judge)."""
    found = modules(root, packages)
    sources = {edge.source for edge in imports(root, packages)}
    return sorted(
        name
        for name, path in found.items()
        if layer_of(name, layers) is None and (path.name != "__init__.py" or name in sources)
    )


def importers(edges: Iterable[Import], prefix: str, target: str) -> list[Import]:
    """The imports of ``target`` (or anything under it) by modules under ``prefix``."""
    return [
        e
        for e in edges
        if (e.source == prefix or e.source.startswith(prefix + "."))
        and (e.target == target or e.target.startswith(target + "."))
    ]


def describe(edge: Import) -> str:
    """``carto_viz.compare_page:32 -> carto_assets.core.comparison.concepts``."""
    return f"{edge.source}:{edge.line} -> {edge.target}"
