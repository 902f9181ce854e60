"""The import graph of carto_assets and carto_viz: its cycles and its imports up the layers.

Prints, from the source as it is (imports at module level and inside functions alike), every
group of modules that import each other, every import of a module in a higher layer (the
layers declared in tests/test_import_layers.py) and every module no layer holds, then the
counts. The same logic as the test (tests/import_graph.py), so before and after compare.

Usage::

    python benchmarks/imports.py [ROOT]

``ROOT``: the checkout to read (default: this one), e.g. a checkout of an older commit.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import import_graph as graph
from test_import_layers import LAYERS


def main(root: Path) -> None:
    edges = graph.imports(root)
    cycles = graph.cycles(edges)
    upward = graph.upward(edges, LAYERS)
    unplaced = graph.unplaced(LAYERS, root)
    print(f"{root}: {len(graph.modules(root))} modules, {len(edges)} imports")
    for group in cycles:
        print(f"cycle: {graph.describe_cycle(group, edges)}")
    for edge in upward:
        print(f"upward: {graph.describe(edge)}")
    for name in unplaced:
        print(f"in no layer: {name}")
    print(
        f"cycles: {len(cycles)}  upward imports: {len(upward)}  modules in no layer: "
        f"{len(unplaced)}"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else graph.ROOT)
