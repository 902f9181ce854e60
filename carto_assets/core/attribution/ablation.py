"""The concept graph's faithfulness check: ablate an edge's source cluster, measure its target.

For a seeded sample of edges (:func:`sample_edges`), :func:`ablation_faithfulness` zeroes the
source cluster's channels (a feature cluster: subtracts its decoder contribution) in the
forward pass and measures the drop of the target's activation (the class logit for prediction
edges). Edge weights are first-order estimates of these drops; their rank correlation says how
faithful the graph is. The forward passes are :mod:`carto_assets.core.attribution.influence`'s.

This module never imports dagster.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from carto_assets.core.attribution.features import FeatureSpec
from carto_assets.core.attribution.influence import (
    InfluenceResult,
    _as_clusters,
    _channel_max,
    _check_images,
    _check_layers,
    _chunks,
    _device,
    _members,
    _run,
    read_edges,
)
from carto_assets.schema import PREDICTION


def sample_edges(
    edges: InfluenceResult | Mapping[str, Any], n: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Up to ``n`` edges drawn uniformly without replacement (seeded), in their original order."""
    table = read_edges(edges)
    total = len(table["weight"])
    if n >= total:
        return table
    rows = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    return {k: v[rows] for k, v in table.items()}


def ablation_faithfulness(
    model: nn.Module,
    layers: Sequence[str],
    cluster_of: Mapping[str, Any] | Sequence[Any],
    images: torch.Tensor,
    edges_sample: InfluenceResult | Mapping[str, Any],
    *,
    features: Mapping[str, FeatureSpec] | None = None,
    class_index: int | None = None,
    batch_size: int = 32,
) -> tuple[float, dict[str, np.ndarray]]:
    """Check edge weights against what zeroing the source cluster really does.

    For each edge A -> B, A's channels are set to 0 at L's output (a forward hook replaces the
    output) and B's activation (sum of its members' spatial maxima, averaged over the images)
    is compared with the unablated pass. Gradient x activation is the first-order estimate of
    exactly this drop, in the same units, so the absolute drop is what the weights are ranked
    against; the relative drop is reported too. One forward pass per distinct source cluster.

    A feature cluster A of a feature layer reading layer S is ablated by subtracting its
    members' decoder contribution ``W_dec[:, A] z_A`` from S's output at every position; a
    feature target's activation is the sum of its members' spatial maxima of the features,
    encoded from the output the network goes on with.

    Parameters
    ----------
    model, layers, cluster_of, images, features
        As for :func:`influence_edges`.
    edges_sample
        Edges to test (e.g. :func:`sample_edges` of an :class:`InfluenceResult`).
    class_index
        Needed when the sample holds prediction edges (their target is this logit).
    batch_size
        Images per forward pass.

    Returns
    -------
    spearman_rho, per_edge_effects
        The Spearman rank correlation between ``weight`` and ``drop`` (NaN with fewer than 3
        edges or constant values), and the sample's edge columns plus ``baseline``, ``ablated``,
        ``drop`` (baseline - ablated) and ``relative_drop`` (drop / |baseline|, NaN at 0).
    """
    features = dict(features or {})
    _check_layers(model, layers, features)
    clusters = _as_clusters(layers, cluster_of)
    _check_images(images)
    table = read_edges(edges_sample)
    known = set(layers)
    for col, extra in (("source_layer", set()), ("target_layer", {PREDICTION})):
        bad = sorted({str(v) for v in table[col]} - known - extra)
        if bad:
            raise ValueError(f"edges name unknown {col} value(s) {bad}; layers are {layers}")
    has_prediction = bool((table["target_layer"] == PREDICTION).any())
    if has_prediction and class_index is None:
        raise ValueError("the sample holds prediction edges: pass class_index")
    members = {name: _members(clusters[name]) for name in layers}
    for col_l, col_c in (("source_layer", "source_cluster"), ("target_layer", "target_cluster")):
        for layer, c in zip(table[col_l], table[col_c]):
            if layer != PREDICTION and int(c) not in members[layer]:
                raise ValueError(f"edges name cluster {int(c)} that layer {layer!r} lacks")

    device = _device(model)
    targets = sorted(
        {(str(a), int(b)) for a, b in zip(table["target_layer"], table["target_cluster"])}
    )
    target_layers = sorted({a for a, _ in targets if a != PREDICTION})

    def activations(ablate: tuple[str, np.ndarray] | None) -> dict[tuple[str, int], float]:
        """Mean objective of every target in the sample."""
        totals: dict[tuple[str, int], float] = {}
        for chunk in _chunks(images, batch_size):
            outputs, logits = _run(model, layers, clusters, chunk.to(device), ablate, features)
            maxes = {name: _channel_max(outputs[name]) for name in target_layers}
            for layer, c in targets:
                if layer == PREDICTION:
                    value = logits[:, int(class_index)].double().sum()
                else:
                    m = torch.as_tensor(members[layer][int(c)], device=device)
                    value = maxes[layer][:, m].double().sum()
                key = (str(layer), int(c))
                totals[key] = totals.get(key, 0.0) + float(value)
        return {k: v / images.shape[0] for k, v in totals.items()}

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            base = activations(None)
            ablated: dict[tuple[str, int], dict[tuple[str, int], float]] = {}
            for source in sorted(set(zip(table["source_layer"], table["source_cluster"]))):
                layer, c = str(source[0]), int(source[1])
                ablated[(layer, c)] = activations((layer, members[layer][c]))
    finally:
        model.train(was_training)

    n = len(table["weight"])
    baseline = np.empty(n)
    after = np.empty(n)
    for i in range(n):
        target = (str(table["target_layer"][i]), int(table["target_cluster"][i]))
        source = (str(table["source_layer"][i]), int(table["source_cluster"][i]))
        baseline[i] = base[target]
        after[i] = ablated[source][target]
    drop = baseline - after
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(baseline != 0, drop / np.abs(baseline), np.nan)
    rho = float("nan")
    if n >= 3 and np.ptp(table["weight"]) > 0 and np.ptp(drop) > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rho = float(stats.spearmanr(table["weight"], drop).statistic)
    effects = dict(table)
    effects.update(baseline=baseline, ablated=after, drop=drop, relative_drop=relative)
    return rho, effects
