"""Load the study's tables and shape them into the small datasets the linked views need.

Everything here is pure data work (DuckDB + polars); no charting and no Dagster.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

#: table -> the Dagster asset that writes it (named in error messages).
REQUIRED_TABLES: dict[str, str] = {
    "images": "images",
    "neurons": "top_images",
    "neuron_clusters": "neuron_clusters",
    "clusters": "neuron_clusters",
    "class_importance": "class_importance",
    "example_patches": "example_patches",
    "concept_graph_nodes": "concept_graph",
    "concept_graph_edges": "concept_graph",
    "concept_cascades": "concept_graph",
    "neuron_projection": "neuron_projection",
    "neuron_neighbors": "neuron_projection",
}

_QUERIES: dict[str, str] = {
    "images": "SELECT DISTINCT label, label_name FROM images ORDER BY label",
    "neurons": "SELECT neuron_id, layer, layer_index FROM neurons ORDER BY neuron_id",
    "neuron_clusters": "SELECT neuron_id, cluster_id FROM neuron_clusters",
    "clusters": "SELECT cluster_id, layer, size, label FROM clusters",
    "class_importance": "SELECT label, neuron_id, score FROM class_importance WHERE score > 0",
    "example_patches": "SELECT neuron_id, rank, png FROM example_patches ORDER BY neuron_id, rank",
    "concept_graph_nodes": "SELECT label, cluster_id, layer, layer_index, importance "
    "FROM concept_graph_nodes",
    "concept_graph_edges": "SELECT label, source_layer, source_cluster, target_layer, "
    "target_cluster, weight FROM concept_graph_edges",
    "concept_cascades": "SELECT label, root_cluster, member_cluster, depth, direction "
    "FROM concept_cascades",
    "neuron_projection": "SELECT neuron_id, x, y FROM neuron_projection",
    "neuron_neighbors": "SELECT neuron_id, rank, neighbor_id FROM neuron_neighbors",
}

#: cluster id of the single "prediction" node at the top of the graph.
PREDICTION_CLUSTER = -1


def load_tables(database_path: str | Path) -> dict[str, pl.DataFrame]:
    """Read every table the views need from a study database (read-only).

    Parameters
    ----------
    database_path
        Path of the study's DuckDB file.

    Returns
    -------
    dict
        Table name -> polars DataFrame with the columns the views use.

    Raises
    ------
    ValueError
        If the file or a table is missing; the message names the asset to materialize.
    """
    path = Path(database_path)
    if not path.is_file():
        raise ValueError(f"database {str(path)!r} does not exist; materialize the assets first")
    con = duckdb.connect(str(path), read_only=True)
    try:
        present = {
            row[0]
            for row in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
            ).fetchall()
        }
        check_tables(present)
        return {name: con.sql(query).pl() for name, query in _QUERIES.items()}
    finally:
        con.close()


def check_tables(present: set[str] | Mapping[str, object]) -> None:
    """Raise ``ValueError`` naming the assets to materialize when tables are missing."""
    missing = [table for table in REQUIRED_TABLES if table not in present]
    if missing:
        assets = sorted({REQUIRED_TABLES[table] for table in missing})
        raise ValueError(
            f"missing table(s) {', '.join(missing)}: materialize the asset(s) "
            f"{', '.join(assets)} first"
        )


def patch_key(neuron_id: int, rank: int) -> str:
    """Key of one patch image in the ``patches`` dataset."""
    return f"{neuron_id}:{rank}"


def patch_bytes(patches: pl.DataFrame) -> int:
    """Total PNG bytes of the patches (what inlining them would cost before base64)."""
    if patches.height == 0:
        return 0
    return int(patches.select(pl.col("png").bin.size().sum()).item())


def png_data_url(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URL for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def patch_records(
    patches: pl.DataFrame, sidecar_dir: Path | None, relative_dir: str = "patches"
) -> list[dict]:
    """One record ``{key, neuron_id, rank, url}`` per patch, each image stored once.

    Parameters
    ----------
    patches
        ``example_patches`` rows (neuron_id, rank, png).
    sidecar_dir
        When given, PNGs are written there as ``<neuron>_<rank>.png`` and the URLs are
        relative (``patches/<neuron>_<rank>.png``); otherwise they are ``data:`` URLs.
    relative_dir
        The sidecar folder's path relative to the page.
    """
    records = []
    if sidecar_dir is not None:
        sidecar_dir.mkdir(parents=True, exist_ok=True)
    for neuron_id, rank, png in patches.select("neuron_id", "rank", "png").iter_rows():
        if sidecar_dir is not None:
            name = f"{int(neuron_id)}_{int(rank)}.png"
            (sidecar_dir / name).write_bytes(png)
            url = f"{relative_dir}/{name}"
        else:
            url = png_data_url(png)
        records.append(
            {
                "key": patch_key(neuron_id, rank),
                "neuron_id": int(neuron_id),
                "rank": int(rank),
                "url": url,
            }
        )
    return records


def _bar_list(values: list) -> str:
    """``[3, 7] -> "|3|7|"``: a membership string tested with ``indexof`` in Vega.

    An empty list gives ``"|"`` (never ``""``, which Vega-Lite may parse as null).
    """
    return "|" + "".join(f"{int(v)}|" for v in values)


@dataclass(frozen=True)
class ViewData:
    """The datasets of the page (records ready for JSON), and a few facts about them."""

    neurons: list[dict]
    graph_nodes: list[dict]
    graph_edges: list[dict]
    graph_rows: list[dict]
    classes: list[dict]
    layers: list[str]


def neuron_records(tables: Mapping[str, pl.DataFrame]) -> list[dict]:
    """One record per neuron: position, layer, cluster and its label, memberships.

    ``classes`` lists the classes the neuron matters to (``class_importance.score > 0`` or in
    one of the class's graph nodes); ``neighbor_of`` lists the neurons that have it among their
    nearest neighbours; ``patch`` is the key of its rank-1 patch (or null).
    """
    neurons = (
        tables["neurons"]
        .join(tables["neuron_projection"], on="neuron_id", how="inner")
        .join(tables["neuron_clusters"].select("neuron_id", "cluster_id"), on="neuron_id")
        .join(
            tables["clusters"].select("cluster_id", pl.col("label").alias("cluster_label")),
            on="cluster_id",
            how="left",
        )
    )
    by_score = tables["class_importance"].select("neuron_id", "label")
    by_node = (
        tables["concept_graph_nodes"]
        .select("label", "cluster_id")
        .join(tables["neuron_clusters"].select("neuron_id", "cluster_id"), on="cluster_id")
        .select("neuron_id", "label")
    )
    classes = (
        pl.concat([by_score, by_node.cast(by_score.schema)])
        .unique()
        .sort("label")
        .group_by("neuron_id")
        .agg(pl.col("label").alias("classes"))
    )
    neighbor_of = (
        tables["neuron_neighbors"]
        .sort("neuron_id")
        .group_by("neighbor_id")
        .agg(pl.col("neuron_id").alias("neighbor_of"))
        .rename({"neighbor_id": "neuron_id"})
    )
    has_patch = (
        tables["example_patches"]
        .filter(pl.col("rank") == pl.col("rank").min().over("neuron_id"))
        .select("neuron_id", pl.col("rank").alias("patch_rank"))
    )
    neurons = (
        neurons.join(classes, on="neuron_id", how="left")
        .join(neighbor_of, on="neuron_id", how="left")
        .join(has_patch, on="neuron_id", how="left")
        .sort("neuron_id")
    )
    records = []
    for row in neurons.iter_rows(named=True):
        records.append(
            {
                "neuron_id": int(row["neuron_id"]),
                "layer": row["layer"],
                "layer_index": int(row["layer_index"]),
                "cluster_id": int(row["cluster_id"]),
                "cluster_label": row["cluster_label"] or "",
                "x": float(row["x"]),
                "y": float(row["y"]),
                "classes": _bar_list(row["classes"] or []),
                "neighbor_of": _bar_list(row["neighbor_of"] or []),
                "patch": (
                    patch_key(row["neuron_id"], row["patch_rank"])
                    if row["patch_rank"] is not None
                    else None
                ),
            }
        )
    return records


def _cascade_sets(
    cascades: pl.DataFrame,
) -> tuple[dict[tuple[int, int], set[int]], dict[tuple[int, int, int], set[int]]]:
    """Which roots' cascades light up each node and each edge, per class.

    Returns ``(node_roots, edge_roots)`` keyed by ``(label, cluster)`` and
    ``(label, source, target)``; every node is in its own cascade.
    """
    node_roots: dict[tuple[int, int], set[int]] = {}
    edge_roots: dict[tuple[int, int, int], set[int]] = {}
    chains = cascades.sort("label", "root_cluster", "direction", "depth").group_by(
        ["label", "root_cluster", "direction"], maintain_order=True
    )
    for (label, root, direction), chain in chains:
        path = [int(root), *(int(c) for c in chain["member_cluster"])]
        for member in path:
            node_roots.setdefault((int(label), member), set()).add(int(root))
        for lower, upper in itertools.pairwise(path):
            if direction == "down":
                lower, upper = upper, lower
            edge_roots.setdefault((int(label), lower, upper), set()).add(int(root))
    return node_roots, edge_roots


def graph_records(
    tables: Mapping[str, pl.DataFrame],
) -> tuple[list[dict], list[dict], list[dict]]:
    """Nodes, edges and row labels of the concept graph, laid out per class.

    Rows are layers (``row`` = layer_index, the prediction node one row above the last layer);
    within a row nodes are ordered by importance, the strongest in the middle-left, centred on
    0. ``strength`` (node) and ``weight_rel`` (edge) are relative to the class's maximum, so a
    single slider filters both.
    """
    nodes = tables["concept_graph_nodes"]
    edges = tables["concept_graph_edges"]
    node_roots, edge_roots = _cascade_sets(tables["concept_cascades"])
    sizes = dict(tables["clusters"].select("cluster_id", "size").iter_rows())
    labels = dict(tables["clusters"].select("cluster_id", "label").iter_rows())
    members = tables["neuron_clusters"].join(tables["class_importance"], on="neuron_id", how="left")
    top_member = {
        (int(lab), int(cid)): int(nid)
        for cid, lab, nid in members.filter(pl.col("label").is_not_null())
        .sort("score", "neuron_id", descending=[True, False])
        .group_by("cluster_id", "label", maintain_order=True)
        .agg(pl.col("neuron_id").first())
        .iter_rows()
    }
    first_member = {
        int(cid): int(nid)
        for cid, nid in tables["neuron_clusters"]
        .group_by("cluster_id")
        .agg(pl.col("neuron_id").min())
        .iter_rows()
    }
    patched = set(tables["example_patches"].filter(pl.col("rank") == 1)["neuron_id"].to_list())
    top_row = int(tables["neurons"]["layer_index"].max() or 0) + 1

    node_rows: list[dict] = []
    position: dict[tuple[int, int], tuple[float, int]] = {}
    ordered = nodes.sort("label", "layer_index", "importance", "cluster_id").reverse()
    for (label, layer_index), group in ordered.group_by(
        ["label", "layer_index"], maintain_order=True
    ):
        group = group.sort("importance", "cluster_id", descending=[True, False])
        n = group.height
        max_imp = float(nodes.filter(pl.col("label") == label)["importance"].max() or 1.0)
        for i, row in enumerate(group.iter_rows(named=True)):
            key = (int(label), int(row["cluster_id"]))
            col = i - (n - 1) / 2
            position[key] = (col, int(layer_index))
            member = top_member.get(key, first_member.get(int(row["cluster_id"])))
            node_rows.append(
                {
                    "label": int(label),
                    "cluster_id": int(row["cluster_id"]),
                    "layer": row["layer"],
                    "row": int(layer_index),
                    "col": col,
                    "importance": float(row["importance"]),
                    "strength": float(row["importance"]) / max_imp if max_imp > 0 else 1.0,
                    "size": int(sizes.get(row["cluster_id"], 0)),
                    "cluster_label": labels.get(row["cluster_id"]) or "",
                    "cascade": _bar_list(sorted(node_roots.get(key, set()) | {key[1]})),
                    "patch": patch_key(member, 1) if member in patched else None,
                }
            )
    for label in sorted(nodes["label"].unique().to_list()):
        key = (int(label), PREDICTION_CLUSTER)
        position[key] = (0.0, top_row)
        node_rows.append(
            {
                "label": int(label),
                "cluster_id": PREDICTION_CLUSTER,
                "layer": "prediction",
                "row": top_row,
                "col": 0.0,
                "importance": None,
                "strength": 1.0,
                "size": 0,
                "cluster_label": "prediction",
                "cascade": _bar_list(sorted(node_roots.get(key, set()) | {PREDICTION_CLUSTER})),
                "patch": None,
            }
        )
    strength = {(r["label"], r["cluster_id"]): r["strength"] for r in node_rows}

    edge_rows: list[dict] = []
    max_w = dict(edges.group_by("label").agg(pl.col("weight").max()).iter_rows())
    for row in edges.iter_rows(named=True):
        label = int(row["label"])
        source = (label, int(row["source_cluster"]))
        target_cluster = (
            PREDICTION_CLUSTER
            if row["target_layer"] == "prediction"
            else int(row["target_cluster"])
        )
        target = (label, target_cluster)
        if source not in position or target not in position:
            continue
        top = max_w.get(row["label"]) or 1.0
        edge_rows.append(
            {
                "label": label,
                "source_cluster": source[1],
                "target_cluster": target[1],
                "col": position[source][0],
                "row": position[source][1],
                "col2": position[target][0],
                "row2": position[target][1],
                "weight": float(row["weight"]),
                "weight_rel": float(row["weight"]) / top if top > 0 else 0.0,
                "min_strength": min(strength[source], strength[target]),
                "cascade": _bar_list(sorted(edge_roots.get((label, source[1], target[1]), ()))),
            }
        )
    layer_rows = (
        tables["neurons"].select("layer", "layer_index").unique().sort("layer_index").iter_rows()
    )
    rows = [{"row": int(i), "name": name} for name, i in layer_rows]
    rows.append({"row": top_row, "name": "prediction"})
    return node_rows, edge_rows, rows


def view_data(tables: Mapping[str, pl.DataFrame]) -> ViewData:
    """All datasets of the page except the patches (see :func:`patch_records`)."""
    check_tables(tables)
    nodes, edges, rows = graph_records(tables)
    classes = [
        {"label": int(label), "name": str(name)}
        for label, name in tables["images"]
        .select("label", "label_name")
        .unique()
        .sort("label")
        .iter_rows()
    ]
    layers = [
        str(name)
        for name, _ in tables["neurons"]
        .select("layer", "layer_index")
        .unique()
        .sort("layer_index")
        .iter_rows()
    ]
    return ViewData(
        neurons=neuron_records(tables),
        graph_nodes=nodes,
        graph_edges=edges,
        graph_rows=rows,
        classes=classes,
        layers=layers,
    )
