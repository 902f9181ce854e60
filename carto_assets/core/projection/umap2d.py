"""The 2-D map of the concept embedding: UMAP with exact cosine neighbours, PCA for tiny inputs.

Pure numpy (umap-learn imported lazily); no orchestration imports.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from carto_assets.core.projection.neighbors import check_vectors, nearest_neighbors
from carto_assets.core.validate import check_float, check_int

__all__ = ["Projection", "ProjectionSettings", "project_2d"]

# Above this many points project_2d lets UMAP find approximate neighbours itself,
# because the exact O(n^2) search would dominate the run time.
EXACT_KNN_MAX_POINTS = 50_000


def _linear_layout(vectors: np.ndarray) -> np.ndarray:
    """Deterministic 2-D PCA layout for inputs too small for UMAP."""
    n = vectors.shape[0]
    layout = np.zeros((n, 2), dtype=np.float64)
    if n < 2:
        return layout.astype(np.float32)
    centred = vectors.astype(np.float64) - vectors.astype(np.float64).mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    n_comp = min(2, s.size)
    layout[:, :n_comp] = u[:, :n_comp] * s[:n_comp]
    # SVD signs are arbitrary; fix them so the layout is reproducible.
    for j in range(n_comp):
        col = layout[:, j]
        if col[np.argmax(np.abs(col))] < 0:
            layout[:, j] = -col
    scale = np.abs(layout).max()
    if scale > 0:
        layout /= scale
    return layout.astype(np.float32)


#: umap-learn's JIT-compiled functions that it does not cache on disk itself: compiled again in
#: every new process (4.5 s of each `carto run` on a 2-core machine; 0.4 s once cached).
UNCACHED_UMAP_KERNELS = (
    ("umap.umap_", "smooth_knn_dist"),
    ("umap.umap_", "compute_membership_strengths"),
    ("umap.layouts", "_nb_optimize_layout_euclidean_single_epoch"),
    ("umap.layouts", "_nb_optimize_layout_euclidean_single_epoch_parallel"),
)


def _umap():
    """umap-learn, imported on first use, with its uncached kernels cached by numba (in
    ``NUMBA_CACHE_DIR``) like its others; a kernel a umap-learn version lacks is skipped."""
    import importlib

    with warnings.catch_warnings():
        # umap warns at import that the optional TensorFlow (ParametricUMAP) is missing.
        warnings.simplefilter("ignore")
        import umap  # deferred: importing umap triggers numba compilation
    from numba.core.dispatcher import Dispatcher

    for module, name in UNCACHED_UMAP_KERNELS:
        kernel = getattr(importlib.import_module(module), name, None)
        if isinstance(kernel, Dispatcher) and type(kernel._cache).__name__ == "NullCache":
            kernel.enable_caching()
    return umap


class ProjectionSettings(Protocol):
    """UMAP's settings: a study's embedding block (a comparison's too) has them, as has
    :class:`Projection`."""

    @property
    def n_neighbors(self) -> int: ...
    @property
    def min_dist(self) -> float: ...


@dataclass(frozen=True)
class Projection:
    """:class:`ProjectionSettings` with the embedding block's defaults, for callers without a
    study."""

    n_neighbors: int = 15
    min_dist: float = 0.1


def project_2d(
    vectors: np.ndarray,
    settings: ProjectionSettings = Projection(),
    *,
    seed: int = 0,
) -> np.ndarray:
    """Lay the embedding out in 2-D with UMAP (cosine metric).

    Parameters
    ----------
    vectors : np.ndarray
        (n, dim) finite real array, e.g.
        :attr:`carto_assets.core.skipgram.trainer.SkipGramResult.vectors`.
    settings : ProjectionSettings
        A study's embedding block or :class:`Projection`: ``n_neighbors``, UMAP's
        neighbourhood size, >= 2, clamped to ``n - 1`` for small inputs; ``min_dist``, in
        ``[0, 1]`` (UMAP's spread is 1).
    seed : int
        UMAP ``random_state``; with it UMAP runs single-threaded and is reproducible.

    Returns
    -------
    np.ndarray
        float32 (n, 2), finite, one row per input row.

    Raises
    ------
    ValueError
        If ``vectors`` is not a finite 2-D real array or a parameter is out of range.

    Notes
    -----
    * ``n < 4``: UMAP needs at least 3 neighbours, so the layout is the first two
      principal components, scaled into ``[-1, 1]`` (zeros for ``n <= 1``).
    * ``4 <= n <= EXACT_KNN_MAX_POINTS``: the exact cosine neighbours from
      :func:`nearest_neighbors` are handed to UMAP as ``precomputed_knn``. That
      is deterministic and skips pynndescent, whose JIT-compiled NN-descent is
      not cached on disk by numba and costs ~20 s in every new process.
    * Larger ``n``: UMAP's own approximate neighbour search.
    * If UMAP ever returns non-finite coordinates, the PCA layout is returned.
    """
    vectors = check_vectors(vectors)
    n_neighbors, min_dist = settings.n_neighbors, settings.min_dist
    check_int("n_neighbors", n_neighbors, minimum=2)
    check_float("min_dist", min_dist, low=0, high=1)
    n = vectors.shape[0]
    if n < 4:
        return _linear_layout(vectors)

    umap = _umap()
    k = min(int(n_neighbors), n - 1)
    precomputed_knn = (None, None, None)
    if n <= EXACT_KNN_MAX_POINTS:
        idx, sim = nearest_neighbors(vectors, k - 1)
        # UMAP expects each point to be its own first neighbour at distance 0.
        knn_idx = np.concatenate([np.arange(n, dtype=np.int64)[:, None], idx], axis=1)
        knn_dist = np.concatenate(
            [np.zeros((n, 1), np.float32), np.clip(1.0 - sim, 0.0, 2.0).astype(np.float32)],
            axis=1,
        )
        precomputed_knn = (knn_idx, knn_dist)
    reducer = umap.UMAP(
        n_neighbors=k,
        min_dist=float(min_dist),
        n_components=2,
        metric="cosine",
        random_state=int(seed),
        precomputed_knn=precomputed_knn,
    )
    with warnings.catch_warnings():
        # Expected and harmless here: no search index for transform(), and
        # "n_jobs overridden by random_state" (determinism is the point).
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        layout = reducer.fit_transform(vectors.astype(np.float32))
    layout = np.asarray(layout, dtype=np.float32)
    if layout.shape != (n, 2) or not np.isfinite(layout).all():
        return _linear_layout(vectors)
    return layout
