"""Oracles for :mod:`carto_assets.compare`: obviously right, slow.

- :func:`exact_best_matches`: every cross-model pair's Jaccard from Python sets, each unit's
  best match with the same tie rules (Jaccard, then rank footrule, then the same position among
  identical lists, then unit id);
- :func:`linear_cka`: Kornblith et al.'s feature-space formula;
- :func:`permute_builtin_channels`: a built-in CNN's state dict with the channels of every
  block permuted (the network computes the same function; its units are renumbered).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def exact_best_matches(
    sets: Sequence[dict[int, int]], study: Sequence[int], threshold: float
) -> dict[tuple[int, int], tuple[int, float, bool]]:
    """``{(unit, other_study): (match, jaccard, mutual)}`` for units with a match.

    ``sets[u]`` maps each of unit ``u``'s top images to its rank.
    """
    n = len(sets)
    # Units of one model with the same images in the same order: their position among them.
    seen: dict[tuple, int] = {}
    duplicate = []
    for u in range(n):
        key = (study[u], tuple(sorted(sets[u], key=sets[u].get)))
        duplicate.append(seen.get(key, 0))
        seen[key] = seen.get(key, 0) + 1
    best: dict[tuple[int, int], tuple[float, int, int, int]] = {}
    for u in range(n):
        for v in range(n):
            if study[u] == study[v] or not sets[u] or not sets[v]:
                continue
            a, b = set(sets[u]), set(sets[v])
            jaccard = len(a & b) / len(a | b)
            if jaccard < threshold:
                continue
            footrule = sum(abs(sets[u][x] - sets[v][x]) for x in a & b)
            key = (-jaccard, footrule, abs(duplicate[u] - duplicate[v]), v)
            if (u, study[v]) not in best or key < best[(u, study[v])]:
                best[(u, study[v])] = key
    out = {}
    for (u, other), (neg_j, _, _, v) in best.items():
        back = best.get((v, study[u]))
        out[(u, other)] = (v, -neg_j, back is not None and back[3] == u)
    return out


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """``||Yc' Xc||_F^2 / (||Xc' Xc||_F ||Yc' Yc||_F)`` with column-centred ``Xc``, ``Yc``."""
    xc = x - x.mean(axis=0)
    yc = y - y.mean(axis=0)
    cross = np.linalg.norm(yc.T @ xc) ** 2
    return float(cross / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))


def permute_builtin_channels(
    state: dict[str, torch.Tensor], permutations: dict[str, np.ndarray]
) -> dict[str, torch.Tensor]:
    """A :class:`~carto_assets.core.network.zoo.BuiltinCNN` state dict whose block ``name`` has its
    output channel ``c`` moved to ``permutations[name][c]``.

    Each block is conv (no bias) -> batch norm -> ReLU (-> max pool), so new channel
    ``p[c]`` computes what channel ``c`` did when the conv's output filters, the batch norm's
    parameters and the next conv's (or the head's) input channels move together.
    """
    out = {k: v.clone() for k, v in state.items()}
    blocks = sorted(
        {k.split(".")[0] for k in state if k.startswith("block")}, key=lambda b: int(b[5:])
    )
    previous: np.ndarray | None = None
    for name in blocks:
        perm = permutations.get(name)
        inverse = None if perm is None else torch.from_numpy(np.argsort(perm))
        weight = out[f"{name}.0.weight"]
        if previous is not None:
            weight = weight[:, previous]
        if inverse is not None:
            weight = weight[inverse]
            for field in ("weight", "bias", "running_mean", "running_var"):
                out[f"{name}.1.{field}"] = out[f"{name}.1.{field}"][inverse]
        out[f"{name}.0.weight"] = weight.contiguous()
        previous = inverse
    if previous is not None:
        out["head.2.weight"] = out["head.2.weight"][:, previous].contiguous()
    return out
