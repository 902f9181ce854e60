"""Reference implementation of the Graph View layout: plain Python loops over rows.

:func:`carto_viz.data.graph_records` computes the same with polars joins; the tests compare
the two on synthetic studies.
"""

from __future__ import annotations

import itertools

import polars as pl

from carto_assets.schema import PREDICTION_CLUSTER
from carto_viz.data import bar_list, short_label


def cascades(table: pl.DataFrame) -> dict[tuple[int, int], tuple[set[int], set[str]]]:
    """Per (class, root): the clusters of its cascade and its edges ``"lower-upper"``."""
    out: dict[tuple[int, int], tuple[set[int], set[str]]] = {}
    chains = table.sort("label", "root_cluster", "direction", "depth").group_by(
        ["label", "root_cluster", "direction"], maintain_order=True
    )
    for (label, root, direction), chain in chains:
        path = [int(root), *(int(c) for c in chain["member_cluster"])]
        members, edges = out.setdefault((int(label), int(root)), (set(), set()))
        members.update(path)
        for lower, upper in itertools.pairwise(path):
            if direction == "down":
                lower, upper = upper, lower
            edges.add(f"{lower}-{upper}")
    return out


def _cascade_fields(chains, label: int, cluster: int) -> dict[str, str]:
    members, edges = chains.get((label, cluster), ({cluster}, set()))
    return {
        "cascade": bar_list(sorted(members)),
        "cascade_edges": "|" + "".join(f"{e}|" for e in sorted(edges)),
    }


def graph_nodes_and_edges(
    tables, cascade_table: pl.DataFrame
) -> tuple[dict[int, list[dict]], dict[int, list[dict]]]:
    """Per class: node records and edge records, as the Graph View draws them (cascades from
    every depth of ``concept_cascades``)."""
    nodes = tables["concept_graph_nodes"]
    edges = tables["concept_graph_edges"]
    chains = cascades(cascade_table)
    sizes = dict(tables["clusters"].select("cluster_id", "size").iter_rows())
    labels = dict(tables["clusters"].select("cluster_id", "label").iter_rows())
    names = dict(tables["images"].select("label", "label_name").iter_rows())
    importance = {
        (int(lab), int(nid)): float(score)
        for lab, nid, score in tables["concept_graph_units"]
        .select("label", "neuron_id", "score")
        .iter_rows()
    }
    members: dict[int, list[int]] = {}
    for nid, cid in tables["neuron_clusters"].select("neuron_id", "cluster_id").iter_rows():
        members.setdefault(int(cid), []).append(int(nid))
    patched = set(tables["example_patches"].filter(pl.col("rank") == 1)["neuron_id"].to_list())
    top_row = int(tables["neurons"]["layer_index"].max()) + 1
    kind_of = {
        layer: kind
        for layer, kind in tables["neurons"].select("layer", "kind").unique().iter_rows()
    }

    out_nodes: dict[int, list[dict]] = {}
    position: dict[tuple[int, int], tuple[float, int]] = {}
    strength: dict[tuple[int, int], float] = {}
    for label in sorted(nodes["label"].unique().to_list()):
        mine = nodes.filter(pl.col("label") == label)
        max_imp = float(mine["importance"].max())
        for layer_index in sorted(mine["layer_index"].unique().to_list()):
            row_nodes = sorted(
                mine.filter(pl.col("layer_index") == layer_index).iter_rows(named=True),
                key=lambda r: (-r["importance"], r["cluster_id"]),
            )
            for i, row in enumerate(row_nodes):
                cid = int(row["cluster_id"])
                scored = [
                    (importance[(label, n)], n) for n in members[cid] if (label, n) in importance
                ]
                best = min(scored, key=lambda t: (-t[0], t[1]))[1] if scored else min(members[cid])
                col = i - (len(row_nodes) - 1) / 2
                position[(label, cid)] = (col, int(layer_index))
                strength[(label, cid)] = row["importance"] / max_imp if max_imp > 0 else 1.0
                out_nodes.setdefault(label, []).append(
                    {
                        "cluster_id": cid,
                        "kind": kind_of[row["layer"]],
                        "row": int(layer_index),
                        "col": col,
                        "strength": strength[(label, cid)],
                        "size": int(sizes[cid]),
                        "short": short_label(labels[cid]),
                        **_cascade_fields(chains, label, cid),
                        "patch": best if best in patched else None,
                    }
                )
        key = (label, PREDICTION_CLUSTER)
        position[key] = (0.0, top_row)
        strength[key] = 1.0
        out_nodes[label].append(
            {
                "cluster_id": PREDICTION_CLUSTER,
                "kind": "prediction",
                "row": top_row,
                "col": 0.0,
                "strength": 1.0,
                "size": 0,
                "short": str(names[label]),
                **_cascade_fields(chains, label, PREDICTION_CLUSTER),
                "patch": "the class's top patch, below",
            }
        )
    out_edges: dict[int, list[dict]] = {}
    for row in edges.iter_rows(named=True):
        label = int(row["label"])
        source = (label, int(row["source_cluster"]))
        target = (
            label,
            PREDICTION_CLUSTER
            if row["target_layer"] == "prediction"
            else int(row["target_cluster"]),
        )
        if source not in position or target not in position:
            continue
        top = float(edges.filter(pl.col("label") == label)["weight"].max())
        out_edges.setdefault(label, []).append(
            {
                "source_cluster": source[1],
                "target_cluster": target[1],
                "col": position[source][0],
                "row": position[source][1],
                "col2": position[target][0],
                "row2": position[target][1],
                "weight_rel": row["weight"] / top if top > 0 else 0.0,
                "min_strength": min(strength[source], strength[target]),
            }
        )
    # The prediction node pictures the class: the source of its strongest prediction edge,
    # else the most important pictured node of the highest row.
    for label, records in out_nodes.items():
        pictured = [n for n in records if n["cluster_id"] >= 0 and n["patch"] is not None]
        patch_of = {n["cluster_id"]: n["patch"] for n in pictured}
        into = [
            e
            for e in edges.filter(pl.col("label") == label).iter_rows(named=True)
            if e["target_layer"] == "prediction" and e["source_cluster"] in patch_of
        ]
        best = None
        if into:
            best = patch_of[
                min(into, key=lambda e: (-e["weight"], e["source_cluster"]))["source_cluster"]
            ]
        elif pictured:
            imp = {
                int(c): float(i)
                for c, i in nodes.filter(pl.col("label") == label)
                .select("cluster_id", "importance")
                .iter_rows()
            }
            top = min(pictured, key=lambda n: (-n["row"], -imp[n["cluster_id"]], n["cluster_id"]))
            best = top["patch"]
        records[-1]["patch"] = best
    return out_nodes, out_edges
