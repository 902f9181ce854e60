"""The concept graph's units, read from the store: each unit layer's units with their neuron
and cluster (:func:`read_units`).

What a step reads through :attr:`carto_assets.stages.prepared.PreparedStudy.units`; the graph's work
is :mod:`carto_assets.stages.concept_graph`. No import of :mod:`carto_assets.stages.prepared`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from carto_assets.core.sae.layer import FeatureLayer
from carto_assets.storage.store import CartoStore


@dataclass(frozen=True)
class Units:
    """The graph's units: channel layers in forward order, then feature layers."""

    layers: list[str]
    features: dict[str, FeatureLayer]
    #: per unit layer, unit -> neuron id
    neuron_of: dict[str, np.ndarray]
    #: per unit layer, unit -> cluster id (-1: unclustered)
    cluster_of: dict[str, np.ndarray]
    layer_index: dict[str, int]
    #: the clusters that are always on (``cluster_labels.always_on``): explanations list them
    #: after the others; empty for a study without words
    always_on: frozenset[int] = frozenset()

    def apart(self, clusters: np.ndarray) -> np.ndarray:
        """Bool per cluster id of ``clusters``: whether it is always on."""
        return np.isin(np.asarray(clusters), np.fromiter(self.always_on, np.int64))

    @property
    def chains(self) -> dict[str, str]:
        return {n: "features" if n in self.features else "channels" for n in self.layers}


def read_units(
    store: CartoStore, channel_layers: list[str], features: Sequence[FeatureLayer]
) -> Units:
    """Per unit layer, each unit's neuron and cluster, from ``neurons`` and ``neuron_clusters``;
    the always-on clusters from ``cluster_labels`` where the study has words."""
    by_name = {f.name: f for f in features}
    table = store.query(
        "SELECT n.neuron_id, n.layer, n.layer_index, n.channel, nc.cluster_id FROM neurons n "
        "LEFT JOIN neuron_clusters nc USING (neuron_id) ORDER BY n.layer_index, n.channel"
    )
    layers = channel_layers + list(by_name)
    neuron_of, cluster_of, index = {}, {}, {}
    for name in layers:
        rows = table.filter(pl.col("layer") == name)
        width = (
            by_name[name].n_features if name in by_name else int(rows["channel"].max() or -1) + 1
        )
        neurons = np.full(width, -1, dtype=np.int64)
        clusters = np.full(width, -1, dtype=np.int64)
        channel = rows["channel"].to_numpy()
        neurons[channel] = rows["neuron_id"].to_numpy()
        clusters[channel] = rows["cluster_id"].fill_null(-1).to_numpy()
        neuron_of[name], cluster_of[name] = neurons, clusters
        index[name] = int(rows["layer_index"][0]) if rows.height else -1
    always_on: frozenset[int] = frozenset()
    # A database written before `always_on` has none (the next run adds the column).
    if "always_on" in store.columns("cluster_labels"):
        rows = store.query("SELECT cluster_id FROM cluster_labels WHERE always_on")
        always_on = frozenset(int(c) for c in rows["cluster_id"].to_list())
    return Units(layers, by_name, neuron_of, cluster_of, index, always_on)
