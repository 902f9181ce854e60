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


def sample_set_size(top_k: int, fraction: float, n_sample: int) -> int:
    """Images in each unit's set measured on a sample of ``n_sample`` images: its top
    ``fraction`` of them, never fewer than ``top_k`` and never more than the sample.

    The share of the sample stays ``fraction`` whatever the dataset's size (the sample's
    size is fixed once the dataset is larger), so two units' similarity does not fall as the
    dataset grows; ``top_k`` is a floor for small samples, where a share would leave too few
    images to measure a Jaccard similarity on.
    """
    if n_sample < 1:
        raise ValueError(f"n_sample must be at least 1, got {n_sample}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    return int(min(n_sample, max(top_k, round(fraction * n_sample))))


def top_sets_of_matrix(
    maxima: np.ndarray,
    image_ids: np.ndarray,
    k: int,
    *,
    neuron_ids: np.ndarray,
    layers: np.ndarray,
    block_units: int = 256,
) -> NeuronSets:
    """Each unit's top-``k`` image set from a matrix of activations (rows: images).

    The order is ``top_images``' (activation descending, then image id ascending), so on a
    matrix of every image the sets equal the top-``k`` of ``top_images``. A unit whose ``k``
    strongest activations are all equal (a dead ReLU's zeros: its top-``k`` would be made by
    the image-id tie-break alone) gets an empty set, as
    :func:`~carto_assets.stages.clustering.load_neuron_sets` does.

    Parameters
    ----------
    maxima
        ``(n_images, n_units)`` activations; column ``u`` is unit ``neuron_ids[u]``.
    image_ids
        ``(n_images,)`` image ids, unique.
    k
        Images per set, ``1 <= k <= n_images``.
    neuron_ids, layers
        ``(n_units,)`` the units' ids and layer keys (as for :func:`build_neuron_sets`).
    block_units
        Units selected at once; bounds the temporary ``(block_units, n_images)`` arrays.

    Returns
    -------
    NeuronSets
        One row per unit, ascending neuron id.
    """
    maxima = np.asarray(maxima)
    ids = as_id_array("image_ids", image_ids)
    if maxima.ndim != 2 or maxima.shape[0] != ids.size:
        raise ValueError(
            f"maxima must be (n_images, n_units) with n_images = {ids.size}, got {maxima.shape}"
        )
    n_images, n_units = maxima.shape
    if not 1 <= k <= n_images:
        raise ValueError(f"k must be in [1, {n_images}] (the images), got {k}")
    if np.unique(ids).size != ids.size:
        raise ValueError("image_ids must be unique")
    # Rows in ascending image id: ties then go to the smaller id by row order.
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    found_unit, found_image = [], []
    for start in range(0, n_units, block_units):
        # (units, images), each unit's activations contiguous for the partition.
        block = np.ascontiguousarray(maxima[order, start : start + block_units].T)
        kth = -np.partition(-block, k - 1, axis=1)[:, k - 1 : k]  # each unit's k-th largest
        above = block > kth
        need = k - above.sum(axis=1, keepdims=True)
        at = block == kth
        # The k-th value's images by ascending id, as many as the set still needs.
        chosen = above | (at & (np.cumsum(at, axis=1) <= need))
        live = block.max(axis=1) > kth[:, 0]
        unit_rows, image_rows = np.nonzero(chosen[live])
        found_unit.append(np.flatnonzero(live)[unit_rows] + start)
        found_image.append(ids[image_rows])
    units = np.concatenate(found_unit) if found_unit else np.zeros(0, np.int64)
    images = np.concatenate(found_image) if found_image else np.zeros(0, np.int64)
    unit_ids = as_id_array("neuron_ids", neuron_ids)
    if unit_ids.size != n_units:
        raise ValueError(f"neuron_ids must have {n_units} entries (the units), got {unit_ids.size}")
    return build_neuron_sets(
        unit_ids[units], images, neurons_neuron_id=unit_ids, neurons_layer=layers
    )
