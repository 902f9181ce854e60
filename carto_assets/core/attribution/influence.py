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
  and inhibitory members cancel), averaged over the class's images, and clipped at 0. The view
  shows influence, which is positive; ``signed_weight`` keeps the unclipped value.

Prediction edges use the class logit as the objective, at the last captured layer.

Units can also be the features of a sparse autoencoder read at a captured layer: *feature
layers*, given as :class:`~carto_assets.core.attribution.features.FeatureSpec` (computed beside
the network, never fed back). Edges into a feature cluster use its members' spatial maxima as
the objective; edges out of one project the gradient at its source layer onto the features
(``W_dec^T g``) and multiply by the features; ablating one subtracts its decoder contribution.
:mod:`carto_assets.core.attribution.features` states the definitions. With features the layer
pairs are given explicitly (:func:`~carto_assets.core.attribution.features.graph_pairs`); by
default they are consecutive layers, as above.

The gradient is taken between captured layers whatever lies between them (inception branches,
residual sums, pooling), so branching models need nothing special. A pair whose upper layer
does not depend on the lower one (parallel branches, or a zero gradient x activation for all
the class's images) has no edges and is listed in ``no_dependency``.

Cost: one forward pass per chunk of images, with the graph retained, then one backward pass
per (consecutive layer pair, upper cluster) plus one for the prediction; each backward only
walks the part of the graph between the two layers and covers all images of the chunk at once
(images are independent in eval mode). So the work is O(#upper clusters x #images) segment
backward passes, and memory is one chunk's forward graph from the first captured layer up: the
parameters are frozen for the pass, so no operation keeps its inputs for a weight gradient, and
nothing below the first captured layer is recorded (googlenet, 16 images at 224 px: 0.43 GB of
saved tensors, a third of it max pooling's int64 indices). On accelerators the backward passes
of one layer pair's upper clusters run as one batched pass (``is_grads_batched``).

This module never imports dagster.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from carto_assets.core.attribution.features import FeatureSpec, check_features, layer_pairs
from carto_assets.core.network.hooks import capture, find_modules
from carto_assets.core.network.recorder import spatial_max
from carto_assets.schema import PREDICTION, PREDICTION_CLUSTER, column_names
from carto_assets.validate import check_int

#: One class's edges: the ``concept_graph_edges`` table without its ``label``.
EDGE_COLUMNS = tuple(c for c in column_names("concept_graph_edges") if c != "label")


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


def _as_clusters(
    layers: Sequence[str], cluster_of: Mapping[str, Any] | Sequence[Any]
) -> dict[str, np.ndarray]:
    if isinstance(cluster_of, Mapping):
        missing = [name for name in layers if name not in cluster_of]
        if missing:
            raise ValueError(f"cluster_of has no entry for layer(s) {missing}")
        raw = [cluster_of[name] for name in layers]
    else:
        raw = list(cluster_of)
        if len(raw) != len(layers):
            raise ValueError(f"cluster_of has {len(raw)} entries for {len(layers)} layers")
    out = {}
    for name, arr in zip(layers, raw):
        a = np.asarray(arr)
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(
                f"cluster_of[{name!r}] must be a 1-D integer array (channel -> cluster id), "
                f"got shape {a.shape} dtype {a.dtype}"
            )
        out[name] = a.astype(np.int64)
    return out


def _check_layers(
    model: nn.Module, layers: Sequence[str], features: Mapping[str, FeatureSpec]
) -> list[str]:
    """The captured modules among ``layers`` (all but the feature layers), checked."""
    if isinstance(layers, str) or len(layers) == 0:
        raise ValueError(f"layers must be a non-empty list of module names, got {layers!r}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers contain duplicates: {list(layers)}")
    stray = sorted(set(features) - set(layers))
    if stray:
        raise ValueError(f"features name layer(s) {stray} that are not in layers {list(layers)}")
    modules = [name for name in layers if name not in features]
    check_features(features, modules)
    find_modules(model, modules)
    return modules


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape}")
    if images.shape[0] == 0:
        raise ValueError("images is empty: a class needs at least one image")


def _channel_max(out: torch.Tensor) -> torch.Tensor:
    """(B, C) spatial maximum per channel (differentiable; the gradient goes to the argmax)."""
    return spatial_max(out)[0]


def _channel_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over space: (B, C, H, W) / (B, T, C) / (B, C) -> (B, C)."""
    if t.ndim == 4:
        return t.sum(dim=(2, 3))
    if t.ndim == 3:
        return t.sum(dim=1)
    return t


def _channels(out: torch.Tensor) -> int:
    return int(out.shape[2] if out.ndim == 3 else out.shape[1])


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        logits = output
    elif hasattr(output, "logits"):
        logits = output.logits
    elif isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        logits = output[0]
    else:
        raise ValueError(f"the model returned {type(output).__name__}, not logits")
    if logits.ndim != 2:
        raise ValueError(f"the model's logits have shape {tuple(logits.shape)}, not (B, classes)")
    return logits


def _checked_output(name: str, output: object) -> torch.Tensor:
    """A captured layer's output, kept as it is (in the graph) once its shape is checked."""
    if not isinstance(output, torch.Tensor) or output.ndim not in (2, 3, 4):
        kind = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(
            f"layer {name!r} outputs {kind}; expected a (B, C, H, W), (B, T, C) or (B, C) tensor"
        )
    return output


def _graph_start(name: str, output: object) -> torch.Tensor:
    """:func:`_checked_output`, and where the output is not yet in a graph, the start of one.

    With the parameters frozen and the images not requiring grad, nothing below the first
    captured layer is recorded: its output becomes a leaf and the graph starts there. A later
    layer that does not depend on an earlier captured one (a parallel branch) starts its own.
    Gradients with respect to the captured outputs are the same as through a graph from the
    images; only the stem's saved tensors, which no edge needs, are never kept.
    """
    output = _checked_output(name, output)
    if not output.requires_grad and output.is_floating_point():
        output.requires_grad_(True)
    return output


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters not requiring grad while the block runs (restored after).

    Edges need gradients with respect to layer outputs only; a parameter requiring grad makes
    every operation keep its inputs for a weight gradient no one takes.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _handed_on(
    ablate: tuple[str, np.ndarray] | None,
    features: Mapping[str, FeatureSpec],
    maps: dict[str, torch.Tensor],
) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """The output the rest of the network gets: a copy, with ``ablate``'s channels zeroed (or,
    when ``ablate`` names a feature layer, its features' decoder contribution subtracted).

    The copy means in-place ops downstream (ReLU(inplace)) cannot alter the kept tensor, and
    the gradient still reaches the kept tensor through it. The feature maps of the layer are
    stored in ``maps`` right away, before anything downstream runs: from the kept output (in
    its graph), or in an ablation pass from the copy, i.e. what the network goes on with.
    """

    def edit(name: str, output: torch.Tensor) -> torch.Tensor:
        copy = output.clone()
        if ablate is not None and ablate[0] == name:
            idx = torch.as_tensor(ablate[1], dtype=torch.long, device=output.device)
            if output.ndim == 3:
                copy[:, :, idx] = 0
            else:
                copy[:, idx] = 0
        elif ablate is not None and ablate[0] in features:
            spec = features[ablate[0]]
            if spec.source == name:
                spec.check(ablate[0], output)
                copy = copy - spec.decoded(spec.maps(output), ablate[1])
        for feature, spec in features.items():
            if spec.source == name:
                spec.check(feature, output)
                maps[feature] = spec.maps(output if ablate is None else copy)
        return copy

    return edit


def _run(
    model: nn.Module,
    layers: Sequence[str],
    clusters: Mapping[str, np.ndarray],
    x: torch.Tensor,
    ablate: tuple[str, np.ndarray] | None = None,
    features: Mapping[str, FeatureSpec] | None = None,
    keep: Callable[[str, object], torch.Tensor] = _checked_output,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One forward pass: the captured outputs, the feature maps and the logits, validated."""
    features = features or {}
    modules = [name for name in layers if name not in features]
    maps: dict[str, torch.Tensor] = {}
    edit = _handed_on(ablate, features, maps)
    with capture(model, modules, keep=keep, edit=edit) as outputs:
        logits = _logits(model(x))
    missing = [n for n in modules if n not in outputs]
    if missing:
        raise ValueError(f"layer(s) {missing} did not run in the forward pass")
    shared = [n for n in modules if outputs.calls[n] != 1]
    if shared:
        raise ValueError(
            f"layer(s) {shared} run more than once per forward pass (shared modules); "
            "pick modules that run once"
        )
    if list(outputs) != modules:
        raise ValueError(
            f"layers must be given in forward order; the forward pass completes them as "
            f"{list(outputs)}"
        )
    units = {**outputs, **maps}
    for name in layers:
        c = _channels(units[name])
        if len(clusters[name]) != c:
            kind = "features" if name in features else "channels"
            raise ValueError(
                f"cluster_of[{name!r}] has {len(clusters[name])} entries but the layer has "
                f"{c} {kind}"
            )
    return units, logits


def _members(ids: np.ndarray) -> dict[int, np.ndarray]:
    """Cluster id -> member channels, ids ascending; negative ids mean 'no cluster'."""
    return {int(c): np.flatnonzero(ids == c) for c in np.unique(ids) if c >= 0}


def _chunks(images: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    for lo in range(0, images.shape[0], batch_size):
        yield images[lo : lo + batch_size]


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _objective_grads(
    objectives: Mapping[int, torch.Tensor], low: torch.Tensor, *, batched: bool
) -> list[torch.Tensor] | None:
    """d(objective.sum()) / d(low) for every objective; None when ``low`` is not upstream.

    The batched path runs one backward pass for all objectives (a vmap over the
    vector-Jacobian product with the identity's rows), cutting the per-pass Python and
    dispatch overhead; the loop is the reference.
    """
    totals = [objective.sum() for objective in objectives.values()]
    if not low.requires_grad or not all(total.requires_grad for total in totals):
        return None  # no graph joins them (e.g. the objective is computed before ``low``)
    if batched and len(totals) > 1:
        try:
            with warnings.catch_warnings():
                # vmap warns when an op falls back to a slow per-row loop; still correct.
                warnings.simplefilter("ignore", UserWarning)
                (grads,) = torch.autograd.grad(
                    torch.stack(totals),
                    low,
                    grad_outputs=torch.eye(len(totals), dtype=low.dtype, device=low.device),
                    retain_graph=True,
                    allow_unused=True,
                    is_grads_batched=True,
                )
        except RuntimeError:
            grads = None
            batched = False
        else:
            return None if grads is None else list(grads.unbind(0))
    out = []
    for total in totals:
        (grad,) = torch.autograd.grad(total, low, retain_graph=True, allow_unused=True)
        if grad is None:
            return None
        out.append(grad)
    return out


def influence_edges(
    model: nn.Module,
    layers: Sequence[str],
    cluster_of: Mapping[str, Any] | Sequence[Any],
    images: torch.Tensor,
    class_index: int,
    upper_clusters: Mapping[str, Sequence[int]] | None = None,
    *,
    features: Mapping[str, FeatureSpec] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    include_prediction: bool = True,
    keep_nonpositive: bool = False,
    batch_size: int = 32,
    batched_backward: bool | None = None,
) -> InfluenceResult:
    """Gradient x activation influence between clusters of captured (or feature) layers.

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
        Feature layer name -> :class:`~carto_assets.core.attribution.features.FeatureSpec`; each
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
    modules = _check_layers(model, layers, features)
    clusters = _as_clusters(layers, cluster_of)
    _check_images(images)
    check_int("batch_size", batch_size, minimum=1)
    pairs = layer_pairs(layers, modules, features, pairs, include_prediction)
    uppers = list(dict.fromkeys(upper for _, upper in pairs if upper != PREDICTION))
    targets: dict[str, dict[int, np.ndarray]] = {}
    for upper in uppers:
        members = _members(clusters[upper])
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

    predicting = any(upper == PREDICTION for _, upper in pairs)
    # Pairs that differentiate the same objective at the same captured output (a channel
    # layer and the features read from it, into one upper layer) share one backward pass.
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for lower, upper in pairs:
        at = features[lower].source if lower in features else lower
        groups.setdefault((at, upper), []).append((lower, upper))
    # (pair, target cluster) -> per-unit contribution summed over images.
    sums: dict[tuple[str, str], dict[int, torch.Tensor]] = {p: {} for p in pairs}
    independent: set[tuple[str, str]] = set()
    nonzero: set[tuple[str, str]] = set()
    n_images = 0
    device = _device(model)
    if batched_backward is None:
        batched_backward = device.type != "cpu"
    was_training = model.training
    model.eval()
    try:
        for chunk in _chunks(images, batch_size):
            # The graph starts at the captured layers (see _graph_start): the memory is one
            # chunk's graph above the first captured layer, without weight-gradient inputs.
            with torch.enable_grad(), _frozen(model):
                outputs, logits = _run(
                    model, layers, clusters, chunk.to(device), features=features, keep=_graph_start
                )
                if predicting and not 0 <= class_index < logits.shape[1]:
                    raise ValueError(
                        f"class_index {class_index} is outside the model's {logits.shape[1]} logits"
                    )
                maxes = {name: _channel_max(outputs[name]) for name in uppers}
                for (at, upper), group in groups.items():
                    todo = [pair for pair in group if pair not in independent]
                    if not todo:
                        continue
                    objectives = (
                        {PREDICTION_CLUSTER: logits[:, class_index]}
                        if upper == PREDICTION
                        else {b: maxes[upper][:, m].sum(dim=1) for b, m in targets[upper].items()}
                    )
                    grads = _objective_grads(objectives, outputs[at], batched=batched_backward)
                    if grads is None:
                        independent.update(todo)
                        continue
                    for pair in todo:
                        for b, grad in zip(objectives, grads):
                            contrib = _contribution(pair[0], grad, outputs, features)
                            if bool((contrib != 0).any()):
                                nonzero.add(pair)
                            acc = sums[pair].get(b)
                            sums[pair][b] = contrib if acc is None else acc + contrib
            n_images += chunk.shape[0]
            del outputs, logits, maxes
    finally:
        model.train(was_training)

    cols: dict[str, list] = {k: [] for k in EDGE_COLUMNS}
    no_dependency = []
    for pair in pairs:
        lower, upper = pair
        if pair in independent or pair not in nonzero:
            no_dependency.append(pair)
            continue
        src = _members(clusters[lower])
        src_ids = np.array(sorted(src), dtype=np.int64)
        for b, acc in sums[pair].items():
            per_channel = acc.cpu().numpy() / n_images
            signed = np.array([per_channel[src[a]].sum() for a in src_ids], dtype=np.float64)
            weight = np.clip(signed, 0.0, None)
            total = weight.sum()
            share = weight / total if total > 0 else np.zeros_like(weight)
            keep = np.ones(len(src_ids), bool) if keep_nonpositive else weight > 0
            k = int(keep.sum())
            cols["source_layer"].extend([lower] * k)
            cols["source_cluster"].extend(src_ids[keep].tolist())
            cols["target_layer"].extend([upper] * k)
            cols["target_cluster"].extend([b] * k)
            cols["weight"].extend(weight[keep].tolist())
            cols["signed_weight"].extend(signed[keep].tolist())
            cols["share"].extend(share[keep].tolist())
    edges = _edge_arrays(cols)
    return InfluenceResult(
        edges=edges,
        no_dependency=tuple(no_dependency),
        class_index=int(class_index),
        n_images=n_images,
        seconds=time.perf_counter() - start,
    )


def _contribution(
    lower: str,
    grad: torch.Tensor,
    outputs: Mapping[str, torch.Tensor],
    features: Mapping[str, FeatureSpec],
) -> torch.Tensor:
    """Gradient x activation per unit of ``lower``, summed over space and images: (C,) float64.

    ``grad`` is the objective's gradient at the captured output ``lower`` is read from; for a
    feature layer it is projected onto the features (``W_dec^T grad``) first.
    """
    if lower in features:
        grad = features[lower].project(grad)
    return _channel_sum(grad * outputs[lower].detach()).double().sum(dim=0)


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
