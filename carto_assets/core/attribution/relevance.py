"""Relevance: what a prediction uses, per unit, from one backward pass.

For an image and a target logit ``f`` (the class's, or the predicted one), a unit's relevance
is its gradient x activation for ``f``, summed over space:

    R_u = sum_positions  df/da_u(p) * a_u(p)

the first-order estimate of how much ``f`` would drop if the unit were zeroed, in the logit's
units (CRP's relevance of a channel concept, with the gradient as the propagation rule). A
feature of a sparse autoencoder read at layer S gets ``(W_dec^T g) * z`` (see
:mod:`carto_assets.core.attribution.features`). One backward pass from the target logits of
all images gives every captured layer's gradient at once, so every unit of every layer costs
one pass together (:func:`relevance`).

:func:`shares` normalizes each image's relevance by its layer's total absolute relevance (CRP's
``abs_norm``), so that every image counts the same when a class's scores are averaged.

This module never imports dagster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from carto_assets.core.attribution.forward import RetainedForward


@dataclass(frozen=True)
class Relevance:
    """Relevance of every unit for each image's target logit.

    Attributes
    ----------
    units
        Per unit layer, (B, C) float64: ``R_u`` of each image and unit.
    targets
        (B,) the logit each image's relevance is for.
    logits
        (B,) that logit's value.
    independent
        Unit layers the target logits do not depend on (no autograd path): their relevance is
        0 and they are listed here.
    grads
        Per captured module, the gradient of the target logits with respect to its output
        (kept only on request: :func:`relevance` with ``keep_grads``).
    """

    units: dict[str, np.ndarray]
    targets: np.ndarray
    logits: np.ndarray
    independent: tuple[str, ...]
    grads: dict[str, torch.Tensor] | None = None

    def totals(self) -> dict[str, np.ndarray]:
        """Per unit layer, (B,) the sum of its units' relevance (to compare with the logit)."""
        return {name: r.sum(axis=1) for name, r in self.units.items()}


def relevance(
    fwd: RetainedForward, targets: np.ndarray | int, *, keep_grads: bool = False
) -> Relevance:
    """One backward pass from each image's target logit to every captured layer.

    Parameters
    ----------
    fwd
        The forward pass (its graph is kept for later passes).
    targets
        The logit of each image ((B,) ints), or one logit for all.
    keep_grads
        Also return the gradients at the captured outputs (for relevance maps).
    """
    n, n_out = fwd.n_images, int(fwd.logits.shape[1])
    target = np.broadcast_to(np.asarray(targets, dtype=np.int64), (n,)).copy()
    bad = target[(target < 0) | (target >= n_out)]
    if len(bad):
        raise ValueError(f"class_index {int(bad[0])} is outside the model's {n_out} logits")
    index = torch.as_tensor(target, device=fwd.logits.device)
    chosen = fwd.logits.gather(1, index[:, None])[:, 0]
    wanted = [m for m in fwd.modules if fwd.outputs[m].requires_grad]
    grads: dict[str, torch.Tensor | None] = dict.fromkeys(fwd.modules)
    if wanted and chosen.requires_grad:
        found = torch.autograd.grad(
            chosen.sum(), [fwd.outputs[m] for m in wanted], retain_graph=True, allow_unused=True
        )
        grads.update(zip(wanted, found))
    units: dict[str, np.ndarray] = {}
    independent = []
    for layer in fwd.layers:
        grad = grads[fwd.source(layer)]
        if grad is None:
            independent.append(layer)
            width = fwd.clusters[layer].shape[0]
            units[layer] = np.zeros((n, width), dtype=np.float64)
            continue
        units[layer] = fwd.contribution(layer, grad).cpu().numpy()
    kept = {k: g for k, g in grads.items() if g is not None} if keep_grads else None
    return Relevance(
        units=units,
        targets=target,
        logits=chosen.detach().double().cpu().numpy(),
        independent=tuple(independent),
        grads=kept,
    )


def shares(units: np.ndarray) -> np.ndarray:
    """Each image's relevance over its layer's total absolute relevance: (B, C) rows whose
    absolute values sum to 1 (all zeros where the layer has no relevance)."""
    total = np.abs(units).sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, units / np.where(total > 0, total, 1.0), 0.0)
