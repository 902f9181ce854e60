"""Concept cascades: from each concept, the chain of strongest links down and up the graph.

The concept graph's edges come from :func:`carto_assets.core.attribution.influence.influence_edges`;
a cascade follows, from one node, the strongest positive edge into it (toward the input) and out of
it (toward the prediction), step by step. The view highlights these chains. In a graph with
dictionary features beside channels, a cascade stays in its root's chain of layers (channels or
features), so the channels' cascades are those of the graph without features.

This module never imports dagster.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from carto_assets.core.attribution.influence import InfluenceResult, read_edges
from carto_assets.schema import PREDICTION, PREDICTION_CLUSTER


def concept_cascades(
    nodes: Iterable[tuple[str, int]] | Mapping[str, Sequence[Any]],
    edges: InfluenceResult | Mapping[str, Any],
    chains: Mapping[str, Hashable] | None = None,
) -> dict[str, np.ndarray]:
    """From every node, the chain of strongest links toward the input and toward the prediction.

    Downward, each step moves to the source of the strongest positive edge into the current
    node; upward, to the target of the strongest positive edge out of it (the prediction ends
    an upward chain). It is a single chain per direction (one argmax per step), not a tree:
    the view highlights one path, and a tree of top-m links grows exponentially with depth.
    Only edges between given nodes (and into the prediction) are followed. Ties go to the
    smaller (layer name, cluster id); a node is never visited twice.

    With ``chains``, a cascade only follows links to layers of its root's chain (and to the
    prediction, which ends every chain): in a graph whose channel layers and feature layers
    form two chains with links between them, a channel's cascade stays among channels and a
    feature's among features.

    Parameters
    ----------
    nodes
        (layer, cluster) pairs, or a mapping with ``layer`` and ``cluster`` columns.
    edges
        An :class:`InfluenceResult` or a mapping with its edge columns.
    chains
        Layer -> chain id, for every node's layer; None: all layers form one chain.

    Returns
    -------
    dict of arrays
        ``root_layer``, ``root_cluster``, ``member_layer``, ``member_cluster``, ``depth``
        (1 for the root's direct neighbour; the root itself is not listed), ``direction``
        (``"down"`` or ``"up"``) and ``weight`` (of the link that reached the member), ordered
        by root (as given), direction (down first) and depth.
    """
    if isinstance(nodes, Mapping):
        if "layer" not in nodes or "cluster" not in nodes:
            raise ValueError("nodes mapping needs 'layer' and 'cluster' columns")
        node_list = [(str(a), int(b)) for a, b in zip(nodes["layer"], nodes["cluster"])]
    else:
        node_list = [(str(a), int(b)) for a, b in nodes]
    allowed = set(node_list) | {(PREDICTION, PREDICTION_CLUSTER)}
    if chains is not None:
        unchained = sorted({layer for layer, _ in node_list} - set(chains))
        if unchained:
            raise ValueError(f"chains has no entry for the nodes' layer(s) {unchained}")

    def chain(layer: str) -> Hashable:
        return None if chains is None or layer == PREDICTION else chains[layer]

    table = read_edges(edges)
    incoming: dict[tuple[str, int], list[tuple[float, str, int]]] = {}
    outgoing: dict[tuple[str, int], list[tuple[float, str, int]]] = {}
    for sl, sc, tl, tc, w in zip(
        table["source_layer"],
        table["source_cluster"],
        table["target_layer"],
        table["target_cluster"],
        table["weight"],
    ):
        s, t = (str(sl), int(sc)), (str(tl), int(tc))
        if not w > 0 or s not in allowed or t not in allowed:
            continue
        incoming.setdefault(t, []).append((-float(w), *s))
        outgoing.setdefault(s, []).append((-float(w), *t))
    for links in (incoming, outgoing):
        for key in links:
            links[key].sort()

    cols: dict[str, list] = {
        k: []
        for k in (
            "root_layer",
            "root_cluster",
            "member_layer",
            "member_cluster",
            "depth",
            "direction",
            "weight",
        )
    }
    for root in node_list:
        own = chain(root[0])
        for direction, links in (("down", incoming), ("up", outgoing)):
            seen = {root}
            current = root
            depth = 0
            while True:
                step = next(
                    (
                        c
                        for c in links.get(current, ())
                        if (c[1], c[2]) not in seen and chain(c[1]) in (own, None)
                    ),
                    None,
                )
                if step is None:
                    break
                current = (step[1], step[2])
                seen.add(current)
                depth += 1
                cols["root_layer"].append(root[0])
                cols["root_cluster"].append(root[1])
                cols["member_layer"].append(current[0])
                cols["member_cluster"].append(current[1])
                cols["depth"].append(depth)
                cols["direction"].append(direction)
                cols["weight"].append(-step[0])
    return {
        "root_layer": np.asarray(cols["root_layer"], dtype=object),
        "root_cluster": np.asarray(cols["root_cluster"], dtype=np.int64),
        "member_layer": np.asarray(cols["member_layer"], dtype=object),
        "member_cluster": np.asarray(cols["member_cluster"], dtype=np.int64),
        "depth": np.asarray(cols["depth"], dtype=np.int64),
        "direction": np.asarray(cols["direction"], dtype=object),
        "weight": np.asarray(cols["weight"], dtype=np.float64),
    }
