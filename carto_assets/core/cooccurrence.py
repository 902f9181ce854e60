"""Neuron co-occurrence counts from top-activating images.

Two neurons co-occur once for every image that is in the top-k of both. The
counts are the positive "sentences" of the skip-gram embedding in
:mod:`carto_assets.core.skipgram.trainer`.

Pure numpy/scipy; no orchestration imports.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["cooccurrence_counts", "shared_image_counts"]


def _validate_ids(neuron_ids: np.ndarray, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    neuron_ids = np.asarray(neuron_ids)
    image_ids = np.asarray(image_ids)
    for name, arr in (("neuron_ids", neuron_ids), ("image_ids", image_ids)):
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must have an integer dtype, got {arr.dtype}")
    if neuron_ids.shape != image_ids.shape:
        raise ValueError(
            "neuron_ids and image_ids must have the same length, got "
            f"{neuron_ids.shape[0]} and {image_ids.shape[0]}"
        )
    for name, arr in (("neuron_ids", neuron_ids), ("image_ids", image_ids)):
        if arr.size and arr.min() < 0:
            raise ValueError(f"{name} must be non-negative, got minimum {int(arr.min())}")
    return neuron_ids.astype(np.int64, copy=False), image_ids.astype(np.int64, copy=False)


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)


def cooccurrence_counts(
    neuron_ids: np.ndarray, image_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, for every pair of neurons, how many top images they share.

    Parameters
    ----------
    neuron_ids, image_ids : np.ndarray
        1-D non-negative integer arrays of equal length; row ``i`` says that image
        ``image_ids[i]`` is among the top-activating images of neuron
        ``neuron_ids[i]`` (one row of ``top_images``). Pairs across layers count
        like any other. Repeated ``(neuron, image)`` rows are counted once.

    Returns
    -------
    neuron_a, neuron_b, count : np.ndarray
        int64 arrays of equal length, one entry per co-occurring pair with
        ``neuron_a < neuron_b`` and ``count >= 1``, sorted by ``(neuron_a, neuron_b)``.
        Pairs that share no image are absent (sparse output).

    Raises
    ------
    ValueError
        If the arrays are not 1-D integer arrays of equal length or contain
        negative ids.

    Notes
    -----
    The counts are the upper triangle of ``M @ M.T`` with ``M`` the sparse
    neuron-by-image incidence matrix. Sparse-sparse multiplication does work
    proportional to ``sum over images of deg(image)**2`` plus the output size, so
    the cost follows the number of co-occurring pairs and never ``n_neurons**2``.
    Ids are compacted with ``np.unique`` first, so large or sparse image ids cost
    nothing extra.
    """
    neuron_ids, image_ids = _validate_ids(neuron_ids, image_ids)
    if neuron_ids.size == 0:
        return _empty()
    neurons, neuron_idx = np.unique(neuron_ids, return_inverse=True)
    images, image_idx = np.unique(image_ids, return_inverse=True)
    incidence = sp.csr_matrix(
        (np.ones(neuron_idx.size, dtype=np.int64), (neuron_idx.ravel(), image_idx.ravel())),
        shape=(neurons.size, images.size),
    )
    # Duplicate (neuron, image) rows were summed by the constructor; one image
    # must count once per pair however often it is listed.
    incidence.sum_duplicates()
    incidence.data[:] = 1
    shared = sp.triu(incidence @ incidence.T, k=1, format="coo")
    order = np.lexsort((shared.col, shared.row))
    neuron_a = neurons[shared.row[order]].astype(np.int64, copy=False)
    neuron_b = neurons[shared.col[order]].astype(np.int64, copy=False)
    count = shared.data[order].astype(np.int64, copy=False)
    keep = count > 0
    return neuron_a[keep], neuron_b[keep], count[keep]


def shared_image_counts(
    neuron_ids: np.ndarray, image_ids: np.ndarray, n_neurons: int
) -> np.ndarray:
    """Per neuron, how many of its top images at least one other neuron shares.

    With one "sentence" per image listing the neurons that have it in their
    top-k, this is how many sentences of length >= 2 a neuron occurs in: the word
    frequency word2vec builds its negative-sampling distribution from. Pass it
    as ``negative_counts`` to :func:`carto_assets.core.skipgram.trainer.train_skipgram`.

    Parameters
    ----------
    neuron_ids, image_ids : np.ndarray
        Same as for :func:`cooccurrence_counts`.
    n_neurons : int
        Length of the result; every neuron id must be below it.

    Returns
    -------
    np.ndarray
        int64 (n_neurons,); 0 exactly for neurons that co-occur with nobody.

    Raises
    ------
    ValueError
        On the same bad inputs as :func:`cooccurrence_counts`, a negative
        ``n_neurons`` or a neuron id ``>= n_neurons``.
    """
    neuron_ids, image_ids = _validate_ids(neuron_ids, image_ids)
    if isinstance(n_neurons, bool) or not isinstance(n_neurons, (int, np.integer)) or n_neurons < 0:
        raise ValueError(f"n_neurons must be an integer >= 0, got {n_neurons!r}")
    if neuron_ids.size and neuron_ids.max() >= n_neurons:
        raise ValueError(f"neuron_ids must be < n_neurons={n_neurons}, got {int(neuron_ids.max())}")
    if neuron_ids.size == 0:
        return np.zeros(n_neurons, dtype=np.int64)
    pairs = np.unique(np.stack([image_ids, neuron_ids], axis=1), axis=0)
    image_start = np.r_[True, pairs[1:, 0] != pairs[:-1, 0]]
    image_index = np.cumsum(image_start) - 1
    holders = np.bincount(image_index)[image_index]
    return np.bincount(pairs[holders > 1, 1], minlength=n_neurons).astype(np.int64)
