"""The forward pass every attribution step shares: checked inputs, captured outputs, logits.

:class:`RetainedForward` runs the network once over a batch of images with the autograd graph
kept from the first captured layer up, so that the relevance pass
(:mod:`carto_assets.core.attribution.relevance`) and the edge passes
(:mod:`carto_assets.core.attribution.influence`) take their gradients from the same forward.
The parameters are frozen while it runs: no operation keeps its inputs for a weight gradient,
and nothing below the first captured layer is recorded (its output becomes the graph's leaf).

Units are channels of captured modules and, optionally, the features of a sparse autoencoder
read at one of them (*feature layers*, see :mod:`carto_assets.core.attribution.features`); a
unit layer is either. Every forward hook goes through
:func:`carto_assets.core.network.hooks.capture`.

This module never imports dagster.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from carto_assets.core.attribution.features import check_features
from carto_assets.core.network.hooks import capture, find_modules
from carto_assets.core.network.recorder import spatial_max
from carto_assets.core.sae.layer import FeatureLayer


def as_clusters(
    layers: Sequence[str], cluster_of: Mapping[str, Any] | Sequence[Any]
) -> dict[str, np.ndarray]:
    """``cluster_of`` (by layer name, or aligned with ``layers``) as int64 arrays, checked."""
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


def check_layers(
    model: nn.Module, layers: Sequence[str], features: Mapping[str, FeatureLayer]
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


def check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape}")
    if images.shape[0] == 0:
        raise ValueError("images is empty: a class needs at least one image")


def channel_max(out: torch.Tensor) -> torch.Tensor:
    """(B, C) spatial maximum per channel (differentiable; the gradient goes to the argmax)."""
    return spatial_max(out)[0]


def channel_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over space: (B, C, H, W) / (B, T, C) / (B, C) -> (B, C)."""
    if t.ndim == 4:
        return t.sum(dim=(2, 3))
    if t.ndim == 3:
        return t.sum(dim=1)
    return t


def n_channels(out: torch.Tensor) -> int:
    return int(out.shape[2] if out.ndim == 3 else out.shape[1])


def logits_of(output: Any) -> torch.Tensor:
    """The (B, classes) logits of a model's output (a tensor, ``.logits`` or a tuple's first)."""
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


def checked_output(name: str, output: object) -> torch.Tensor:
    """A captured layer's output, kept as it is (in the graph) once its shape is checked."""
    if not isinstance(output, torch.Tensor) or output.ndim not in (2, 3, 4):
        kind = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(
            f"layer {name!r} outputs {kind}; expected a (B, C, H, W), (B, T, C) or (B, C) tensor"
        )
    return output


def graph_start(name: str, output: object) -> torch.Tensor:
    """:func:`checked_output`, and where the output is not yet in a graph, the start of one.

    With the parameters frozen and the images not requiring grad, nothing below the first
    captured layer is recorded: its output becomes a leaf and the graph starts there. A later
    layer that does not depend on an earlier captured one (a parallel branch) starts its own.
    Gradients with respect to the captured outputs are the same as through a graph from the
    images; only the stem's saved tensors, which no edge needs, are never kept.
    """
    output = checked_output(name, output)
    if not output.requires_grad and output.is_floating_point():
        output.requires_grad_(True)
    return output


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Parameters not requiring grad while the block runs (restored after).

    Attribution needs gradients with respect to layer outputs only; a parameter requiring grad
    makes every operation keep its inputs for a weight gradient no one takes.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """The model in eval mode while the block runs (its mode restored after)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def handed_on(
    ablate: tuple[str, np.ndarray] | None,
    features: Mapping[str, FeatureLayer],
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
            ablated = features[ablate[0]]
            if ablated.source == name:
                ablated.check(output)
                copy = copy - ablated.decoded(ablated.maps(output), ablate[1])
        for feature, layer in features.items():
            if layer.source == name:
                layer.check(output)
                maps[feature] = layer.maps(output if ablate is None else copy)
        return copy

    return edit


def run_layers(
    model: nn.Module,
    layers: Sequence[str],
    clusters: Mapping[str, np.ndarray],
    x: torch.Tensor,
    ablate: tuple[str, np.ndarray] | None = None,
    features: Mapping[str, FeatureLayer] | None = None,
    keep: Callable[[str, object], torch.Tensor] = checked_output,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One forward pass: the captured outputs, the feature maps and the logits, validated."""
    features = features or {}
    modules = [name for name in layers if name not in features]
    maps: dict[str, torch.Tensor] = {}
    edit = handed_on(ablate, features, maps)
    with capture(model, modules, keep=keep, edit=edit) as outputs:
        logits = logits_of(model(x))
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
        c = n_channels(units[name])
        if len(clusters[name]) != c:
            kind = "features" if name in features else "channels"
            raise ValueError(
                f"cluster_of[{name!r}] has {len(clusters[name])} entries but the layer has "
                f"{c} {kind}"
            )
    return units, logits


def members_of(ids: np.ndarray) -> dict[int, np.ndarray]:
    """Cluster id -> member channels, ids ascending; negative ids mean 'no cluster'."""
    return {int(c): np.flatnonzero(ids == c) for c in np.unique(ids) if c >= 0}


def batches(images: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    for lo in range(0, images.shape[0], batch_size):
        yield images[lo : lo + batch_size]


def device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@dataclass
class RetainedForward:
    """One forward pass over a batch of images with its autograd graph kept.

    Attributes
    ----------
    layers
        Unit layers: captured module names in forward order and feature layer names.
    modules
        The captured modules among them, in forward order.
    features
        Feature layer name -> :class:`~carto_assets.core.sae.layer.FeatureLayer`.
    clusters
        Per unit layer, unit -> cluster id (negative: unclustered).
    outputs
        Per unit layer, its output (B, C, H, W) / (B, T, C) / (B, C) in the graph (feature
        layers: their maps, in the graph of their source's output).
    logits
        (B, outputs) in the graph.
    """

    layers: list[str]
    modules: list[str]
    features: dict[str, FeatureLayer]
    clusters: dict[str, np.ndarray]
    outputs: dict[str, torch.Tensor]
    logits: torch.Tensor
    #: (C, H, W) of one input image
    input_shape: tuple[int, ...]

    @classmethod
    def run(
        cls,
        model: nn.Module,
        layers: Sequence[str],
        cluster_of: Mapping[str, Any] | Sequence[Any],
        images: torch.Tensor,
        features: Mapping[str, FeatureLayer] | None = None,
        grad: bool = True,
    ) -> RetainedForward:
        """The forward pass, the model in eval mode and its parameters frozen while it runs
        (both restored after). ``images`` go to the model's device. ``grad=False`` keeps no
        autograd graph: the outputs serve ablations that restart from them, nothing more."""
        features = dict(features or {})
        modules = check_layers(model, layers, features)
        clusters = as_clusters(layers, cluster_of)
        check_images(images)
        with evaluating(model), frozen(model), torch.set_grad_enabled(grad):
            outputs, logits = run_layers(
                model,
                layers,
                clusters,
                images.to(device_of(model)),
                features=features,
                keep=graph_start if grad else checked_output,
            )
        shape = tuple(int(d) for d in images.shape[1:])
        return cls(list(layers), modules, features, clusters, outputs, logits, shape)

    @property
    def n_images(self) -> int:
        return int(self.logits.shape[0])

    def source(self, layer: str) -> str:
        """The captured module a unit layer is read at (itself for a channel layer)."""
        return self.features[layer].source if layer in self.features else layer

    def contribution(self, layer: str, grad: torch.Tensor) -> torch.Tensor:
        """Gradient x activation per image and unit of ``layer``, summed over space: (B, C)
        float64. ``grad`` is a gradient with respect to the captured output ``layer`` is read
        at; for a feature layer it is projected onto the features (``W_dec^T grad``) first."""
        if layer in self.features:
            grad = self.features[layer].project(grad)
        return channel_sum(grad * self.outputs[layer].detach()).double()

    def detached(self) -> dict[str, torch.Tensor]:
        """The captured modules' outputs without their graph (what an ablation restarts from)."""
        return {name: self.outputs[name].detach() for name in self.modules}

    def release(self) -> None:
        """Drop the autograd graph (its memory), keeping the outputs' and logits' values."""
        self.outputs = {name: out.detach() for name, out in self.outputs.items()}
        self.logits = self.logits.detach()
