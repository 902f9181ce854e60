"""Neurons' top-k image sets, the input of clustering (pure computation).

A neuron is described by the set of image ids among its top-k activating images; two neurons
of one layer that share many of these images respond to the same things. ``build_neuron_sets``
turns the ``top_images`` and ``neurons`` columns into one CSR collection (``NeuronSets``): row
``r`` is the set ``indices[indptr[r]:indptr[r + 1]]``, so millions of neurons need no Python
object each.

``pair_jaccard`` gives the exact Jaccard similarity ``|A & B| / |A | B|`` of row pairs from
shared-image counts. Every pair finder in :mod:`carto_assets.core.similarity.pairs` divides the same
integers (``jaccard_from_counts``), so a pair gets a bit-equal similarity whichever method
found it. The other helpers (``sub_positions``, ``image_codes``, ``incidence_matrix``,
``layer_rows``) slice the collection for the pair finders.

Conventions: rows are indexed ``0..n-1`` in ascending ``neuron_id`` order; the Jaccard
similarity of two empty sets is defined as 0, so neurons without top images are never paired.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from carto_assets.core.similarity.minhash import as_id_array, unique_inverse

_CONFIRM_CHUNK = 1 << 13


@dataclass(frozen=True, eq=False)
class NeuronSets:
    """Top-k image-id sets of neurons in CSR layout.

    Attributes
    ----------
    neuron_ids
        ``(n,)`` int64, strictly ascending; row ``r`` is neuron ``neuron_ids[r]``.
    layers
        ``(n,)`` int64 layer code of each row, an index into ``layer_values``.
    layer_values
        ``(n_layers,)`` distinct layer keys in ascending order (pass ``layer_index`` to
        get network order).
    indptr
        ``(n + 1,)`` int64 row pointers.
    indices
        ``(nnz,)`` int64 image ids, ascending and unique within each row.
    """

    neuron_ids: np.ndarray
    layers: np.ndarray
    layer_values: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray

    @property
    def n_neurons(self) -> int:
        """Number of neurons (rows)."""
        return int(self.neuron_ids.size)

    @property
    def sizes(self) -> np.ndarray:
        """``(n,)`` int64 set size of each row."""
        return np.diff(self.indptr)


def build_neuron_sets(
    neuron_id: np.ndarray,
    image_id: np.ndarray,
    *,
    neurons_neuron_id: np.ndarray,
    neurons_layer: np.ndarray,
) -> NeuronSets:
    """Build per-neuron image-id sets from ``top_images`` and ``neurons`` columns.

    Parameters
    ----------
    neuron_id, image_id
        ``top_images.neuron_id`` and ``top_images.image_id`` (same length, non-negative
        integers). Filter by ``rank`` beforehand to choose k. Repeated ``(neuron, image)``
        rows (e.g. one image at several positions) count once: these are sets.
    neurons_neuron_id
        ``neurons.neuron_id``, unique. Neurons without top images get an empty set.
    neurons_layer
        ``neurons.layer_index`` (or ``neurons.layer``): the layer key of each neuron.
        Pairs and clusters never cross layers; clusters are numbered in ascending key order.

    Returns
    -------
    NeuronSets
        One row per neuron of ``neurons``, ascending neuron id.

    Raises
    ------
    ValueError
        On length mismatches, negative or non-integer ids, duplicated neuron ids, or a
        ``top_images`` neuron that is missing from ``neurons``.
    """
    nid = as_id_array("neuron_id", neuron_id)
    iid = as_id_array("image_id", image_id)
    if nid.size != iid.size:
        raise ValueError(
            f"neuron_id and image_id must have the same length, got {nid.size} and {iid.size}"
        )
    all_ids = as_id_array("neurons_neuron_id", neurons_neuron_id)
    layer = np.asarray(neurons_layer)
    if layer.shape != all_ids.shape:
        raise ValueError(
            f"neurons_layer must have the same shape as neurons_neuron_id {all_ids.shape}, "
            f"got {layer.shape}"
        )
    order = np.argsort(all_ids, kind="stable")
    all_ids = all_ids[order]
    dup = np.flatnonzero(all_ids[1:] == all_ids[:-1])
    if dup.size:
        raise ValueError(f"neurons_neuron_id must be unique, {int(all_ids[dup[0]])} repeats")
    layer_values, layer_codes = np.unique(layer[order], return_inverse=True)
    n = all_ids.size

    row = np.searchsorted(all_ids, nid)
    found = row < n
    found[found] = all_ids[row[found]] == nid[found]
    if not found.all():
        missing = int(nid[np.flatnonzero(~found)[0]])
        raise ValueError(f"neuron_id {missing} in top_images is not in neurons_neuron_id")
    order = np.lexsort((iid, row))
    row, iid = row[order], iid[order]
    keep = np.ones(row.size, dtype=bool)
    keep[1:] = (row[1:] != row[:-1]) | (iid[1:] != iid[:-1])
    row, iid = row[keep], iid[keep]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=n), out=indptr[1:])
    return NeuronSets(
        neuron_ids=all_ids,
        layers=layer_codes.astype(np.int64).reshape(-1),
        layer_values=layer_values,
        indptr=indptr,
        indices=iid,
    )


def sub_positions(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row pointers and element positions of the sub-collection ``rows``."""
    sizes = indptr[rows + 1] - indptr[rows]
    sub_indptr = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=sub_indptr[1:])
    positions = np.repeat(indptr[rows] - sub_indptr[:-1], sizes) + np.arange(
        sub_indptr[-1], dtype=np.int64
    )
    return sub_indptr, positions


def image_codes(sets: NeuronSets) -> tuple[np.ndarray, int]:
    """Compact column code ``0..n_codes-1`` of every entry of ``sets.indices``, and ``n_codes``."""
    distinct, codes = unique_inverse(sets.indices)
    return codes, int(distinct.size)


def incidence_matrix(
    sets: NeuronSets, codes: np.ndarray, n_codes: int, rows: np.ndarray
) -> sp.csr_array:
    """Binary ``(len(rows), n_codes)`` CSR matrix of the given rows (columns: ``image_codes``)."""
    sub_indptr, positions = sub_positions(sets.indptr, rows)
    data = np.ones(positions.size, dtype=np.int32)
    return sp.csr_array((data, codes[positions], sub_indptr), shape=(rows.size, n_codes))


def layer_rows(sets: NeuronSets) -> list[np.ndarray]:
    """Rows of each layer code (ascending), one array per entry of ``sets.layer_values``."""
    order = np.argsort(sets.layers, kind="stable")
    bounds = np.searchsorted(sets.layers[order], np.arange(sets.layer_values.size + 1))
    return [order[bounds[k] : bounds[k + 1]] for k in range(sets.layer_values.size)]


def jaccard_from_counts(inter: np.ndarray, size_a: np.ndarray, size_b: np.ndarray) -> np.ndarray:
    """``inter / (size_a + size_b - inter)`` as float64; 0 where the union is empty."""
    # Every method divides the same integers, so equal pairs get bit-equal similarities.
    union = size_a + size_b - inter
    out = np.zeros(inter.shape, dtype=np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def pair_jaccard(sets: NeuronSets, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Exact Jaccard similarity of the given row pairs.

    Parameters
    ----------
    sets
        Neuron sets.
    i, j
        Row indices of equal length.

    Returns
    -------
    numpy.ndarray
        ``(p,)`` float64; 0 for two empty sets.
    """
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    if i.shape != j.shape or i.ndim != 1:
        raise ValueError(f"i and j must be 1-D of equal length, got {i.shape} and {j.shape}")
    n = sets.n_neurons
    if i.size and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n):
        raise ValueError(f"pair row indices must be in [0, {n}), got values outside")
    out = np.empty(i.size, dtype=np.float64)
    if i.size == 0:
        return out
    # Row-wise elementwise products only merge sorted rows, so raw image ids can serve as
    # column indices without compacting them (no column-sized allocation happens).
    if sets.indices.size and int(sets.indices.max()) < 2**62:
        n_cols = int(sets.indices.max()) + 1
        x = sp.csr_array(
            (np.ones(sets.indices.size, dtype=np.int32), sets.indices, sets.indptr),
            shape=(n, n_cols),
        )
    else:
        codes, n_codes = image_codes(sets)
        x = incidence_matrix(sets, codes, n_codes, np.arange(n, dtype=np.int64))
    sizes = sets.sizes
    for start in range(0, i.size, _CONFIRM_CHUNK):
        a = i[start : start + _CONFIRM_CHUNK]
        b = j[start : start + _CONFIRM_CHUNK]
        inter = np.asarray(x[a].multiply(x[b]).sum(axis=1)).reshape(-1).astype(np.int64)
        out[start : start + a.size] = jaccard_from_counts(inter, sizes[a], sizes[b])
    return out
