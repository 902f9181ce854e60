"""Concept-graph edges: how much each cluster of a layer drives each cluster of the next one.

Neurons are channels of captured layers; a *cluster* groups neurons of one layer. For one class,
the concept graph links clusters of consecutive captured layers, and the last layer's clusters
to the class prediction. An edge A -> B (A in the lower layer L, B in the upper layer U) weighs
how much of B's activation is attributable to A, by gradient x activation:

* B's objective, per image, is the sum over B's member channels of their spatial maximum (the
  same activation the rest of the map uses);
* its gradient with respect to L's output, times that output, summed over space, gives one
  signed contribution per (image, channel of L): the first-order estimate of how much B's
  activation would drop if that channel were zeroed;
* contributions are summed over A's member channels (a cluster acts as one unit: its excitatory
  and inhibitory members cancel), averaged over the images B was measured on, and clipped at 0.
  The view shows influence, which is positive; ``signed_weight`` keeps the unclipped value.

Prediction edges use the class logit as the objective, at the last captured layer: their
weights are the relevance (:mod:`carto_assets.core.attribution.relevance`) of the last layer's
clusters, so they come from the relevance pass.

Units can also be the features of a sparse autoencoder read at a captured layer: *feature
layers*, given as :class:`~carto_assets.core.sae.layer.FeatureLayer` (computed beside
the network, never fed back). Edges into a feature cluster use its members' spatial maxima as
the objective; edges out of one project the gradient at its source layer onto the features
(``W_dec^T g``) and multiply by the features; ablating one subtracts its decoder contribution.
:mod:`carto_assets.core.attribution.features` states the definitions. With features the layer
pairs are given explicitly (:func:`~carto_assets.core.attribution.features.graph_pairs`); by
default they are consecutive layers, as above.

The gradient is taken between captured layers whatever lies between them (inception branches,
residual sums, pooling), so branching models need nothing special. A pair whose upper layer
does not depend on the lower one (parallel branches, or a zero gradient x activation for all
the images) has no edges and is listed in ``no_dependency``.

Cost. Images are independent in eval mode, so one backward pass over a batch takes each image's
gradient for its own objective. :func:`edge_sums` runs *passes*: in each, every image carries
one upper cluster of each upper layer (a :class:`Carry`), and one backward pass per (layer
pair) walks only the part of the graph between the two layers. With every image carrying every
cluster (:meth:`Carry.every`, what :func:`influence_edges` does) that is one pass per upper
cluster; splitting the images among the clusters (:meth:`Carry.split`) measures each edge on
fewer images for one pass in all. Memory is the forward graph from the first captured layer up
(:class:`~carto_assets.core.attribution.forward.RetainedForward`; googlenet, 16 images at 224
px: 0.43 GB of saved tensors). On accelerators the passes of one layer pair run as one batched
backward (``is_grads_batched``).

This module never imports dagster.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from carto_assets.core.attribution.features import layer_pairs
from carto_assets.core.attribution.forward import (
    RetainedForward,
    as_clusters,
    batches,
    channel_max,
    check_images,
    check_layers,
    device_of,
    members_of,
)
from carto_assets.core.attribution.relevance import Relevance, relevance
from carto_assets.core.sae.layer import FeatureLayer
from carto_assets.core.validate import check_int
from carto_assets.schema import PREDICTION, PREDICTION_CLUSTER, column_names

#: One class's edges: the ``concept_graph_edges`` table without its ``label``.
EDGE_COLUMNS = tuple(c for c in column_names("concept_graph_edges") if c != "label")

Pair = tuple[str, str]


@dataclass(frozen=True)
class InfluenceResult:
    """Edges of one class's concept graph.

    Attributes
    ----------
    edges
        Columns ``source_layer`` (str), ``source_cluster`` (int64), ``target_layer`` (str, or
        :data:`PREDICTION`), ``target_cluster`` (int64, :data:`PREDICTION_CLUSTER` for the
        prediction), ``weight`` (mean gradient x activation, clipped at 0), ``signed_weight``
        (unclipped) and ``share`` (``weight`` over the total weight into the same target).
    no_dependency
        (lower, upper) layer pairs with no measurable dependency, hence no edges: no
        autograd path from lower to upper (parallel branches), or gradient x activation
        exactly zero for every channel and image (a zero gradient, e.g. a dead ReLU above, or
        an all-zero lower output); ``upper`` may be :data:`PREDICTION`.
    class_index
        The logit the prediction edges were computed for.
    n_images
        Images averaged over.
    seconds
        Wall time of the computation.
    """

    edges: dict[str, np.ndarray]
    no_dependency: tuple[tuple[str, str], ...]
    class_index: int
    n_images: int
    seconds: float

    def records(self) -> list[dict[str, Any]]:
        """The edges as a list of dicts (one per edge)."""
        columns = {k: self.edges[k].tolist() for k in EDGE_COLUMNS}
        return [dict(zip(columns, row)) for row in zip(*columns.values())]


@dataclass(frozen=True)
class Carry:
    """Which upper cluster each image carries in each edge pass, per upper layer.

    ``targets[upper]`` maps a cluster id to its member units; ``passes[upper]`` is a
    (passes, images) int array of cluster ids, -1 where the image carries none of that layer's
    clusters in that pass. Every layer has the same number of passes.
    """

    targets: dict[str, dict[int, np.ndarray]]
    passes: dict[str, np.ndarray]

    @property
    def n_passes(self) -> int:
        return max((int(p.shape[0]) for p in self.passes.values()), default=0)

    @classmethod
    def every(cls, targets: Mapping[str, Mapping[int, np.ndarray]], n_images: int) -> Carry:
        """Every image carries every cluster: one pass per cluster of the widest layer."""
        n = max((len(t) for t in targets.values()), default=0)
        passes = {}
        for upper, clusters in targets.items():
            ids = np.full(n, -1, dtype=np.int64)
            ids[: len(clusters)] = sorted(clusters)
            passes[upper] = np.repeat(ids[:, None], n_images, axis=1)
        return cls({u: dict(t) for u, t in targets.items()}, passes)

    @classmethod
    def split(
        cls,
        targets: Mapping[str, Mapping[int, np.ndarray]],
        n_images: int,
        images_per_target: int | Mapping[str, int] | None = None,
        seed: int = 0,
    ) -> Carry:
        """Each cluster of layer U carried by ``images_per_target`` images (at most all of
        them; per layer, or one number for all; None: ``images // clusters of U``, at least
        1, so that U's clusters share one pass), in ``ceil(clusters x images_per_target /
        images)`` passes. Images are taken in a seeded order, each cluster by different images
        where there are enough; a layer's assignment depends on its own clusters only."""
        order = np.random.default_rng(seed).permutation(n_images)
        passes = {}
        for upper, clusters in targets.items():
            if images_per_target is None:
                m = max(1, n_images // max(1, len(clusters)))
            elif isinstance(images_per_target, Mapping):
                m = images_per_target[upper]
            else:
                m = images_per_target
            check_int("images_per_target", m, minimum=1)
            m = min(m, n_images)
            n_passes = -(-len(clusters) * m // max(n_images, 1))
            grid = np.full((n_passes, n_images), -1, dtype=np.int64)
            # Slot s of the (pass, image) grid, filled image-major in the seeded order: cluster
            # k takes the slots k*m .. k*m+m-1, so no image carries one cluster twice.
            for k, cluster in enumerate(sorted(clusters)):
                for s in range(k * m, k * m + m):
                    grid[s // n_images, order[s % n_images]] = cluster
            passes[upper] = grid
        return cls({u: dict(t) for u, t in targets.items()}, passes)

    def carriers(self, upper: str, cluster: int) -> np.ndarray:
        """The images that carried ``cluster`` of ``upper`` (ascending; an image once)."""
        return np.unique(np.nonzero(self.passes[upper] == cluster)[1])


@dataclass
class EdgeSums:
    """Per layer pair and target cluster, each lower unit's contribution summed over the
    images that carried the target, and how many images that was."""

    sums: dict[Pair, dict[int, np.ndarray]] = field(default_factory=dict)
    counts: dict[Pair, dict[int, int]] = field(default_factory=dict)
    independent: set[Pair] = field(default_factory=set)
    nonzero: set[Pair] = field(default_factory=set)

    def add(self, pair: Pair, target: int, contribution: np.ndarray, n: int) -> None:
        if n == 0:
            return
        sums = self.sums.setdefault(pair, {})
        counts = self.counts.setdefault(pair, {})
        sums[target] = contribution if target not in sums else sums[target] + contribution
        counts[target] = counts.get(target, 0) + n
        if np.any(contribution != 0):
            self.nonzero.add(pair)


def _objective_grads(
    objectives: list[torch.Tensor], low: torch.Tensor, *, batched: bool
) -> list[torch.Tensor] | None:
    """d(objective) / d(low) for every (scalar) objective; None when ``low`` is not upstream.

    The batched path runs one backward pass for all objectives (a vmap over the
    vector-Jacobian product with the identity's rows), cutting the per-pass Python and
    dispatch overhead; the loop is the reference.
    """
    if not low.requires_grad or not all(o.requires_grad for o in objectives):
        return None  # no graph joins them (e.g. the objective is computed before ``low``)
    if batched and len(objectives) > 1:
        try:
            with warnings.catch_warnings():
                # vmap warns when an op falls back to a slow per-row loop; still correct.
                warnings.simplefilter("ignore", UserWarning)
                (grads,) = torch.autograd.grad(
                    torch.stack(objectives),
                    low,
                    grad_outputs=torch.eye(len(objectives), dtype=low.dtype, device=low.device),
                    retain_graph=True,
                    allow_unused=True,
                    is_grads_batched=True,
                )
        except RuntimeError:
            pass  # an operation without a batching rule: the loop below
        else:
            return None if grads is None else list(grads.unbind(0))
    out = []
    for objective in objectives:
        (grad,) = torch.autograd.grad(objective, low, retain_graph=True, allow_unused=True)
        if grad is None:
            return None
        out.append(grad)
    return out


def edge_sums(
    fwd: RetainedForward,
    pairs: Sequence[Pair],
    carry: Carry,
    *,
    batched_backward: bool | None = None,
    into: EdgeSums | None = None,
) -> EdgeSums:
    """The backward passes of the edges between unit layers (pairs into :data:`PREDICTION`
    are skipped: they come from :func:`prediction_sums`).

    In pass p, image i's objective at upper layer U is the sum of the spatial maxima of the
    members of cluster ``carry.passes[U][p, i]``; one backward pass per (captured output the
    lower layers are read at, upper layer) and pass gives each image's gradient for its own
    objective. Pairs reading the same captured output into the same upper layer (a channel
    layer and its features) share the pass.
    """
    out = into if into is not None else EdgeSums()
    if batched_backward is None:
        batched_backward = fwd.logits.device.type != "cpu"
    groups: dict[Pair, list[Pair]] = {}
    for lower, upper in pairs:
        if upper != PREDICTION:
            groups.setdefault((fwd.source(lower), upper), []).append((lower, upper))
    maxes = {upper: channel_max(fwd.outputs[upper]) for _, upper in groups}
    for (at, upper), group in groups.items():
        todo = [pair for pair in group if pair not in out.independent]
        grid = carry.passes.get(upper)
        if not todo or grid is None:
            continue
        members = carry.targets[upper]
        objectives, slots = [], []
        for row in grid:
            mask = torch.zeros_like(maxes[upper])
            for cluster in np.unique(row[row >= 0]):
                images = torch.as_tensor(np.flatnonzero(row == cluster), device=mask.device)
                units = torch.as_tensor(members[int(cluster)], device=mask.device)
                mask[images[:, None], units[None, :]] = 1.0
            if bool(mask.any()):
                objectives.append((maxes[upper] * mask).sum())
                slots.append(row)
        if not objectives:
            continue
        grads = _objective_grads(objectives, fwd.outputs[at], batched=batched_backward)
        if grads is None:
            out.independent.update(todo)
            continue
        for row, grad in zip(slots, grads):
            for pair in todo:
                per_image = fwd.contribution(pair[0], grad).cpu().numpy()
                for cluster in np.unique(row[row >= 0]):
                    images = row == cluster
                    out.add(pair, int(cluster), per_image[images].sum(axis=0), int(images.sum()))
    return out


def prediction_sums(
    rel: Relevance, pairs: Sequence[Pair], into: EdgeSums | None = None
) -> EdgeSums:
    """The pairs into :data:`PREDICTION`, from the relevance pass: a lower unit's contribution
    to the class logit is its relevance."""
    out = into if into is not None else EdgeSums()
    for lower, upper in pairs:
        if upper != PREDICTION:
            continue
        if lower in rel.independent:
            out.independent.add((lower, upper))
            continue
        units = rel.units[lower]
        out.add((lower, upper), PREDICTION_CLUSTER, units.sum(axis=0), units.shape[0])
    return out


def edge_table(
    clusters: Mapping[str, np.ndarray],
    pairs: Sequence[Pair],
    sums: EdgeSums,
    *,
    keep_nonpositive: bool = False,
) -> tuple[dict[str, np.ndarray], tuple[Pair, ...]]:
    """Edge columns (ordered by pair, target cluster, source cluster) and the pairs with no
    dependency: each source cluster's members' contributions summed, over the images that
    carried the target, clipped at 0 for ``weight``."""
    cols: dict[str, list] = {k: [] for k in EDGE_COLUMNS}
    no_dependency = []
    for pair in pairs:
        lower, upper = pair
        if pair in sums.independent or pair not in sums.nonzero:
            no_dependency.append(pair)
            continue
        src = members_of(clusters[lower])
        src_ids = np.array(sorted(src), dtype=np.int64)
        for target in sorted(sums.sums.get(pair, {})):
            per_unit = sums.sums[pair][target] / sums.counts[pair][target]
            signed = np.array([per_unit[src[a]].sum() for a in src_ids], dtype=np.float64)
            weight = np.clip(signed, 0.0, None)
            total = weight.sum()
            share = weight / total if total > 0 else np.zeros_like(weight)
            keep = np.ones(len(src_ids), bool) if keep_nonpositive else weight > 0
            k = int(keep.sum())
            cols["source_layer"].extend([lower] * k)
            cols["source_cluster"].extend(src_ids[keep].tolist())
            cols["target_layer"].extend([upper] * k)
            cols["target_cluster"].extend([target] * k)
            cols["weight"].extend(weight[keep].tolist())
            cols["signed_weight"].extend(signed[keep].tolist())
            cols["share"].extend(share[keep].tolist())
    return _edge_arrays(cols), tuple(no_dependency)


def influence_edges(
    model: nn.Module,
    layers: Sequence[str],
    cluster_of: Mapping[str, Any] | Sequence[Any],
    images: torch.Tensor,
    class_index: int,
    upper_clusters: Mapping[str, Sequence[int]] | None = None,
    *,
    features: Mapping[str, FeatureLayer] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    include_prediction: bool = True,
    keep_nonpositive: bool = False,
    batch_size: int = 32,
    batched_backward: bool | None = None,
) -> InfluenceResult:
    """Gradient x activation influence between clusters of captured (or feature) layers, every
    edge measured on every image (one pass per upper cluster).

    Parameters
    ----------
    model
        The network; run in eval mode (its mode is restored afterwards), never modified.
    layers
        Captured module names in forward order (the order their outputs complete), and the
        names of the feature layers in ``features`` (anywhere in the list).
    cluster_of
        Per layer (a mapping by name, or a sequence aligned with ``layers``), a 1-D int array
        channel (or feature) -> cluster id; negative ids are unclustered units and are ignored.
    images
        (B, 3, H, W) normalized images of one class.
    class_index
        Logit of the prediction edges.
    upper_clusters
        Per upper layer, the cluster ids to compute incoming edges for (the graph's nodes);
        a layer that is absent gets all its clusters. The cost scales with these.
    features
        Feature layer name -> :class:`~carto_assets.core.sae.layer.FeatureLayer`; each
        reads one of the captured ``layers``. None: channels only.
    pairs
        The (lower, upper) layer pairs to compute, an upper layer possibly
        :data:`PREDICTION`; each upper layer above its lower one (a feature layer counts as
        just above its source). None: consecutive ``layers``, then the last one to the
        prediction.
    include_prediction
        Also compute edges into the prediction: the last layer's with the default pairs;
        with explicit ``pairs``, False drops the pairs into :data:`PREDICTION`.
    keep_nonpositive
        Keep edges whose weight is 0 (no wire, or a net inhibitory one) instead of dropping
        them.
    batch_size
        Images per forward pass (bounds the retained graph's memory).
    batched_backward
        Take the gradients of all of a layer pair's upper clusters in one vectorized
        backward pass (``torch.autograd.grad(..., is_grads_batched=True)``) instead of one
        pass per cluster; falls back to the loop where an operation has no batching rule.
        Same gradients either way (tested). None (default): batched on accelerators, where
        it saves kernel launches and Python round trips, the loop on CPU, where it measured
        about 20% slower (googlenet, 16 images, 5 clusters per layer, one thread: 4.3-4.7 s
        of CPU time batched vs 3.4-4.1 s looped).

    Returns
    -------
    InfluenceResult
        Edges ordered by target layer, target cluster, then source cluster.
    """
    start = time.perf_counter()
    features = dict(features or {})
    modules = check_layers(model, layers, features)
    clusters = as_clusters(layers, cluster_of)
    check_images(images)
    check_int("batch_size", batch_size, minimum=1)
    pairs = layer_pairs(layers, modules, features, pairs, include_prediction)
    targets = upper_targets(clusters, pairs, upper_clusters)
    sums = EdgeSums()
    device = device_of(model)
    for chunk in batches(images, batch_size):
        fwd = RetainedForward.run(model, layers, clusters, chunk.to(device), features)
        if any(upper == PREDICTION for _, upper in pairs):
            prediction_sums(relevance(fwd, class_index), pairs, into=sums)
        carry = Carry.every(targets, fwd.n_images)
        edge_sums(fwd, pairs, carry, batched_backward=batched_backward, into=sums)
        del fwd
    edges, no_dependency = edge_table(clusters, pairs, sums, keep_nonpositive=keep_nonpositive)
    return InfluenceResult(
        edges=edges,
        no_dependency=no_dependency,
        class_index=int(class_index),
        n_images=int(images.shape[0]),
        seconds=time.perf_counter() - start,
    )


def upper_targets(
    clusters: Mapping[str, np.ndarray],
    pairs: Sequence[Pair],
    upper_clusters: Mapping[str, Sequence[int]] | None,
) -> dict[str, dict[int, np.ndarray]]:
    """Per upper layer of ``pairs``, the clusters to compute incoming edges for (all of the
    layer's unless ``upper_clusters`` names some) and their members, checked."""
    uppers = list(dict.fromkeys(upper for _, upper in pairs if upper != PREDICTION))
    targets: dict[str, dict[int, np.ndarray]] = {}
    for upper in uppers:
        members = members_of(clusters[upper])
        wanted = None if upper_clusters is None else upper_clusters.get(upper)
        if wanted is not None:
            unknown = sorted(set(int(c) for c in wanted) - set(members))
            if unknown:
                raise ValueError(
                    f"upper_clusters[{upper!r}] names cluster(s) {unknown} that layer "
                    f"{upper!r} does not have (it has {sorted(members)[:20]})"
                )
            members = {int(c): members[int(c)] for c in sorted(set(int(c) for c in wanted))}
        targets[upper] = members
    if upper_clusters is not None:
        stray = sorted(set(upper_clusters) - set(uppers))
        if stray:
            raise ValueError(
                f"upper_clusters names layer(s) {stray} that are not upper layers; the upper "
                f"layers are {uppers}"
            )
    return targets


def _edge_arrays(cols: Mapping[str, Sequence]) -> dict[str, np.ndarray]:
    return {
        "source_layer": np.asarray(cols["source_layer"], dtype=object),
        "source_cluster": np.asarray(cols["source_cluster"], dtype=np.int64),
        "target_layer": np.asarray(cols["target_layer"], dtype=object),
        "target_cluster": np.asarray(cols["target_cluster"], dtype=np.int64),
        "weight": np.asarray(cols["weight"], dtype=np.float64),
        "signed_weight": np.asarray(cols["signed_weight"], dtype=np.float64),
        "share": np.asarray(cols["share"], dtype=np.float64),
    }


def read_edges(edges: InfluenceResult | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The edge columns of an :class:`InfluenceResult` or a table of them, typed and checked.

    ``source_layer``/``target_layer`` (object), ``source_cluster``/``target_cluster`` (int64)
    and ``weight`` (float64), all of one length; other columns are dropped.
    """
    table = edges.edges if isinstance(edges, InfluenceResult) else edges
    need = ("source_layer", "source_cluster", "target_layer", "target_cluster", "weight")
    missing = [c for c in need if c not in table]
    if missing:
        raise ValueError(f"edges lack column(s) {missing}")
    out = {c: np.asarray(table[c]) for c in need}
    n = {len(v) for v in out.values()}
    if len(n) > 1:
        raise ValueError(f"edge columns differ in length: {sorted(n)}")
    out["source_layer"] = out["source_layer"].astype(object)
    out["target_layer"] = out["target_layer"].astype(object)
    out["source_cluster"] = out["source_cluster"].astype(np.int64)
    out["target_cluster"] = out["target_cluster"].astype(np.int64)
    out["weight"] = out["weight"].astype(np.float64)
    return out
