"""Linear CKA between layers of two networks on the same images (Kornblith et al., 2019).

For activations ``X`` (n images x p units) and ``Y`` (n x q) with centred columns,
``CKA = ||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F)``, which equals
``<K, L>_F / (||K||_F ||L||_F)`` for the Gram matrices ``K = XX'`` and ``L = YY'``. The Gram
form lets every pair of layers cost one dot product of two flattened ``n x n`` matrices, so a
model with many layers (googlenet's 25 blocks) is compared in seconds. CKA does not depend on
the units' order or scale (a channel-permuted copy gives 1), which makes it a measure
independent of the unit-by-unit matching.

Pure numpy; no dagster.
"""

from __future__ import annotations

import numpy as np


def centered_gram(x: np.ndarray) -> np.ndarray:
    """``Xc Xc'`` (float64, n x n) of activations ``x`` (n x p) with centred columns."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"activations must be 2-D (images, units), got shape {x.shape}")
    centred = x - x.mean(axis=0, keepdims=True)
    return centred @ centred.T


def cka_matrix(grams_a: list[np.ndarray], grams_b: list[np.ndarray]) -> np.ndarray:
    """Linear CKA of every pair ``(grams_a[i], grams_b[j])``; NaN where a layer's activations
    are constant over the images (its Gram matrix is zero)."""
    if not grams_a or not grams_b:
        return np.zeros((len(grams_a), len(grams_b)))
    n = grams_a[0].shape[0]
    if any(g.shape != (n, n) for g in (*grams_a, *grams_b)):
        raise ValueError("every Gram matrix must be n x n over the same n images")
    flat_a = np.stack([g.reshape(-1) for g in grams_a])
    flat_b = np.stack([g.reshape(-1) for g in grams_b])
    dots = flat_a @ flat_b.T
    norms = np.outer(np.linalg.norm(flat_a, axis=1), np.linalg.norm(flat_b, axis=1))
    out = np.full(dots.shape, np.nan)
    np.divide(dots, norms, out=out, where=norms > 0)
    return out
