"""The concept graph's nodes: which clusters a class uses, by a per-unit score.

A *rule* scores every unit of a layer for a class: Summit's activation rule (the share of the
class's images on which the unit carries the top of its layer's activation mass,
``class_importance.score``) or relevance (the unit's mean share of its layer's relevance for
the class's logit, :mod:`carto_assets.core.attribution.relevance`). Either way the nodes are
chosen alike (:func:`choose_nodes`): the class's top ``fraction`` of the layer's units by score
(positive scores only) are mapped to their clusters, a cluster's importance is the sum of those
members' scores, and the ``nodes_per_layer`` most important clusters are kept.

:func:`ranked_units` orders a layer's units as a rule sees them (its nodes' members first), for
the node ablation check; :func:`class_checks` says whether nodes are concepts of their class
(``clusters.top_class``), for the figures that compare the rules.

Everything here is polars and numpy; no torch, no dagster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from carto_assets import schema

#: The two node rules (the study's ``graph.importance``).
RULES = ("relevance", "activation")

#: ``scores`` columns :func:`choose_nodes` reads.
SCORE_COLUMNS = ("label", "neuron_id", "layer", "layer_index", "cluster_id", "score")


def choose_nodes(scores: pl.DataFrame, fraction: float, nodes_per_layer: int) -> pl.DataFrame:
    """``concept_graph_nodes`` rows from per-unit scores.

    Parameters
    ----------
    scores
        One row per (class, unit) with the columns of :data:`SCORE_COLUMNS`; every unit of a
        layer that can count (its layer size is the number of rows of the class and layer).
    fraction
        Per class and layer, the share of the layer's units that count as the class's most
        important (at least one): ties broken by the smaller ``neuron_id``.
    nodes_per_layer
        At most this many clusters per class and layer, by importance (ties: smaller id).

    Returns
    -------
    polars.DataFrame
        ``label, cluster_id, layer, layer_index, importance, important_members``, ordered by
        label, layer_index, importance (descending), cluster_id.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if nodes_per_layer < 1:
        raise ValueError(f"nodes_per_layer must be >= 1, got {nodes_per_layer}")
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise ValueError(f"scores lack column(s) {missing}")
    group = ["label", "layer"]
    ranked = scores.sort(
        ["label", "layer", "score", "neuron_id"], descending=[False, False, True, False]
    ).with_columns(
        r=pl.int_range(1, pl.len() + 1).over(group),
        layer_size=pl.len().over(group),
    )
    top = ranked.filter(
        (pl.col("r") <= (pl.col("layer_size") * fraction).ceil().clip(lower_bound=1))
        & (pl.col("score") > 0)
    )
    nodes = (
        top.group_by("label", "cluster_id", "layer")
        .agg(
            pl.col("layer_index").first(),
            pl.col("score").sum().alias("importance"),
            pl.len().alias("important_members"),
        )
        .sort(
            ["label", "layer", "importance", "cluster_id"],
            descending=[False, False, True, False],
        )
        .filter(pl.int_range(pl.len()).over(group) < nodes_per_layer)
    )
    frame = nodes.select(schema.column_names("concept_graph_nodes")).cast(
        schema.polars_schema("concept_graph_nodes")
    )
    return frame.sort(
        ["label", "layer_index", "importance", "cluster_id"],
        descending=[False, False, True, False],
    )


def ranked_units(
    node_clusters: Sequence[int],
    members: Mapping[int, np.ndarray],
    unit_scores: np.ndarray,
) -> np.ndarray:
    """A layer's units in the order a rule puts them: the members of its nodes, most
    important node first (each node's members by descending score), then the layer's other
    units by descending score (ties: smaller unit first)."""
    by_score = np.lexsort((np.arange(len(unit_scores)), -np.asarray(unit_scores)))
    position = np.empty(len(unit_scores), dtype=np.int64)
    position[by_score] = np.arange(len(unit_scores))
    first: list[int] = []
    for cluster in node_clusters:
        units = np.asarray(members[int(cluster)], dtype=np.int64)
        first.extend(units[np.argsort(position[units], kind="stable")].tolist())
    taken = np.zeros(len(unit_scores), dtype=bool)
    taken[first] = True
    return np.concatenate([np.asarray(first, dtype=np.int64), by_score[~taken[by_score]]])


def class_checks(
    nodes: pl.DataFrame, top_class: Mapping[int, str], class_names: Sequence[str]
) -> pl.DataFrame:
    """Per class and layer: how many nodes, how many are concepts of the class (their
    cluster's top images are mostly of the class: ``clusters.top_class`` is its name), and
    whether the most important node is one.

    ``nodes`` has ``label, layer, cluster_id, importance``. Returns ``label, layer, nodes,
    nodes_of_class, top_of_class`` (booleans as 0/1).
    """
    if nodes.height == 0:
        return pl.DataFrame(
            schema={
                "label": pl.Int32,
                "layer": pl.Utf8,
                "nodes": pl.Int64,
                "nodes_of_class": pl.Int64,
                "top_of_class": pl.Int64,
            }
        )
    own = [
        top_class.get(int(c)) == class_names[int(label)]
        for label, c in zip(nodes["label"].to_list(), nodes["cluster_id"].to_list())
    ]
    return (
        nodes.with_columns(of_class=pl.Series(own, dtype=pl.Boolean))
        .sort(
            ["label", "layer", "importance", "cluster_id"],
            descending=[False, False, True, False],
        )
        .group_by("label", "layer", maintain_order=True)
        .agg(
            pl.len().cast(pl.Int64).alias("nodes"),
            pl.col("of_class").sum().cast(pl.Int64).alias("nodes_of_class"),
            pl.col("of_class").first().cast(pl.Int64).alias("top_of_class"),
        )
        .with_columns(pl.col("label").cast(pl.Int32))
    )
