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
import itertools
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from carto_assets.core.activations import spatial_max
from carto_assets.core.hooks import capture, find_modules
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


def _check_layers(model: nn.Module, layers: Sequence[str]) -> None:
    if isinstance(layers, str) or len(layers) == 0:
        raise ValueError(f"layers must be a non-empty list of module names, got {layers!r}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers contain duplicates: {list(layers)}")
    find_modules(model, layers)


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
) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """The output the rest of the network gets: a copy, with ``ablate``'s channels zeroed.

    The copy means in-place ops downstream (ReLU(inplace)) cannot alter the kept tensor, and
    the gradient still reaches the kept tensor through it.
    """

    def edit(name: str, output: torch.Tensor) -> torch.Tensor:
        copy = output.clone()
        if ablate is not None and ablate[0] == name:
            idx = torch.as_tensor(ablate[1], dtype=torch.long, device=output.device)
            if output.ndim == 3:
                copy[:, :, idx] = 0
            else:
                copy[:, idx] = 0
        return copy

    return edit


def _run(
    model: nn.Module,
    layers: Sequence[str],
    clusters: Mapping[str, np.ndarray],
    x: torch.Tensor,
    ablate: tuple[str, np.ndarray] | None = None,
    keep: Callable[[str, object], torch.Tensor] = _checked_output,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One forward pass: the captured outputs and the logits, validated."""
    with capture(model, layers, keep=keep, edit=_handed_on(ablate)) as outputs:
        logits = _logits(model(x))
    missing = [n for n in layers if n not in outputs]
    if missing:
        raise ValueError(f"layer(s) {missing} did not run in the forward pass")
    shared = [n for n in layers if outputs.calls[n] != 1]
    if shared:
        raise ValueError(
            f"layer(s) {shared} run more than once per forward pass (shared modules); "
            "pick modules that run once"
        )
    if list(outputs) != list(layers):
        raise ValueError(
            f"layers must be given in forward order; the forward pass completes them as "
            f"{list(outputs)}"
        )
    for name in layers:
        c = _channels(outputs[name])
        if len(clusters[name]) != c:
            raise ValueError(
                f"cluster_of[{name!r}] has {len(clusters[name])} entries but the layer has "
                f"{c} channels"
            )
    return outputs, logits


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
    include_prediction: bool = True,
    keep_nonpositive: bool = False,
    batch_size: int = 32,
    batched_backward: bool | None = None,
) -> InfluenceResult:
    """Gradient x activation influence between clusters of consecutive captured layers.

    Parameters
    ----------
    model
        The network; run in eval mode (its mode is restored afterwards), never modified.
    layers
        Captured module names in forward order (the order their outputs complete).
    cluster_of
        Per layer (a mapping by name, or a sequence aligned with ``layers``), a 1-D int array
        channel -> cluster id; negative ids are unclustered channels and are ignored.
    images
        (B, 3, H, W) normalized images of one class.
    class_index
        Logit of the prediction edges.
    upper_clusters
        Per upper layer, the cluster ids to compute incoming edges for (the graph's nodes);
        a layer that is absent gets all its clusters. The cost scales with these.
    include_prediction
        Also compute edges from the last layer's clusters to the prediction.
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
    _check_layers(model, layers)
    clusters = _as_clusters(layers, cluster_of)
    _check_images(images)
    check_int("batch_size", batch_size, minimum=1)
    targets: dict[str, dict[int, np.ndarray]] = {}
    for upper in layers[1:]:
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
        stray = sorted(set(upper_clusters) - set(layers[1:]))
        if stray:
            raise ValueError(
                f"upper_clusters names layer(s) {stray} that are not upper layers of {layers}"
            )

    pairs: list[tuple[str, str]] = list(itertools.pairwise(layers))
    if include_prediction:
        pairs.append((layers[-1], PREDICTION))
    # (pair, target cluster) -> per-channel contribution summed over images.
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
                outputs, logits = _run(model, layers, clusters, chunk.to(device), keep=_graph_start)
                if include_prediction and not 0 <= class_index < logits.shape[1]:
                    raise ValueError(
                        f"class_index {class_index} is outside the model's {logits.shape[1]} logits"
                    )
                maxes = {name: _channel_max(outputs[name]) for name in layers[1:]}
                for pair in pairs:
                    if pair in independent:
                        continue
                    lower, upper = pair
                    objectives = (
                        {PREDICTION_CLUSTER: logits[:, class_index]}
                        if upper == PREDICTION
                        else {b: maxes[upper][:, m].sum(dim=1) for b, m in targets[upper].items()}
                    )
                    low = outputs[lower]
                    grads = _objective_grads(objectives, low, batched=batched_backward)
                    if grads is None:
                        independent.add(pair)
                        continue
                    for b, grad in zip(objectives, grads):
                        contrib = _channel_sum(grad * low.detach()).double().sum(dim=0)
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
    class_index: int | None = None,
    batch_size: int = 32,
) -> tuple[float, dict[str, np.ndarray]]:
    """Check edge weights against what zeroing the source cluster really does.

    For each edge A -> B, A's channels are set to 0 at L's output (a forward hook replaces the
    output) and B's activation (sum of its members' spatial maxima, averaged over the images)
    is compared with the unablated pass. Gradient x activation is the first-order estimate of
    exactly this drop, in the same units, so the absolute drop is what the weights are ranked
    against; the relative drop is reported too. One forward pass per distinct source cluster.

    Parameters
    ----------
    model, layers, cluster_of, images
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
    _check_layers(model, layers)
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
            outputs, logits = _run(model, layers, clusters, chunk.to(device), ablate)
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
