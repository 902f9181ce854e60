"""Oracles for :mod:`carto_assets.core.similarity.sets` and
:mod:`carto_assets.core.similarity.pairs`.

``exact_pairs_dense`` evaluates every pair of a layer (quadratic, in row blocks that bound
memory): the tests check the fast pair finders against it and ``benchmarks/clustering.py``
times it as the naive method. ``neuron_sets_from_lists`` builds small ``NeuronSets`` from
Python lists.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from carto_assets.core.similarity.lsh import check_threshold
from carto_assets.core.similarity.pairs import SimilarPairs
from carto_assets.core.similarity.sets import (
    NeuronSets,
    build_neuron_sets,
    image_codes,
    incidence_matrix,
    layer_rows,
)
from carto_assets.core.validate import check_int


def neuron_sets_from_lists(
    sets: Sequence[Sequence[int]],
    *,
    layers: Sequence[object] | None = None,
    neuron_ids: Sequence[int] | None = None,
) -> NeuronSets:
    """Build ``NeuronSets`` from Python sets/lists (tests, small examples).

    Parameters
    ----------
    sets
        Image ids of each neuron.
    layers
        Layer key of each neuron; default: all in one layer.
    neuron_ids
        Neuron id of each neuron; default ``0..len(sets)-1``.

    Returns
    -------
    NeuronSets
        As built by ``build_neuron_sets``.
    """
    n = len(sets)
    ids = np.arange(n, dtype=np.int64) if neuron_ids is None else np.asarray(neuron_ids)
    lay = np.zeros(n, dtype=np.int64) if layers is None else np.asarray(layers)
    if len(ids) != n:
        raise ValueError(f"neuron_ids must have {n} entries (one per set), got {len(ids)}")
    lengths = [len(s) for s in sets]
    flat = np.fromiter((x for s in sets for x in s), dtype=np.int64, count=sum(lengths))
    owner = np.repeat(np.asarray(ids, dtype=np.int64), lengths)
    return build_neuron_sets(owner, flat, neurons_neuron_id=ids, neurons_layer=lay)


def exact_pairs_dense(
    sets: NeuronSets, *, threshold: float, block_entries: int = 1 << 23
) -> SimilarPairs:
    """Exact similar pairs by evaluating the full ``n_layer x n_layer`` Jaccard matrix.

    Quadratic reference: shared-image counts of a block of rows against the whole layer are
    materialised densely and every pair's Jaccard is computed and thresholded.

    Parameters
    ----------
    sets
        Neuron sets.
    threshold
        Jaccard threshold in ``(0, 1]``.
    block_entries
        Upper bound on dense matrix entries per block (at least one row per block).

    Returns
    -------
    SimilarPairs
        Same pairs as ``exact_pairs_inverted_index``.
    """
    threshold = check_threshold(threshold)
    block_entries = check_int("block_entries", block_entries, minimum=1)
    codes, n_codes = image_codes(sets)
    sizes = sets.sizes
    found_i, found_j, found_s = [], [], []
    for rows in layer_rows(sets):
        if rows.size < 2:
            continue
        x = incidence_matrix(sets, codes, n_codes, rows)
        postings = x.T.tocsr()
        layer_sizes = sizes[rows]
        step = max(1, block_entries // rows.size)
        col = np.arange(rows.size)
        for start in range(0, rows.size, step):
            inter = (x[start : start + step] @ postings).toarray()
            union = layer_sizes[start : start + step, None] + layer_sizes[None, :] - inter
            with np.errstate(invalid="ignore", divide="ignore"):
                sim = inter / union
            row = np.arange(start, start + inter.shape[0])
            r, c = np.nonzero((sim >= threshold) & (col[None, :] > row[:, None]))
            found_i.append(rows[r + start])
            found_j.append(rows[c])
            found_s.append(sim[r, c])
    if not found_i:
        empty = np.empty(0, dtype=np.int64)
        return SimilarPairs(empty, empty.copy(), np.empty(0, dtype=np.float64), sets.n_neurons)
    i = np.concatenate(found_i).astype(np.int64)
    j = np.concatenate(found_j).astype(np.int64)
    order = np.lexsort((j, i))
    return SimilarPairs(i[order], j[order], np.concatenate(found_s)[order], sets.n_neurons)


def top_sets_reference(maxima: np.ndarray, image_ids: Sequence[int], k: int) -> list[list[int]]:
    """Each unit's top-``k`` image ids, written out: every column sorted by (activation
    descending, image id ascending) in plain Python, cut at ``k``; a unit whose ``k``
    strongest activations are all equal gets no images (the dead-unit rule)."""
    out = []
    for column in np.asarray(maxima).T:
        ranked = sorted(zip(column.tolist(), image_ids), key=lambda pair: (-pair[0], pair[1]))[:k]
        values = [value for value, _ in ranked]
        out.append([] if max(values) == min(values) else sorted(i for _, i in ranked))
    return out
