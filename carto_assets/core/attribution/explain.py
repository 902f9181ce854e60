"""Per-image explanations: which concepts drove an image's target logit, where, and how much
of the logit the concepts leave unexplained.

For an image, a target logit ``f`` and a unit layer, a *concept* is a cluster of the layer's
units (channels or dictionary features); its relevance is the sum of its members' relevance
(:mod:`carto_assets.core.attribution.relevance`: gradient x activation summed over space), and
its *map* the same sum kept per position, at the layer's resolution (tokens for a ViT). Summed
over every unit of a layer, relevance is ``g . a``; the *completeness gap* ``f - g . a`` is
what the layer's first-order decomposition does not account for (biases, nonlinearity,
a dictionary's reconstruction error) and is reported, not hidden.

:func:`pointing` measures where the positive relevance lies against an object mask (a
pointing-game figure); :func:`deletion_rows` and :func:`deletion_auc` build concept deletion
curves (C-Deletion): an image's concepts zeroed cumulatively in some order, the target logit
tracked.

This module never imports dagster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from carto_assets.core.attribution.ablation import Row
from carto_assets.core.attribution.forward import RetainedForward
from carto_assets.core.attribution.relevance import Relevance


@dataclass(frozen=True)
class LayerConcepts:
    """One unit layer's concepts for a batch of images.

    Attributes
    ----------
    clusters
        (K,) the layer's cluster ids, ascending.
    relevance
        (B, K) each concept's relevance per image.
    unclustered
        (B,) the relevance of the layer's units that belong to no cluster.
    total
        (B,) the relevance of all the layer's units (``g . a``).
    scale
        (B,) the layer's total absolute relevance per image (what ``share`` divides by).
    """

    clusters: np.ndarray
    relevance: np.ndarray
    unclustered: np.ndarray
    total: np.ndarray
    scale: np.ndarray

    @property
    def share(self) -> np.ndarray:
        """(B, K) relevance over the layer's total absolute relevance (0 where it is 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.scale[:, None] > 0, self.relevance / self.scale[:, None], 0.0)


def layer_concepts(units: np.ndarray, cluster_of: np.ndarray) -> LayerConcepts:
    """Concepts of one layer from its units' relevance ``units`` (B, C) and ``cluster_of``
    (C,) (negative: no cluster)."""
    cluster_of = np.asarray(cluster_of, dtype=np.int64)
    if units.shape[1] != len(cluster_of):
        raise ValueError(
            f"relevance has {units.shape[1]} units but cluster_of has {len(cluster_of)}"
        )
    clusters, index = np.unique(cluster_of[cluster_of >= 0], return_inverse=True)
    relevance = np.zeros((units.shape[0], len(clusters)))
    np.add.at(relevance.T, index, units[:, cluster_of >= 0].T)
    return LayerConcepts(
        clusters=clusters,
        relevance=relevance,
        unclustered=units[:, cluster_of < 0].sum(axis=1),
        total=units.sum(axis=1),
        scale=np.abs(units).sum(axis=1),
    )


def concept_maps(
    fwd: RetainedForward, rel: Relevance, layer: str, members: Sequence[np.ndarray]
) -> np.ndarray:
    """(B, K, H, W) float32: per image and concept (its ``members``), the relevance at each
    position of ``layer``'s output; tokens give (B, K, T, 1), vectors (B, K, 1, 1). Summing a
    map gives the concept's relevance. Needs ``rel`` with its gradients (``keep_grads``)."""
    if rel.grads is None:
        raise ValueError("concept maps need the relevance pass's gradients (keep_grads=True)")
    source = fwd.source(layer)
    grad = rel.grads.get(source)
    out = fwd.outputs[layer].detach()
    if grad is None:
        grad = torch.zeros_like(fwd.outputs[source])
    if layer in fwd.features:
        grad = fwd.features[layer].project(grad)
    per_unit = grad * out
    if per_unit.ndim == 3:  # (B, T, C) -> (B, C, T, 1)
        per_unit = per_unit.permute(0, 2, 1)[..., None]
    elif per_unit.ndim == 2:
        per_unit = per_unit[:, :, None, None]
    b, c, h, w = per_unit.shape
    # One product with the (units x concepts) membership matrix sums every concept's members.
    membership = torch.zeros(c, len(members), dtype=per_unit.dtype, device=per_unit.device)
    for k, m in enumerate(members):
        membership[torch.as_tensor(m, dtype=torch.long, device=per_unit.device), k] = 1.0
    maps = torch.einsum("bcp,ck->bkp", per_unit.reshape(b, c, h * w), membership)
    return maps.reshape(b, len(members), h, w).cpu().numpy().astype(np.float32)


def quantize(maps: np.ndarray) -> tuple[list[bytes], np.ndarray]:
    """Maps (N, H, W) as int8 bytes and a scale each: ``value ~= byte * scale`` (the largest
    absolute value of a map becomes 127). What the tables store."""
    flat = maps.reshape(maps.shape[0], -1)
    scale = np.abs(flat).max(axis=1) / 127.0
    safe = np.where(scale > 0, scale, 1.0)
    codes = np.clip(np.rint(flat / safe[:, None]), -127, 127).astype(np.int8)
    return [row.tobytes() for row in codes], scale


def dequantize(data: bytes, scale: float, height: int, width: int) -> np.ndarray:
    """The inverse of :func:`quantize` for one map."""
    codes = np.frombuffer(data, dtype=np.int8).astype(np.float32)
    return (codes * np.float32(scale)).reshape(height, width)


def mask_at(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """An image-sized boolean mask as the share of each cell of a ``height x width`` grid it
    covers (box averages; the grid tiles the image)."""
    m = np.asarray(mask, dtype=np.float64)
    rows = np.linspace(0, m.shape[0], height + 1).round().astype(int)
    cols = np.linspace(0, m.shape[1], width + 1).round().astype(int)
    out = np.zeros((height, width))
    for i in range(height):
        for j in range(width):
            cell = m[rows[i] : rows[i + 1], cols[j] : cols[j + 1]]
            out[i, j] = cell.mean() if cell.size else 0.0
    return out


def pointing(relevance_map: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(share of the map's positive relevance inside the mask, the mask's share of the image).

    The map is at its layer's resolution; the mask at the image's, reduced to the map's cells
    by area (:func:`mask_at`). With no positive relevance the share is NaN. A map with one
    cell (a vector layer) says nothing about where: its share is the mask's.
    """
    h, w = relevance_map.shape
    covered = mask_at(mask, h, w)
    positive = np.clip(relevance_map, 0, None)
    total = positive.sum()
    inside = float((positive * covered).sum() / total) if total > 0 else float("nan")
    return inside, float(np.asarray(mask, dtype=np.float64).mean())


def deletion_orders(
    relevance: np.ndarray, activation: np.ndarray, steps: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The first ``steps`` concepts in each order: ``relevance`` (most relevant first),
    ``activation`` (most active first) and ``random``."""
    k = min(steps, len(relevance))
    by_relevance = np.lexsort((np.arange(len(relevance)), -relevance))[:k]
    by_activation = np.lexsort((np.arange(len(activation)), -activation))[:k]
    return {
        "relevance": by_relevance,
        "activation": by_activation,
        "random": rng.permutation(len(relevance))[:k],
    }


def deletion_rows(
    image: int, layer: str, order: np.ndarray, members: Sequence[np.ndarray]
) -> list[Row]:
    """Ablation rows of one deletion curve: after step k, the first k concepts of ``order``
    (indices into ``members``) are zeroed together."""
    rows, removed = [], np.zeros(0, dtype=np.int64)
    for concept in order:
        removed = np.union1d(removed, np.asarray(members[int(concept)], dtype=np.int64))
        rows.append(Row(int(image), layer, removed.copy()))
    return rows


def deletion_auc(clean: float, curve: np.ndarray) -> float:
    """Area under a deletion curve: the mean over steps 0..k of the target logit relative to
    the clean logit (step 0 is the clean logit itself, 1). Lower: the logit fell faster."""
    if clean == 0:
        return float("nan")
    values = np.concatenate([[clean], np.asarray(curve, dtype=np.float64)]) / clean
    return float(values.mean())


def completeness(rel: Relevance) -> dict[str, np.ndarray]:
    """Per unit layer, (B,) the completeness gap: the target logit minus the layer's total
    relevance."""
    return {name: rel.logits - total for name, total in rel.totals().items()}


def members_list(cluster_of: np.ndarray, clusters: np.ndarray) -> list[np.ndarray]:
    """Each cluster's member units (``clusters`` in order)."""
    cluster_of = np.asarray(cluster_of)
    return [np.flatnonzero(cluster_of == c) for c in clusters]


def activation_of_concepts(
    fwd: RetainedForward, layer: str, members: Sequence[np.ndarray]
) -> np.ndarray:
    """(B, K) each concept's activation per image: the sum of its members' spatial maxima."""
    from carto_assets.core.attribution.forward import channel_max

    maxes = channel_max(fwd.outputs[layer].detach()).double().cpu().numpy()
    return np.stack([maxes[:, m].sum(axis=1) for m in members], axis=1)


def top_concepts(share: np.ndarray, k: int, apart: np.ndarray | None = None) -> np.ndarray:
    """Per image, the ``k`` concepts with the largest share (descending; ties: smaller index):
    (B, min(k, K)) indices.

    ``apart`` (bool per concept) marks concepts set apart, the always-on ones: the same ``k``
    are chosen, and those set apart follow the others (each part by share), so the first is
    the most relevant concept that is not always on wherever the ``k`` hold one."""
    k = min(k, share.shape[1])
    top = np.stack([np.lexsort((np.arange(len(row)), -row))[:k] for row in share])
    if apart is None or not np.any(apart) or top.size == 0:
        return top
    last = np.asarray(apart, dtype=bool)[top]
    order = np.argsort(last, axis=1, kind="stable")  # False (kept first) before True
    return np.take_along_axis(top, order, axis=1)


def dominant(maps: np.ndarray) -> np.ndarray:
    """(H, W) per cell, the index of the map with the largest positive value, -1 where no map
    is positive: the atlas of one image at one layer (``maps``: (K, H, W))."""
    if maps.shape[0] == 0:
        return np.full(maps.shape[1:], -1, dtype=np.int64)
    best = maps.argmax(axis=0)
    return np.where(maps.max(axis=0) > 0, best, -1)


__all__ = [
    "LayerConcepts",
    "activation_of_concepts",
    "completeness",
    "concept_maps",
    "deletion_auc",
    "deletion_orders",
    "deletion_rows",
    "dequantize",
    "dominant",
    "layer_concepts",
    "mask_at",
    "members_list",
    "pointing",
    "quantize",
    "top_concepts",
]
