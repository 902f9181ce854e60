"""The import graph of carto_assets and carto_viz: no cycle, and no import up the layers.

Read from the source (tests/import_graph.py): imports at module level and inside functions
alike. ``python benchmarks/imports.py`` prints the same findings.
"""

from __future__ import annotations

from pathlib import Path

import import_graph as graph

#: The layers, lowest first: a module may import its own layer and those below, never above.
#: A module belongs to the layer of the longest prefix that matches it; a module no prefix
#: matches fails the test, so a new module must be placed here.
LAYERS: list[tuple[str, ...]] = [
    # foundations: argument checks, atomic files, partition keys, the tables' and the
    # configuration files' declarations, what a running process reads, reports and releases
    (
        "carto_assets.core.validate",
        "carto_assets.storage.atomic",
        "carto_assets.storage.sharding",
        "carto_assets.schema",
        "carto_assets.study",
        "carto_assets.runtime",
    ),
    # pure computation: no dagster, no store, no stage
    ("carto_assets.core",),
    # what a study points at (images) and where its results live (the store, its figures,
    # partition folders, cache fingerprints)
    ("carto_assets.sources", "carto_assets.storage"),
    # the views, built from the store's tables
    ("carto_viz",),
    # stage functions: read the prepared study, compute, return tables (no dagster)
    ("carto_assets.stages",),
    # Dagster itself, then the thin assets, resources and hooks
    ("dagster",),
    ("carto_assets.assets",),
    # the two code locations: the only wiring
    ("carto_assets.definitions", "carto_assets.comparison_definitions"),
    # the `carto` command
    ("carto_assets.cli",),
]


EDGES = graph.imports()


def test_the_import_graph_has_no_cycle() -> None:
    found = graph.cycles(EDGES)
    assert not found, "import cycles:\n" + "\n".join(graph.describe_cycle(g, EDGES) for g in found)


def test_every_module_is_placed_in_a_layer() -> None:
    assert graph.unplaced(LAYERS) == [], "add these modules' prefixes to LAYERS"


def test_no_module_imports_a_higher_layer() -> None:
    upward = graph.upward(EDGES, LAYERS)
    assert not upward, "imports up the layers:\n" + "\n".join(map(graph.describe, upward))


def test_core_and_the_views_never_import_dagster_and_core_no_stage() -> None:
    offending = [
        *graph.importers(EDGES, "carto_assets.core", "dagster"),
        *graph.importers(EDGES, "carto_assets.core", "carto_assets.stages"),
        *graph.importers(EDGES, "carto_viz", "dagster"),
    ]
    assert not offending, "\n".join(map(graph.describe, offending))


def test_the_graph_is_read_from_the_source() -> None:
    # A parser that found no edge would pass every test above.
    edges = {(e.source, e.target) for e in EDGES}
    assert ("carto_assets.stages.concept_graph", "carto_assets.core.attribution.influence") in edges
    assert ("carto_assets.definitions", "dagster") in edges
    assert len(graph.modules()) > 100


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_planted_cycle_and_upward_import_are_found(tmp_path: Path) -> None:
    # A cycle closed by an import inside a function, and a relative import up the layers.
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/low/__init__.py": "",
            "pkg/low/a.py": "from pkg.low import b\n",
            "pkg/low/b.py": "def f():\n    from pkg.low.c import g\n",
            "pkg/low/c.py": "import pkg.low.a\nfrom ..high import top\n",
            "pkg/high/h.py": "from pkg.low.a import x\n",
            "pkg/high/top.py": "",
            "pkg/loose.py": "",
        },
    )
    edges = graph.imports(tmp_path, ["pkg"])
    found = graph.cycles(edges)
    assert found == [["pkg.low.a", "pkg.low.b", "pkg.low.c"]]
    assert graph.describe_cycle(found[0], edges) == (
        "pkg.low.a, pkg.low.b, pkg.low.c: pkg.low.a:1 -> pkg.low.b:2 -> pkg.low.c:1 -> pkg.low.a"
    )
    layers = [("pkg.low",), ("pkg.high",)]
    assert [graph.describe(e) for e in graph.upward(edges, layers)] == [
        "pkg.low.c:2 -> pkg.high.top"
    ]
    assert graph.unplaced(layers, tmp_path, ["pkg"]) == ["pkg.loose"]
