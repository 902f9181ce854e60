"""The Graph View's data: every class's concept graph laid out, and the compact chunks the page
loads one class at a time.

:func:`graph_records` lays the graphs out (rows, columns, strengths, the node pictures) with
polars joins; :meth:`ClassGraphs.records` gives one class's nodes and edges as the view draws
them (tested against a plain-loop reference), and ``ClassGraphs[label]`` the same class in the
compact form the page's chunks hold:

- what every class shares is sent once, in the page (:attr:`GraphData.clusters`: each node
  cluster's row, size and labels; the rows' names and kinds come with the graph's spec);
- per class, the nodes' cluster ids, columns, importances, pictures and cascade *pointers*
  (each node's first step down and up, ``concept_cascades`` at depth 1; a cascade is the chain
  of first steps, so the page walks it), the edges' ends and weights, the class's units
  delta-coded (:func:`encode_ids`), and the prediction node's picture.

The page (``page/page.js``, ``decodeGraph``) rebuilds the records; the browser tests check it
gives :meth:`ClassGraphs.records`. At the paper's scale (1,000 classes, 25 layers) the class
graphs are about a fifth of the bytes the full records took.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from carto_assets.schema import PREDICTION, PREDICTION_CLUSTER
from carto_viz import words
from carto_viz.short_names import layer_short_names, short_label

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def encode_ids(ids) -> str:
    """Ascending ids as base-36 gaps joined by ``.``: ``[3, 5, 40] -> "3.2.z"``."""
    values = np.unique(np.asarray(ids, dtype=np.int64))
    if len(values) and values[0] < 0:
        raise ValueError("ids must be >= 0")
    gaps = np.diff(values, prepend=0)
    return ".".join(np.base_repr(int(g), 36).lower() for g in gaps)


def decode_ids(text: str) -> list[int]:
    """The inverse of :func:`encode_ids`."""
    return np.cumsum([int(g, 36) for g in text.split(".")]).tolist() if text else []


def walk(start: int, step: Mapping[int, int | None]) -> list[int]:
    """The chain ``start, step[start], step[step[start]], ...`` until it ends (None or a
    cluster without a step); a cluster is never visited twice."""
    chain, seen = [], {start}
    current = step.get(start)
    while current is not None and current not in seen:
        chain.append(current)
        seen.add(current)
        current = step.get(current)
    return chain


def cascade_fields(cluster: int, down: Mapping, up: Mapping) -> dict[str, str]:
    """A node's cascade as the view tests it: its clusters (``|a|b|``, the node included) and
    its edges (``|lower-upper|``), from the first-step pointers."""
    below, above = walk(cluster, down), walk(cluster, up)
    members = sorted({cluster, *below, *above})
    edges = set()
    for chain, going_down in ((below, True), (above, False)):
        previous = cluster
        for member in chain:
            lower, upper = (member, previous) if going_down else (previous, member)
            edges.add(f"{lower}-{upper}")
            previous = member
    return {
        "cascade": "|" + "".join(f"{m}|" for m in members),
        "cascade_edges": "|" + "".join(f"{e}|" for e in sorted(edges)),
    }


def _number(value: float | None, digits: int) -> float | None:
    """``value`` with ``digits`` significant digits (short in JSON)."""
    if value is None or value != value:
        return None
    return float(f"{value:.{digits}g}")


@dataclass(frozen=True)
class GraphData:
    """What :func:`graph_records` returns."""

    graphs: ClassGraphs
    #: ``{row, name, short, kind}`` per layer, plus ``prediction`` (kind ``prediction``)
    rows: list[dict]
    #: the most nodes in one row of any class (the graph's width)
    max_columns: int
    #: every node cluster once: ``c`` id, ``r`` row, ``s`` size, ``l`` label, ``h`` short label
    clusters: dict[str, list]


class ClassGraphs(Mapping[int, dict]):
    """class label -> the class's graph for the page (compact), built when looked up;
    :meth:`records` gives the full records.

    Frames are kept per class and encoded one class at a time: every class at once as Python
    lists took 0.6 GB at the paper's scale (1,000 classes).
    """

    def __init__(
        self,
        nodes: dict[int, pl.DataFrame],
        edges: dict[int, pl.DataFrame],
        units: dict[int, np.ndarray],
        names: Mapping[int, str],
        top_row: int,
    ) -> None:
        self._nodes, self._edges, self._units = nodes, edges, units
        self._names, self._top_row = names, top_row
        self._labels = sorted(set(nodes) | set(units))
        self._known = set(self._labels)

    def __iter__(self) -> Iterator[int]:
        return iter(self._labels)

    def __len__(self) -> int:
        return len(self._labels)

    def _frames(self, label: int) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
        if label not in self._known:
            raise KeyError(label)
        return self._nodes.get(label), self._edges.get(label)

    def prediction_patch(self, label: int) -> int | None:
        """The prediction node's picture: the patch of the node whose edge into the prediction
        is strongest, else of the most important node in the highest row that has one."""
        nodes, edges = self._frames(label)
        if nodes is None:
            return None
        pictured = nodes.filter(pl.col("patch").is_not_null())
        if edges is not None:
            into = edges.filter(pl.col("target_cluster") == PREDICTION_CLUSTER)
            best = into.join(
                pictured.select(pl.col("cluster_id").alias("source_cluster")), on="source_cluster"
            )
            if best.height:
                source = best.sort("weight", "source_cluster", descending=[True, False])[
                    0, "source_cluster"
                ]
                return int(pictured.filter(pl.col("cluster_id") == source)["patch"][0])
        ranked = pictured.sort(["row", "importance", "cluster_id"], descending=[True, True, False])
        return int(ranked["patch"][0]) if ranked.height else None

    def __getitem__(self, label: int) -> dict:
        nodes, edges = self._frames(label)
        compact: dict = {"n": {}, "e": {}, "u": encode_ids(self._units.get(label, [])), "p": None}
        if nodes is not None:
            compact["n"] = {
                "c": nodes["cluster_id"].to_list(),
                "k": nodes["col"].to_list(),
                "i": [_number(v, 6) for v in nodes["importance"].to_list()],
                "p": nodes["patch"].to_list(),
                "d": nodes["down"].to_list(),
                "u": nodes["up"].to_list(),
            }
            compact["p"] = self.prediction_patch(label)
        if edges is not None:
            compact["e"] = {
                "s": edges["source_cluster"].to_list(),
                "t": edges["target_cluster"].to_list(),
                "w": [_number(v, 4) for v in edges["weight"].to_list()],
            }
        return compact

    def records(self, label: int) -> dict:
        """The class's nodes and edges as the Graph View draws them (lists of dicts, the
        prediction node last), and its units as a bar list ``|id|id|``."""
        nodes, edges = self._frames(label)
        node_records, edge_records = [], []
        units = sorted(set(self._units.get(label, np.array([], np.int64)).tolist()))
        if nodes is not None:
            down = dict(zip(nodes["cluster_id"].to_list(), nodes["down"].to_list()))
            up = dict(zip(nodes["cluster_id"].to_list(), nodes["up"].to_list()))
            for row in nodes.drop("down", "up").iter_rows(named=True):
                node_records.append({**row, **cascade_fields(row["cluster_id"], down, up)})
            name = str(self._names.get(label, ""))
            node_records.append(
                {
                    "cluster_id": PREDICTION_CLUSTER,
                    "layer": PREDICTION,
                    "kind": PREDICTION,
                    "row": self._top_row,
                    "col": 0.0,
                    "importance": None,
                    "strength": 1.0,
                    "size": 0,
                    "cluster_label": f"prediction: {name}",
                    "short": name,
                    "patch": self.prediction_patch(label),
                    "cascade": f"|{PREDICTION_CLUSTER}|",
                    "cascade_edges": "|",
                }
            )
        if edges is not None:
            edge_records = list(edges.iter_rows(named=True))
        return {
            "nodes": node_records,
            "edges": edge_records,
            "neurons": "|" + "".join(f"{n}|" for n in units),
        }


def _relative(value: str, top: str, default: float) -> pl.Expr:
    """``value / top`` rounded for the page, ``default`` where ``top`` is not positive."""
    return pl.when(pl.col(top) > 0).then(pl.col(value) / pl.col(top)).otherwise(default).round(4)


def _by_label(frame: pl.DataFrame) -> dict[int, pl.DataFrame]:
    """Split a frame by ``label`` into per-class frames (without the label column)."""
    if frame.height == 0:
        return {}
    parts = frame.partition_by("label", as_dict=True, include_key=False, maintain_order=True)
    return {int(key[0]): part for key, part in parts.items()}


def graph_records(tables: Mapping[str, pl.DataFrame], kinds: Mapping[str, str]) -> GraphData:
    """Every class's concept graph laid out for the Graph View, and the row labels.

    Rows are layers (``row`` = layer_index, the prediction node one row above the last layer;
    feature pseudo-layers are rows like any other); within a row nodes are ordered by
    importance, strongest first, centred on 0 (``col``). ``strength`` (node) and ``weight_rel``
    (edge) are relative to the class's maximum, so a single slider filters both. ``patch`` is
    the neuron whose rank-1 patch pictures the node: its member with the highest score among
    the class's units (``concept_graph_units``), else its first member. ``kind`` is the node's
    layer's kind of unit (``kinds``), ``prediction`` for the prediction node. The class's units
    (the projection's "neurons of the class") are ``concept_graph_units`` and its nodes'
    members.
    """
    nodes = tables["concept_graph_nodes"]
    int_type = nodes.schema["cluster_id"]
    clusters = tables["clusters"].select(
        "cluster_id", "size", pl.col("label").fill_null("").alias("cluster_label")
    )
    if words.has_words(tables):
        # Named by their words with the AUC, or "no word fits": the caption and the tooltip.
        captions = words.cluster_captions(tables).select(
            pl.col("cluster_id").cast(clusters.schema["cluster_id"]), "caption"
        )
        clusters = (
            clusters.drop("cluster_label")
            .join(captions, on="cluster_id", how="left")
            .select(
                "cluster_id",
                "size",
                pl.col("caption").fill_null(words.NO_WORD).alias("cluster_label"),
                pl.col("caption").fill_null(words.NO_WORD).alias("short"),
            )
        )
    else:
        shorts = {
            label: short_label(label) for label in clusters["cluster_label"].unique().to_list()
        }
        clusters = clusters.with_columns(
            short=pl.col("cluster_label").replace_strict(shorts, default="", return_dtype=pl.Utf8)
        )
    units = tables["concept_graph_units"]
    top_member = (
        units.sort("score", "neuron_id", descending=[True, False])
        .group_by("label", "cluster_id", maintain_order=True)
        .agg(pl.col("neuron_id").first().alias("top_member"))
    )
    first_member = (
        tables["neuron_clusters"]
        .group_by("cluster_id")
        .agg(pl.col("neuron_id").min().alias("first_member"))
    )
    patched = tables["example_patches"].filter(pl.col("rank") == 1)["neuron_id"].unique()
    top_row = int(tables["neurons"]["layer_index"].max() or 0) + 1
    pointers = (
        tables["concept_cascades"]
        .filter(pl.col("depth") == 1)
        .pivot(on="direction", index=["label", "root_cluster"], values="member_cluster")
    )
    for direction in ("down", "up"):
        if direction not in pointers.columns:
            pointers = pointers.with_columns(pl.lit(None, int_type).alias(direction))
    pointers = pointers.select(
        pl.col("label").cast(nodes.schema["label"]),
        pl.col("root_cluster").cast(int_type).alias("cluster_id"),
        pl.col("down").cast(int_type),
        pl.col("up").cast(int_type),
    )
    laid_out = (
        nodes.with_columns(
            order=pl.struct((-pl.col("importance")).alias("i"), pl.col("cluster_id").alias("c"))
            .rank("ordinal")
            .over("label", "layer_index"),
            n=pl.len().over("label", "layer_index"),
            max_importance=pl.col("importance").max().over("label"),
        )
        .with_columns(col=(pl.col("order") - 1 - (pl.col("n") - 1) / 2).cast(pl.Float64))
        .join(clusters, on="cluster_id", how="left")
        .join(
            top_member.cast({"label": nodes.schema["label"], "cluster_id": int_type}),
            on=["label", "cluster_id"],
            how="left",
        )
        .join(first_member, on="cluster_id", how="left")
        .with_columns(patch=pl.coalesce("top_member", "first_member"))
        .with_columns(patch=pl.when(pl.col("patch").is_in(patched.to_list())).then("patch"))
        .join(pointers, on=["label", "cluster_id"], how="left")
        .select(
            "label",
            "cluster_id",
            "layer",
            pl.col("layer")
            .replace_strict(dict(kinds), default="channel", return_dtype=pl.Utf8)
            .alias("kind"),
            pl.col("layer_index").cast(pl.Int64).alias("row"),
            "col",
            pl.col("importance").round(6),
            _relative("importance", "max_importance", 1.0).alias("strength"),
            pl.col("size").fill_null(0).cast(pl.Int64),
            "cluster_label",
            "short",
            "patch",
            "down",
            "up",
        )
        .sort("label", "row", "col")
    )
    max_columns = int(nodes.group_by("label", "layer_index").len()["len"].max() or 1)
    edges = tables["concept_graph_edges"].with_columns(
        target_cluster=pl.when(pl.col("target_layer") == PREDICTION)
        .then(pl.lit(PREDICTION_CLUSTER, int_type))
        .otherwise(pl.col("target_cluster").cast(int_type))
    )
    prediction_ends = (
        laid_out.select("label")
        .unique()
        .with_columns(
            cluster_id=pl.lit(PREDICTION_CLUSTER, int_type),
            col=pl.lit(0.0),
            row=pl.lit(top_row, pl.Int64),
            strength=pl.lit(1.0),
        )
    )
    ends = pl.concat(
        [laid_out.select("label", "cluster_id", "col", "row", "strength"), prediction_ends]
    )
    edge_rows = (
        edges.join(
            ends.rename({"cluster_id": "source_cluster", "strength": "s1"}),
            on=["label", "source_cluster"],
        )
        .join(
            ends.rename(
                {"cluster_id": "target_cluster", "col": "col2", "row": "row2", "strength": "s2"}
            ),
            on=["label", "target_cluster"],
        )
        .with_columns(top=pl.col("weight").max().over("label"))
        .select(
            "label",
            "source_cluster",
            "target_cluster",
            "col",
            "row",
            "col2",
            "row2",
            pl.col("weight").round(6),
            _relative("weight", "top", 0.0).alias("weight_rel"),
            pl.min_horizontal("s1", "s2").alias("min_strength"),
        )
        .sort("label", "row", "col", "col2")
    )
    members = (
        nodes.select("label", "cluster_id")
        .join(tables["neuron_clusters"].select("neuron_id", "cluster_id"), on="cluster_id")
        .select("label", "neuron_id")
    )
    listed = units.select("label", "neuron_id")
    class_units = pl.concat([listed, members.cast(listed.schema)])
    by_class = {
        int(label): part["neuron_id"].to_numpy()
        for (label,), part in class_units.partition_by("label", as_dict=True).items()
    }
    names = dict(tables["images"].select("label", "label_name").iter_rows())
    graphs = ClassGraphs(_by_label(laid_out), _by_label(edge_rows), by_class, names, top_row)
    layer_rows = (
        tables["neurons"].select("layer", "layer_index").unique().sort("layer_index").iter_rows()
    )
    layer_rows = list(layer_rows)
    short = layer_short_names([name for name, _ in layer_rows])
    rows = [
        {"row": int(i), "name": name, "short": short[name], "kind": kinds[name]}
        for name, i in layer_rows
    ]
    rows.append({"row": top_row, "name": PREDICTION, "short": PREDICTION, "kind": PREDICTION})
    used = (
        laid_out.select("cluster_id", "row", "size", "cluster_label", "short")
        .unique("cluster_id")
        .sort("cluster_id")
    )
    cluster_table = {
        "c": used["cluster_id"].to_list(),
        "r": used["row"].to_list(),
        "s": used["size"].to_list(),
        "l": used["cluster_label"].to_list(),
        "h": used["short"].to_list(),
    }
    return GraphData(graphs, rows, max_columns, cluster_table)


__all__ = [
    "ClassGraphs",
    "GraphData",
    "decode_ids",
    "encode_ids",
    "graph_records",
    "walk",
]
