"""Exact cosine nearest neighbours of embedding vectors, chunked to bound memory.

Pure numpy; no orchestration imports.
"""

from __future__ import annotations

import numpy as np

from carto_assets.core.validate import check_int

__all__ = ["check_vectors", "nearest_neighbors"]

# Target number of similarity entries held at once by nearest_neighbors (64 MiB of float64).
_NN_CHUNK_ELEMENTS = 1 << 23


def check_vectors(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` as an array if it is a finite real (n, dim) array, else a ValueError."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D (n, dim), got shape {vectors.shape}")
    if not np.issubdtype(vectors.dtype, np.number) or np.iscomplexobj(vectors):
        raise ValueError(f"vectors must be real numbers, got dtype {vectors.dtype}")
    if not np.isfinite(vectors).all():
        bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        raise ValueError(
            f"vectors must be finite; {bad.size} row(s) contain NaN or inf, first row {bad[0]}"
        )
    return vectors


def nearest_neighbors(
    vectors: np.ndarray, k: int = 10, *, chunk_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine nearest neighbours of every row, excluding the row itself.

    Parameters
    ----------
    vectors : np.ndarray
        (n, dim) finite real array. All-zero rows have similarity 0 to everything.
    k : int
        Neighbours per row, >= 1. When ``n <= k`` only ``n - 1`` exist, so the
        result has ``min(k, n - 1)`` columns (no padding).
    chunk_size : int, optional
        Rows compared at once; memory is O(n * chunk_size). Default: as many
        rows as fit in about 8 million similarity entries.

    Returns
    -------
    neighbor_idx : np.ndarray
        int64 (n, min(k, n - 1)), most similar first.
    similarity : np.ndarray
        float32 (n, min(k, n - 1)), the matching cosine similarities.

    Notes
    -----
    Similarities are computed in float64 and ranked after rounding to float32.
    Ties (equal float32 similarity, e.g. duplicate or parallel vectors) are broken
    by the smaller neighbour index, including ties at the k-th place, so the
    result does not depend on the chunking or on partial-sort internals.
    """
    vectors = check_vectors(vectors)
    check_int("k", k, minimum=1)
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, minimum=1)
    n = vectors.shape[0]
    k_eff = min(int(k), max(n - 1, 0))
    neighbor_idx = np.empty((n, k_eff), dtype=np.int64)
    similarity = np.empty((n, k_eff), dtype=np.float32)
    if k_eff == 0:
        return neighbor_idx, similarity

    unit = vectors.astype(np.float64)
    norms = np.linalg.norm(unit, axis=1, keepdims=True)
    np.divide(unit, norms, out=unit, where=norms > 0)
    unit[norms[:, 0] == 0] = 0.0
    if chunk_size is None:
        chunk_size = max(1, _NN_CHUNK_ELEMENTS // n)
    kth_column = n - k_eff
    offsets = np.arange(k_eff)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        rows_in_chunk = stop - start
        # Rounding to float32 (the returned precision) makes equal similarities
        # compare equal whatever BLAS kernel the chunk shape selects.
        sims = (unit[start:stop] @ unit.T).astype(np.float32)
        sims[np.arange(rows_in_chunk), np.arange(start, stop)] = -np.inf
        kth_value = np.partition(sims, kth_column, axis=1)[:, kth_column]
        # Every entry tied with the k-th value is a candidate; sorting candidates
        # by (-similarity, index) makes the tie-break explicit.
        rows, cols = np.nonzero(sims >= kth_value[:, None])
        values = sims[rows, cols]
        order = np.lexsort((cols, -values, rows))
        first = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=rows_in_chunk))[:-1]])
        take = order[first[:, None] + offsets]
        neighbor_idx[start:stop] = cols[take]
        similarity[start:stop] = values[take]
    return neighbor_idx, similarity
