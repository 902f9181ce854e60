"""The all-pairs skip-gram trainer: what ``benchmarks/embedding.py`` compares the product's
sentence trainer with (every co-occurring pair of an image's neurons, quadratic in the neurons
per image), and the co-occurrence counts it trains on. Benchmark code, not the product's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch

from carto_assets.core.skipgram.trainer import (
    SkipGramResult,
    check_hyperparameters,
    finish_training,
    sgd_epochs,
)
from carto_assets.core.validate import check_int


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
    as ``negative_counts`` to :func:`train_skipgram`.

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


def _validate_pairs(
    neuron_a: np.ndarray, neuron_b: np.ndarray, count: np.ndarray, n_neurons: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    check_int("n_neurons", n_neurons, minimum=0)
    arrays = {
        "neuron_a": np.asarray(neuron_a),
        "neuron_b": np.asarray(neuron_b),
        "count": np.asarray(count),
    }
    for name, arr in arrays.items():
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must have an integer dtype, got {arr.dtype}")
    lengths = {name: arr.shape[0] for name, arr in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"neuron_a, neuron_b and count must have equal lengths, got {lengths}")
    a, b, c = (arr.astype(np.int64, copy=False) for arr in arrays.values())
    if a.size:
        for name, arr in (("neuron_a", a), ("neuron_b", b)):
            if arr.min() < 0:
                raise ValueError(f"{name} must be non-negative, got {int(arr.min())}")
            if arr.max() >= n_neurons:
                raise ValueError(f"{name} must be < n_neurons={n_neurons}, got {int(arr.max())}")
        if c.min() < 1:
            raise ValueError(f"count must be >= 1, got {int(c.min())}")
        same = np.flatnonzero(a == b)
        if same.size:
            raise ValueError(
                f"neuron_a must differ from neuron_b, got neuron {int(a[same[0]])} paired "
                "with itself"
            )
    return a, b, c


def _validate_negative_counts(
    negative_counts: np.ndarray, n_neurons: int, isolated: np.ndarray
) -> np.ndarray:
    weights = np.asarray(negative_counts)
    if weights.shape != (n_neurons,):
        raise ValueError(
            f"negative_counts must have shape (n_neurons,) = ({n_neurons},), got {weights.shape}"
        )
    if not np.issubdtype(weights.dtype, np.number) or np.iscomplexobj(weights):
        raise ValueError(f"negative_counts must be real numbers, got dtype {weights.dtype}")
    weights = weights.astype(np.float64)
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("negative_counts must be finite and >= 0")
    if not (~isolated).any():
        return weights
    if not (weights[~isolated] > 0).any():
        raise ValueError("negative_counts must be positive for at least one co-occurring neuron")
    return weights


def train_skipgram(
    neuron_a: np.ndarray,
    neuron_b: np.ndarray,
    count: np.ndarray,
    n_neurons: int,
    *,
    dim: int = 30,
    epochs: int = 10,
    learning_rate: float = 0.07,
    negatives: int = 5,
    batch_size: int = 16384,
    negative_group_size: int = 16,
    num_threads: int | None = 1,
    negative_counts: np.ndarray | None = None,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> SkipGramResult:
    """Train a skip-gram embedding with negative sampling on neuron co-occurrences.

    Every co-occurrence is one training example in each direction: a pair with
    ``count = c`` contributes ``c`` examples with ``a`` as centre and ``b`` as
    context and ``c`` with the roles swapped. One epoch visits all
    ``2 * count.sum()`` examples once, in a fresh random order; that is exactly
    the set of (centre, context) pairs word2vec sees with one "sentence" per
    image and a window spanning the sentence. Each example gets ``negatives``
    negative contexts drawn from the unigram distribution raised to 0.75 (see
    ``negative_counts``), sampled exactly with an alias table.

    Parameters
    ----------
    neuron_a, neuron_b, count : np.ndarray
        Co-occurring pairs as returned by
        :func:`cooccurrence_counts`: equal-length
        1-D integer arrays, ids in ``[0, n_neurons)``, ``neuron_a != neuron_b``,
        ``count >= 1``. The order of the two ids does not matter.
    n_neurons : int
        Number of neurons, >= 0; every id in ``[0, n_neurons)`` gets a vector.
    dim, epochs, learning_rate, negatives, batch_size, negative_group_size, num_threads
        As :func:`carto_assets.core.skipgram.trainer.train_skipgram_sentences` (the
        product's trainer, which this one is measured against).
    negative_counts : np.ndarray, optional
        (n_neurons,) non-negative per-neuron frequencies for the negative
        distribution, at least one positive among non-isolated neurons. word2vec
        uses how many sentences a word occurs in; with one sentence per image
        that is :func:`shared_image_counts`, the
        recommended input (it gave slightly better neighbour precision in the
        benchmark). Default: each neuron's number of co-occurrences,
        ``count`` summed over its pairs, which needs only the pairs. Neurons with
        weight 0 are never drawn.
    seed : int
        Seeds the initialisation, shuffling and negative sampling.
    progress : callable, optional
        Called after each epoch as ``progress(epoch, mean_loss)``, epoch 1-based.

    Returns
    -------
    SkipGramResult
        Input vectors (the embedding), per-epoch mean loss and the ``isolated`` mask.

    Raises
    ------
    ValueError
        On a bad hyper-parameter or inconsistent pair arrays (see messages).
    FloatingPointError
        If training diverges to non-finite vectors (learning rate far too high).

    Notes
    -----
    Separate input and output vectors as in word2vec: input vectors start
    uniform in ``[-1/dim, 1/dim)`` (gensim's initialisation), output vectors at
    zero, and the input vectors are returned. Gradients are analytic
    (:func:`skipgram_batch_gradients`, checked against autograd in the tests)
    and applied with ``scatter_add_``, so a row that occurs several times in a
    batch receives the sum of its updates, computed from the batch's starting
    parameters.

    Defaults (10 epochs from a learning rate of 0.07) come from
    ``benchmarks/embedding.py``. Top-k co-occurrences give each neuron few
    examples (tens per epoch), and then word2vec's 5 epochs at 0.025 leave the
    vectors at their initialisation (neighbour precision near chance), while
    training much longer fits chance co-occurrences and lowers precision
    gradually. Too little training is the worse failure, so the defaults sit a
    little past the best setting of the benchmark's noisiest data. If most
    neurons' neighbours look random, raise ``epochs``; if concepts blur, lower it.

    Isolated neurons (in no pair) are never a centre or context, so their
    vector stays its random initialisation: finite, non-zero, short compared to
    trained vectors and uncorrelated with everything (with the default negative
    weights or ``shared_image_counts`` they are not drawn as negatives either).
    They are flagged in ``isolated`` so callers can grey them out or leave them
    off the map; their neighbours and positions mean nothing.

    Memory is O(n_neurons * dim + count.sum()). The same inputs and seed give
    bit-identical vectors for a given torch build and thread count: all
    randomness comes from a local ``torch.Generator`` and CPU ``scatter_add_``
    is deterministic.
    """
    check_hyperparameters(
        dim, epochs, learning_rate, negatives, batch_size, negative_group_size, num_threads
    )
    a_np, b_np, c_np = _validate_pairs(neuron_a, neuron_b, count, n_neurons)

    gen = torch.Generator().manual_seed(int(seed))
    w_in = (torch.rand(n_neurons, dim, generator=gen) * 2.0 - 1.0) / dim
    w_out = torch.zeros(n_neurons, dim)

    frequency = np.bincount(np.concatenate([a_np, b_np]), np.tile(c_np, 2), minlength=n_neurons)
    isolated = frequency == 0
    if negative_counts is not None:
        frequency = _validate_negative_counts(negative_counts, n_neurons, isolated)
    if a_np.size == 0:
        return SkipGramResult(w_in.numpy(), [], isolated)

    # Example i < T is (a -> b) of the pair owning co-occurrence i, i >= T the reverse.
    # int32 halves the largest allocation; ids are widened per batch.
    id_dtype = np.int32 if n_neurons <= np.iinfo(np.int32).max else np.int64
    a_rep = np.repeat(a_np.astype(id_dtype), c_np)
    b_rep = np.repeat(b_np.astype(id_dtype), c_np)
    centres_all = torch.from_numpy(np.concatenate([a_rep, b_rep]))
    contexts_all = torch.from_numpy(np.concatenate([b_rep, a_rep]))
    del a_rep, b_rep

    def every_pair(_epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.randperm(centres_all.numel(), generator=gen)
        return centres_all[order], contexts_all[order]

    losses = sgd_epochs(
        w_in,
        w_out,
        every_pair,
        frequency,
        isolated,
        epochs=epochs,
        learning_rate=learning_rate,
        negatives=negatives,
        batch_size=batch_size,
        negative_group_size=negative_group_size,
        num_threads=num_threads,
        gen=gen,
        progress=progress,
    )
    return finish_training(w_in, losses, isolated, learning_rate, batch_size)
