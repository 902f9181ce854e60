"""Neuron clustering by Jaccard similarity of top-k image sets (pure computation).

Neurons of one layer whose top-k image-id sets have Jaccard similarity >= ``threshold``
are *similar pairs*; similar pairs are grouped into concept clusters.

Pipeline (each step is a module-level function so it can be wrapped as an asset):

1. ``build_neuron_sets`` turns the ``top_images`` and ``neurons`` columns into a CSR
   collection of sets (``NeuronSets``): one row per neuron, ascending neuron id.
2. Similar pairs, three interchangeable ways that return the same ``SimilarPairs``
   type: ``lsh_pairs`` (MinHash + LSH candidates, confirmed by exact Jaccard),
   ``exact_pairs_inverted_index`` (exact, image -> neurons postings) and
   ``exact_pairs_dense`` (exact, evaluates all n^2 pairs per layer; a reference).
3. ``group_neurons`` agglomerates the similar-pair graph without chaining.
4. ``describe_clusters``, ``cluster_purity``, ``random_baseline_purity``,
   ``pair_agreement`` and ``clustering_agreement`` label and evaluate clusters.

Conventions: rows are indexed ``0..n-1`` in ascending ``neuron_id`` order; every pair has
``i < j`` (row indices) and both rows in the same layer; the Jaccard similarity of two
empty sets is defined as 0, so neurons without top images are never paired.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from carto_assets.core.minhash import (
    Encoding,
    Scheme,
    as_id_array,
    check_bands_rows,
    check_positive_int,
    check_threshold,
    fmix,
    lsh_candidate_pairs,
    minhash_signatures,
    optimal_lsh_params,
    pairs_within_runs,
    unique_inverse,
)

Linkage = Literal["average", "complete", "single"]
LINKAGES: tuple[str, ...] = ("average", "complete", "single")
PairMethod = Literal["lsh", "inverted_index", "dense"]
PAIR_METHODS: tuple[str, ...] = ("lsh", "inverted_index", "dense")

_CONFIRM_CHUNK = 1 << 13
_FINGERPRINT_CHUNK = 1 << 20


# --------------------------------------------------------------------------- data types


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


@dataclass(frozen=True, eq=False)
class SimilarPairs:
    """Similar neuron pairs.

    Attributes
    ----------
    i, j
        ``(p,)`` int64 row indices with ``i < j``, unique, sorted by ``(i, j)``.
    jaccard
        ``(p,)`` float64 exact Jaccard similarity ``|A & B| / |A | B|`` of each pair.
    n_neurons
        Number of rows of the ``NeuronSets`` the indices refer to.
    """

    i: np.ndarray
    j: np.ndarray
    jaccard: np.ndarray
    n_neurons: int

    @property
    def n_pairs(self) -> int:
        """Number of pairs."""
        return int(self.i.size)


@dataclass(frozen=True, eq=False)
class LshPairs:
    """Result of ``lsh_pairs``.

    Attributes
    ----------
    pairs
        Confirmed pairs (exact Jaccard >= threshold).
    bands, rows
        LSH banding used.
    n_unique_sets
        Distinct non-empty sets that were signed (identical sets within a layer share
        one signature).
    n_candidates
        Candidate pairs of distinct sets proposed by LSH (before confirmation).
    largest_bucket
        Largest LSH bucket, in distinct sets.
    n_skipped_buckets
        Buckets dropped because they exceeded ``max_bucket_size``.
    """

    pairs: SimilarPairs
    bands: int
    rows: int
    n_unique_sets: int
    n_candidates: int
    largest_bucket: int
    n_skipped_buckets: int


@dataclass(frozen=True, eq=False)
class Clustering:
    """Cluster assignment of neurons.

    Attributes
    ----------
    neuron_ids
        ``(n,)`` neuron id of each row.
    labels
        ``(n,)`` int64 cluster id of each row in ``0..n_clusters-1``; clusters are numbered
        by layer code, then by smallest member neuron id. Unclustered neurons are singleton
        clusters.
    cluster_layers
        ``(n_clusters,)`` layer code of each cluster.
    cluster_sizes
        ``(n_clusters,)`` number of neurons in each cluster.
    """

    neuron_ids: np.ndarray
    labels: np.ndarray
    cluster_layers: np.ndarray
    cluster_sizes: np.ndarray

    @property
    def n_clusters(self) -> int:
        """Number of clusters, singletons included."""
        return int(self.cluster_sizes.size)


@dataclass(frozen=True, eq=False)
class Annotations:
    """Image annotations in long format, e.g. ``image_concepts(image_id, concept, value)``.

    Attributes
    ----------
    image_ids
        ``(m,)`` int64, ascending.
    codes
        ``(m,)`` int64 index into ``concepts``/``values``; ``(image, code)`` rows are unique.
    concepts, values
        Concept name and value of each code; codes are ordered by ``(concept, value)``.
    """

    image_ids: np.ndarray
    codes: np.ndarray
    concepts: tuple[str, ...]
    values: tuple[str, ...]


@dataclass(frozen=True)
class ConceptShare:
    """Fraction of a cluster's top images that carry ``concept=value``."""

    concept: str
    value: str
    fraction: float


@dataclass(frozen=True)
class ClusterDescription:
    """What the top images of one cluster have in common.

    Attributes
    ----------
    cluster_id
        Cluster id (``Clustering.labels`` value).
    size
        Number of neurons.
    n_images
        Number of distinct top images of the members (union).
    shares
        Dominant concept values, highest fraction first.
    text
        E.g. ``"colour=red (0.92), shape=star (0.61)"``; empty if nothing qualifies.
    """

    cluster_id: int
    size: int
    n_images: int
    shares: tuple[ConceptShare, ...]
    text: str


@dataclass(frozen=True, eq=False)
class PurityReport:
    """Per-cluster purity of multi-neuron clusters.

    Attributes
    ----------
    cluster_ids, sizes, n_images
        ``(c,)`` cluster id, neuron count and distinct top-image count (union).
    purity
        ``(c,)`` largest fraction of the cluster's images sharing one ``concept=value``.
    concepts, values
        The maximising concept and value per cluster (``""`` if no image is annotated).
    mean_purity
        Unweighted mean of ``purity`` (``nan`` if there is no multi-neuron cluster).
    """

    cluster_ids: np.ndarray
    sizes: np.ndarray
    n_images: np.ndarray
    purity: np.ndarray
    concepts: tuple[str, ...]
    values: tuple[str, ...]
    mean_purity: float


@dataclass(frozen=True, eq=False)
class BaselineReport:
    """Purity of random same-layer groups with the clusters' sizes.

    Attributes
    ----------
    cluster_ids
        ``(c,)`` multi-neuron clusters, as in ``PurityReport``.
    purity
        ``(c,)`` purity of the random stand-in for each cluster, averaged over draws.
    mean_purity
        Unweighted mean of ``purity``.
    n_draws, seed
        Draws averaged and the seed used.
    """

    cluster_ids: np.ndarray
    purity: np.ndarray
    mean_purity: float
    n_draws: int
    seed: int


@dataclass(frozen=True)
class PairAgreement:
    """Agreement of a candidate pair set with a reference pair set.

    ``recall = n_common / n_reference`` and ``precision = n_common / n_candidate``; either is
    1.0 when its denominator is 0.
    """

    n_reference: int
    n_candidate: int
    n_common: int
    recall: float
    precision: float


# ------------------------------------------------------------------------------ inputs


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


def _sub_positions(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row pointers and element positions of the sub-collection ``rows``."""
    sizes = indptr[rows + 1] - indptr[rows]
    sub_indptr = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=sub_indptr[1:])
    positions = np.repeat(indptr[rows] - sub_indptr[:-1], sizes) + np.arange(
        sub_indptr[-1], dtype=np.int64
    )
    return sub_indptr, positions


def _incidence(sets: NeuronSets, codes: np.ndarray, n_codes: int, rows: np.ndarray) -> sp.csr_array:
    """Binary ``(len(rows), n_codes)`` CSR matrix of the given rows."""
    sub_indptr, positions = _sub_positions(sets.indptr, rows)
    data = np.ones(positions.size, dtype=np.int32)
    return sp.csr_array((data, codes[positions], sub_indptr), shape=(rows.size, n_codes))


def _image_codes(sets: NeuronSets) -> tuple[np.ndarray, int]:
    distinct, codes = unique_inverse(sets.indices)
    return codes, int(distinct.size)


def _make_pairs(
    i: np.ndarray, j: np.ndarray, jaccard: np.ndarray, n: int, threshold: float
) -> SimilarPairs:
    keep = jaccard >= threshold
    i, j, jaccard = i[keep], j[keep], jaccard[keep]
    order = np.argsort(i * np.int64(n) + j, kind="stable")
    return SimilarPairs(i[order], j[order], jaccard[order], n)


def _jaccard_from_counts(inter: np.ndarray, size_a: np.ndarray, size_b: np.ndarray) -> np.ndarray:
    # Every method divides the same integers, so equal pairs get bit-equal similarities.
    union = size_a + size_b - inter
    out = np.zeros(inter.shape, dtype=np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


# ------------------------------------------------------------------------- exact pairs


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
        codes, n_codes = _image_codes(sets)
        x = _incidence(sets, codes, n_codes, np.arange(n, dtype=np.int64))
    sizes = sets.sizes
    for start in range(0, i.size, _CONFIRM_CHUNK):
        a = i[start : start + _CONFIRM_CHUNK]
        b = j[start : start + _CONFIRM_CHUNK]
        inter = np.asarray(x[a].multiply(x[b]).sum(axis=1)).reshape(-1).astype(np.int64)
        out[start : start + a.size] = _jaccard_from_counts(inter, sizes[a], sizes[b])
    return out


def confirm_pairs(
    sets: NeuronSets, i: np.ndarray, j: np.ndarray, *, threshold: float
) -> SimilarPairs:
    """Keep the candidate pairs whose exact Jaccard similarity is >= ``threshold``.

    Parameters
    ----------
    sets
        Neuron sets.
    i, j
        Candidate row pairs, in any order; self-pairs are dropped, duplicates merged.
    threshold
        Jaccard threshold in ``(0, 1]``.

    Returns
    -------
    SimilarPairs
        Confirmed pairs.
    """
    threshold = check_threshold(threshold)
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    n = sets.n_neurons
    key = np.unique((lo * np.int64(n) + hi)[lo != hi])
    lo, hi = key // n, key % n
    return _make_pairs(lo, hi, pair_jaccard(sets, lo, hi), n, threshold)


def _layer_rows(sets: NeuronSets) -> list[np.ndarray]:
    order = np.argsort(sets.layers, kind="stable")
    bounds = np.searchsorted(sets.layers[order], np.arange(sets.layer_values.size + 1))
    return [order[bounds[k] : bounds[k + 1]] for k in range(sets.layer_values.size)]


def exact_pairs_inverted_index(
    sets: NeuronSets, *, threshold: float, block_rows: int = 512
) -> SimilarPairs:
    """Exact similar pairs through an inverted index (image -> neurons of the layer).

    For each block of neurons, every image's posting list is walked to count shared
    images with every other neuron of the layer (a sparse ``X @ X.T`` product, where
    ``X.T`` in CSR form *is* the inverted index). Work is proportional to
    ``sum(posting_length ** 2)``, not to ``n ** 2``.

    Parameters
    ----------
    sets
        Neuron sets.
    threshold
        Jaccard threshold in ``(0, 1]``.
    block_rows
        Neurons per block; bounds the size of the intermediate count matrix.

    Returns
    -------
    SimilarPairs
        All within-layer pairs with Jaccard >= ``threshold``.
    """
    threshold = check_threshold(threshold)
    block_rows = check_positive_int("block_rows", block_rows)
    codes, n_codes = _image_codes(sets)
    sizes = sets.sizes
    found_i, found_j, found_s = [], [], []
    for rows in _layer_rows(sets):
        if rows.size < 2:
            continue
        x = _incidence(sets, codes, n_codes, rows)
        postings = x.T.tocsr()
        for start in range(0, rows.size, block_rows):
            counts = (x[start : start + block_rows] @ postings).tocoo()
            r = counts.row.astype(np.int64) + start
            c = counts.col.astype(np.int64)
            upper = c > r
            r, c = r[upper], c[upper]
            inter = counts.data[upper].astype(np.int64)
            sim = _jaccard_from_counts(inter, sizes[rows[r]], sizes[rows[c]])
            keep = sim >= threshold
            found_i.append(rows[r[keep]])
            found_j.append(rows[c[keep]])
            found_s.append(sim[keep])
    return _concat_pairs(found_i, found_j, found_s, sets.n_neurons, threshold)


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
    block_entries = check_positive_int("block_entries", block_entries)
    codes, n_codes = _image_codes(sets)
    sizes = sets.sizes
    found_i, found_j, found_s = [], [], []
    for rows in _layer_rows(sets):
        if rows.size < 2:
            continue
        x = _incidence(sets, codes, n_codes, rows)
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
    return _concat_pairs(found_i, found_j, found_s, sets.n_neurons, threshold)


def _concat_pairs(
    found_i: list[np.ndarray],
    found_j: list[np.ndarray],
    found_s: list[np.ndarray],
    n: int,
    threshold: float,
) -> SimilarPairs:
    if not found_i:
        empty = np.empty(0, dtype=np.int64)
        return SimilarPairs(empty, empty.copy(), np.empty(0, dtype=np.float64), n)
    return _make_pairs(
        np.concatenate(found_i).astype(np.int64),
        np.concatenate(found_j).astype(np.int64),
        np.concatenate(found_s),
        n,
        threshold,
    )


# ---------------------------------------------------------------------------- LSH pairs


def identical_set_groups(sets: NeuronSets) -> np.ndarray:
    """Map every non-empty row to the first row of its layer with an identical set.

    Parameters
    ----------
    sets
        Neuron sets.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` int64: representative row (smallest row index with the same set in the
        same layer, possibly itself), or -1 for empty sets.
    """
    n = sets.n_neurons
    sizes = sets.sizes
    rep = np.full(n, -1, dtype=np.int64)
    nonempty = np.flatnonzero(sizes > 0)
    if nonempty.size == 0:
        return rep
    # Two independent order-free 64-bit fingerprints; equal sets always collide and the
    # explicit comparison below rejects the (astronomically rare) false collisions.
    # Computed over chunks of rows so the temporaries stay small.
    f1 = np.empty(nonempty.size, dtype=np.uint64)
    f2 = np.empty(nonempty.size, dtype=np.uint64)
    ends = sets.indptr[nonempty + 1]
    pos = 0
    while pos < nonempty.size:
        first = sets.indptr[nonempty[pos]]
        end = max(pos + 1, int(np.searchsorted(ends, first + _FINGERPRINT_CHUNK, side="right")))
        v = sets.indices[first : ends[end - 1]].astype(np.uint64)
        starts = sets.indptr[nonempty[pos:end]] - first
        mixed = fmix(v ^ np.uint64(0x243F6A8885A308D3), 64)
        f1[pos:end] = np.add.reduceat(mixed, starts)
        mixed = fmix(v * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x13198A2E03707344), 64)
        f2[pos:end] = np.bitwise_xor.reduceat(mixed, starts)
        pos = end
    order = np.lexsort((nonempty, f2, f1, sizes[nonempty], sets.layers[nonempty]))
    rows = nonempty[order]
    f1, f2 = f1[order], f2[order]
    same = (
        (sets.layers[rows[1:]] == sets.layers[rows[:-1]])
        & (sizes[rows[1:]] == sizes[rows[:-1]])
        & (f1[1:] == f1[:-1])
        & (f2[1:] == f2[:-1])
    )
    run_id = np.concatenate([[0], np.cumsum(~same)])
    first = np.flatnonzero(np.concatenate([[True], ~same]))
    rep[rows] = rows[first[run_id]]

    dup = rows[rep[rows] != rows]
    if dup.size:
        _, pos_d = _sub_positions(sets.indptr, dup)
        _, pos_r = _sub_positions(sets.indptr, rep[dup])
        mismatch = sets.indices[pos_d] != sets.indices[pos_r]
        bad = np.logical_or.reduceat(mismatch, np.cumsum(sizes[dup]) - sizes[dup])
        rep[dup[bad]] = dup[bad]
    return rep


def lsh_pairs(
    sets: NeuronSets,
    *,
    threshold: float,
    num_perm: int = 128,
    seed: int = 1,
    bands: int | None = None,
    rows: int | None = None,
    weights: tuple[float, float] = (0.05, 0.95),
    scheme: Scheme = "affine32",
    encoding: Encoding = "int64le",
    max_bucket_size: int | None = None,
    signatures: np.ndarray | None = None,
) -> LshPairs:
    """Similar pairs via MinHash + LSH, confirmed by exact Jaccard.

    Identical non-empty sets within a layer are collapsed first (they are similar pairs
    with Jaccard 1 and would otherwise form one giant bucket in every band), so LSH,
    signatures and confirmation run on distinct sets; confirmed pairs are expanded back to
    all member neurons. Empty sets are never paired.

    Parameters
    ----------
    sets
        Neuron sets.
    threshold
        Jaccard threshold in ``(0, 1]`` for confirmation (and banding, if derived).
    num_perm, seed, scheme, encoding
        MinHash parameters, see ``carto_assets.core.minhash.minhash_signatures``.
    bands, rows
        LSH banding; give both or neither. If neither, derived from ``threshold``,
        ``num_perm`` and ``weights`` like datasketch's ``MinHashLSH``.
    weights
        ``(false_positive_weight, false_negative_weight)`` for deriving the banding. The
        default favours recall: a false positive only costs one exact confirmation, a
        false negative loses a pair (at threshold 0.5 this gives 26 x 3, which finds a
        pair of Jaccard 0.5 with probability 0.97; datasketch's (0.5, 0.5) gives 25 x 5
        and 0.55).
    max_bucket_size
        Optional cap on bucket size (in distinct sets); larger buckets are skipped and
        counted in ``n_skipped_buckets``.
    signatures
        Optional precomputed ``(n, >= bands * rows)`` signatures of every row (e.g. the
        ``minhash_signatures`` table); computed here when omitted.

    Returns
    -------
    LshPairs
        Confirmed pairs and LSH statistics. Pairs are a subset of the exact pairs.
    """
    threshold = check_threshold(threshold)
    num_perm = check_positive_int("num_perm", num_perm)
    if (bands is None) != (rows is None):
        raise ValueError(f"give both bands and rows or neither, got bands={bands}, rows={rows}")
    if bands is None:
        bands, rows = optimal_lsh_params(threshold, num_perm, weights)
    bands, rows = check_bands_rows(bands, rows, num_perm)

    n = sets.n_neurons
    rep = identical_set_groups(sets)
    reps = np.flatnonzero(rep == np.arange(n))
    if reps.size == n:
        sub_indptr, sub_indices = sets.indptr, sets.indices
    else:
        sub_indptr, positions = _sub_positions(sets.indptr, reps)
        sub_indices = sets.indices[positions]
        del positions
    if signatures is not None:
        if signatures.shape[0] != n or signatures.shape[1] < bands * rows:
            raise ValueError(
                f"signatures have shape {signatures.shape}; expected ({n}, >= {bands * rows})"
            )
        # Identical sets have identical signatures, so the representatives' rows suffice.
        signatures = np.ascontiguousarray(signatures[reps, : bands * rows])
    else:
        signatures = minhash_signatures(
            sub_indptr,
            sub_indices,
            num_perm=num_perm,
            seed=seed,
            scheme=scheme,
            encoding=encoding,
            columns=bands * rows,
        )
    candidates = lsh_candidate_pairs(
        signatures,
        sets.layers[reps],
        bands=bands,
        rows=rows,
        max_bucket_size=max_bucket_size,
    )
    ci, cj = reps[candidates.i], reps[candidates.j]
    sim = pair_jaccard(sets, ci, cj)
    keep = sim >= threshold
    pairs = _expand_identical(rep, ci[keep], cj[keep], sim[keep], n, threshold)
    return LshPairs(
        pairs=pairs,
        bands=bands,
        rows=rows,
        n_unique_sets=int(reps.size),
        n_candidates=int(candidates.i.size),
        largest_bucket=candidates.largest_bucket,
        n_skipped_buckets=candidates.n_skipped_buckets,
    )


def _expand_identical(
    rep: np.ndarray, ri: np.ndarray, rj: np.ndarray, sim: np.ndarray, n: int, threshold: float
) -> SimilarPairs:
    """Turn pairs of representative rows into pairs of all rows sharing those sets."""
    members = np.flatnonzero(rep >= 0)
    members = members[np.lexsort((members, rep[members]))]
    group_rep, group_start, group_size = np.unique(
        rep[members], return_index=True, return_counts=True
    )
    gi = np.searchsorted(group_rep, ri)
    gj = np.searchsorted(group_rep, rj)
    si, sj = group_size[gi], group_size[gj]
    count = si * sj
    pair = np.repeat(np.arange(ri.size), count)
    offset = np.arange(int(count.sum()), dtype=np.int64) - np.repeat(
        np.cumsum(count) - count, count
    )
    a = members[group_start[gi][pair] + offset // sj[pair]]
    b = members[group_start[gj][pair] + offset % sj[pair]]
    wi, wj = pairs_within_runs(members, group_size)
    i = np.concatenate([np.minimum(a, b), wi])
    j = np.concatenate([np.maximum(a, b), wj])
    s = np.concatenate([sim[pair], np.ones(wi.size)])
    return _make_pairs(i, j, s, n, threshold)


def similar_pairs(
    sets: NeuronSets, *, threshold: float, method: PairMethod = "lsh", **lsh_options: object
) -> SimilarPairs:
    """Similar pairs by ``method`` (``"lsh"``, ``"inverted_index"`` or ``"dense"``).

    ``lsh_options`` are passed to ``lsh_pairs`` and only allowed for ``"lsh"``.
    """
    if method not in PAIR_METHODS:
        raise ValueError(f"method must be one of {PAIR_METHODS}, got {method!r}")
    if method != "lsh" and lsh_options:
        raise ValueError(f"options {sorted(lsh_options)} only apply to method='lsh'")
    if method == "lsh":
        return lsh_pairs(sets, threshold=threshold, **lsh_options).pairs
    if method == "inverted_index":
        return exact_pairs_inverted_index(sets, threshold=threshold)
    return exact_pairs_dense(sets, threshold=threshold)


# ----------------------------------------------------------------------------- grouping


def agglomerate(
    n: int,
    i: np.ndarray,
    j: np.ndarray,
    similarity: np.ndarray,
    *,
    threshold: float,
    linkage: Linkage = "average",
) -> np.ndarray:
    """Agglomerate a sparse similarity graph; absent edges have similarity 0.

    Repeatedly merges the two clusters with the highest linkage while it is >= threshold;
    ties go to the pair whose smallest members are smallest. Linkage between clusters
    ``A`` and ``B`` over edge similarities ``s`` (absent edges count as 0):

    * ``"average"``: ``sum(s) / (|A| * |B|)``; every cluster's mean pairwise similarity
      stays >= threshold, so a chain of weakly linked neurons cannot grow into one cluster.
    * ``"complete"``: ``min(s)`` if all ``|A| * |B|`` edges exist, else 0 (clusters are
      cliques of the graph).
    * ``"single"``: ``max(s)``; connected components, i.e. plain union-find. It chains and
      is provided only as a baseline.

    Parameters
    ----------
    n
        Number of nodes.
    i, j, similarity
        Edges (``i != j``, each unordered pair at most once) and their similarities.
    threshold
        Minimum linkage for a merge, in ``(0, 1]``.
    linkage
        One of ``LINKAGES``.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` int64: the smallest node of each node's cluster.
    """
    threshold = check_threshold(threshold)
    if linkage not in LINKAGES:
        raise ValueError(f"linkage must be one of {LINKAGES}, got {linkage!r}")
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    similarity = np.asarray(similarity, dtype=np.float64)
    if not (i.shape == j.shape == similarity.shape) or i.ndim != 1:
        raise ValueError("i, j and similarity must be 1-D arrays of equal length")
    if i.size:
        if min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n:
            raise ValueError(f"edge endpoints must be in [0, {n})")
        if np.any(i == j):
            raise ValueError("edges must join distinct nodes (i != j)")
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        if np.unique(lo * np.int64(n) + hi).size != i.size:
            raise ValueError("each unordered pair may appear only once in the edges")

    node_min = np.arange(n, dtype=np.int64)
    if linkage == "single":
        strong = similarity >= threshold
        return _component_min(n, i[strong], j[strong])
    # Shortcut, exact for average and complete linkage: in a connected component whose
    # every node pair is an edge with similarity >= threshold, every possible merge has
    # linkage >= threshold, so the component always ends as one cluster. Components never
    # merge with each other (linkage 0), so the heap only needs the remaining components.
    comp = _component_min(n, i, j)
    comp_nodes = np.bincount(comp, minlength=n)
    comp_edges = np.bincount(comp[i], minlength=n)
    comp_min_sim = np.full(n, np.inf)
    np.minimum.at(comp_min_sim, comp[i], similarity)
    clique = (comp_edges * 2 == comp_nodes * (comp_nodes - 1)) & (comp_min_sim >= threshold)
    in_clique = clique[comp]
    node_min[in_clique] = comp[in_clique]
    rest = np.flatnonzero(~clique[comp[i]])
    if rest.size:
        # One small heap per component: merges never cross components, and small heaps
        # keep each pop cheap.
        rest = rest[np.argsort(comp[i[rest]], kind="stable")]
        bounds = np.flatnonzero(np.diff(comp[i[rest]])) + 1
        parent = np.arange(n, dtype=np.int64)
        for edges in np.split(rest, bounds):
            _heap_agglomerate(parent, i[edges], j[edges], similarity[edges], threshold, linkage)
        nodes = np.flatnonzero(~in_clique)
        node_min[nodes] = _smallest_member(parent)[nodes]
    return node_min


def _component_min(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Smallest node of each node's connected component."""
    graph = sp.coo_array((np.ones(i.size, dtype=np.int8), (i, j)), shape=(n, n)).tocsr()
    _, comp = connected_components(graph, directed=False)
    smallest = np.full(n, n, dtype=np.int64)
    np.minimum.at(smallest, comp, np.arange(n, dtype=np.int64))
    return smallest[comp]


def _smallest_member(parent: np.ndarray) -> np.ndarray:
    """Follow merge pointers to each node's final handle, then take the cluster minimum."""
    root = parent.copy()
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    smallest = np.full(parent.size, parent.size, dtype=np.int64)
    np.minimum.at(smallest, root, np.arange(parent.size, dtype=np.int64))
    return smallest[root]


def _heap_agglomerate(
    parent: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    similarity: np.ndarray,
    threshold: float,
    linkage: str,
) -> None:
    """Greedy best-linkage merging; records merge pointers ``parent[v] = absorber``."""
    # Cluster state is keyed by cluster handle; neighbour stats [sum, count, min, max] are
    # shared list objects between both endpoints so one in-place update serves both.
    size: dict[int, int] = {}
    smallest: dict[int, int] = {}
    version: dict[int, int] = {}
    nbr: dict[int, dict[int, list[float]]] = {}
    for a, b, s in zip(i.tolist(), j.tolist(), similarity.tolist()):
        for u in (a, b):
            if u not in nbr:
                nbr[u] = {}
                size[u] = 1
                smallest[u] = u
                version[u] = 0
        stat = [s, 1.0, s, s]
        nbr[a][b] = stat
        nbr[b][a] = stat

    def link(u: int, v: int, stat: list[float]) -> float:
        if linkage == "average":
            return stat[0] / (size[u] * size[v])
        if linkage == "complete":
            return stat[2] if stat[1] == size[u] * size[v] else 0.0
        return stat[3]

    def entry(u: int, v: int, value: float) -> tuple[float, int, int, int, int, int, int]:
        su, sv = smallest[u], smallest[v]
        if su > sv:
            u, v, su, sv = v, u, sv, su
        return (-value, su, sv, u, v, version[u], version[v])

    heap = []
    for u, neighbours in nbr.items():
        for v, stat in neighbours.items():
            if u < v:
                value = link(u, v, stat)
                if value >= threshold:
                    heap.append(entry(u, v, value))
    heapq.heapify(heap)

    while heap:
        _, _, _, u, v, vu, vv = heapq.heappop(heap)
        if version.get(u) != vu or version.get(v) != vv:
            continue
        # Keep the handle with more neighbours so only the smaller map is re-keyed.
        if len(nbr[u]) < len(nbr[v]):
            u, v = v, u
        keep, gone = nbr[u], nbr.pop(v)
        del keep[v]
        del gone[u]
        for c, stat in gone.items():
            other = nbr[c]
            del other[v]
            cur = keep.get(c)
            if cur is None:
                keep[c] = stat
                other[u] = stat
            else:
                cur[0] += stat[0]
                cur[1] += stat[1]
                cur[2] = min(cur[2], stat[2])
                cur[3] = max(cur[3], stat[3])
        parent[v] = u
        size[u] += size.pop(v)
        smallest[u] = min(smallest[u], smallest.pop(v))
        version[u] += 1
        del version[v]
        for c, stat in keep.items():
            value = link(u, c, stat)
            if value >= threshold:
                heapq.heappush(heap, entry(u, c, value))


def group_neurons(
    sets: NeuronSets,
    pairs: SimilarPairs,
    *,
    threshold: float,
    linkage: Linkage = "average",
) -> Clustering:
    """Cluster neurons from their similar pairs without chaining.

    Parameters
    ----------
    sets
        Neuron sets the pairs refer to.
    pairs
        Similar pairs (any method); all must lie within one layer.
    threshold
        Minimum linkage for a merge in ``(0, 1]``; normally the pair threshold.
    linkage
        ``"average"`` (default), ``"complete"`` or ``"single"`` (chaining baseline), see
        ``agglomerate``.

    Returns
    -------
    Clustering
        Deterministic cluster ids numbered by layer, then by smallest member neuron id.
    """
    if pairs.n_neurons != sets.n_neurons:
        raise ValueError(f"pairs refer to {pairs.n_neurons} neurons but sets have {sets.n_neurons}")
    if pairs.n_pairs and np.any(sets.layers[pairs.i] != sets.layers[pairs.j]):
        raise ValueError("pairs must join neurons of the same layer")
    root = agglomerate(
        sets.n_neurons, pairs.i, pairs.j, pairs.jaccard, threshold=threshold, linkage=linkage
    )
    return _number_clusters(sets, root)


def _number_clusters(sets: NeuronSets, root: np.ndarray) -> Clustering:
    roots = np.unique(root)
    # Rows ascend with neuron id, so the root row is the smallest member neuron id.
    order = np.lexsort((roots, sets.layers[roots]))
    cluster_of_root = np.empty(sets.n_neurons, dtype=np.int64)
    cluster_of_root[roots[order]] = np.arange(roots.size, dtype=np.int64)
    labels = cluster_of_root[root]
    return Clustering(
        neuron_ids=sets.neuron_ids,
        labels=labels,
        cluster_layers=sets.layers[roots[order]],
        cluster_sizes=np.bincount(labels, minlength=roots.size),
    )


def cluster_neurons(
    sets: NeuronSets,
    *,
    threshold: float,
    method: PairMethod = "lsh",
    linkage: Linkage = "average",
    **lsh_options: object,
) -> Clustering:
    """Similar pairs by ``method`` and then ``group_neurons`` at the same threshold."""
    pairs = similar_pairs(sets, threshold=threshold, method=method, **lsh_options)
    return group_neurons(sets, pairs, threshold=threshold, linkage=linkage)


def cluster_size_distribution(labels: np.ndarray) -> dict[int, int]:
    """Return ``{cluster size: number of clusters of that size}``, ascending by size."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return {}
    _, sizes = np.unique(labels, return_counts=True)
    values, counts = np.unique(sizes, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


# ----------------------------------------------------------------- labels and quality


def build_annotations(
    image_id: np.ndarray, concept: Sequence[object], value: Sequence[object]
) -> Annotations:
    """Encode image annotations given in long format.

    Parameters
    ----------
    image_id, concept, value
        Parallel columns, e.g. ``image_concepts(image_id, concept, value)``. To include
        class labels, append rows with ``concept="class"`` and the label as value.
        Concepts and values are compared as strings; an image may carry several values of
        one concept.

    Returns
    -------
    Annotations
        Deduplicated, sorted by image id.
    """
    iid = as_id_array("image_id", image_id)
    con = np.asarray(concept).astype(str)
    val = np.asarray(value).astype(str)
    if not (iid.size == con.size == val.size) or con.ndim != 1 or val.ndim != 1:
        raise ValueError(
            f"image_id, concept and value must be 1-D of equal length, got {iid.size}, "
            f"{con.size}, {val.size}"
        )
    con_names, con_code = np.unique(con, return_inverse=True)
    val_names, val_code = np.unique(val, return_inverse=True)
    pair_code = con_code.reshape(-1).astype(np.int64) * val_names.size + val_code.reshape(-1)
    distinct, codes = np.unique(pair_code, return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    order = np.lexsort((codes, iid))
    iid, codes = iid[order], codes[order]
    keep = np.ones(iid.size, dtype=bool)
    keep[1:] = (iid[1:] != iid[:-1]) | (codes[1:] != codes[:-1])
    return Annotations(
        image_ids=iid[keep],
        codes=codes[keep],
        concepts=tuple(str(c) for c in con_names[distinct // val_names.size]),
        values=tuple(str(v) for v in val_names[distinct % val_names.size]),
    )


def _group_code_counts(
    sets: NeuronSets,
    member_group: np.ndarray,
    member_row: np.ndarray,
    n_groups: int,
    annotations: Annotations,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct images per group and annotation counts per ``(group, code)``."""
    _, positions = _sub_positions(sets.indptr, member_row)
    group = np.repeat(member_group, sets.sizes[member_row])
    image = sets.indices[positions]
    order = np.lexsort((image, group))
    group, image = group[order], image[order]
    first = np.ones(group.size, dtype=bool)
    first[1:] = (group[1:] != group[:-1]) | (image[1:] != image[:-1])
    group, image = group[first], image[first]
    n_images = np.bincount(group, minlength=n_groups)

    lo = np.searchsorted(annotations.image_ids, image, side="left")
    hi = np.searchsorted(annotations.image_ids, image, side="right")
    count = hi - lo
    ann_pos = np.repeat(lo - (np.cumsum(count) - count), count) + np.arange(
        int(count.sum()), dtype=np.int64
    )
    n_codes = max(1, len(annotations.concepts))
    key = np.repeat(group, count) * np.int64(n_codes) + annotations.codes[ann_pos]
    key, hits = np.unique(key, return_counts=True)
    return n_images, key // n_codes, key % n_codes, hits


def _check_labels(sets: NeuronSets, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (sets.n_neurons,) or (labels.size and labels.dtype.kind not in "iu"):
        raise ValueError(
            f"labels must be an integer array of shape ({sets.n_neurons},), got "
            f"{labels.dtype} {labels.shape}"
        )
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be non-negative, got {int(labels.min())}")
    return labels.astype(np.int64)


def _multi_clusters(labels: np.ndarray, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    ids, sizes = np.unique(labels, return_counts=True)
    keep = sizes >= min_size
    return ids[keep], sizes[keep]


def _best_per_group(
    n_groups: int, group: np.ndarray, code: np.ndarray, hits: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Highest count per group (ties: smallest code) and its code (-1 if none)."""
    best_hits = np.zeros(n_groups, dtype=np.int64)
    best_code = np.full(n_groups, -1, dtype=np.int64)
    if group.size:
        order = np.lexsort((code, -hits, group))
        first = np.ones(order.size, dtype=bool)
        first[1:] = group[order][1:] != group[order][:-1]
        sel = order[first]
        best_hits[group[sel]] = hits[sel]
        best_code[group[sel]] = code[sel]
    return best_hits, best_code


def cluster_purity(
    sets: NeuronSets, labels: np.ndarray, annotations: Annotations, *, min_size: int = 2
) -> PurityReport:
    """Purity of every cluster with at least ``min_size`` neurons.

    Purity is the largest fraction of the cluster's distinct top images (the *union* of
    its members' top-k image ids, each image counted once) that share one
    ``concept=value``, maximised over all concepts (class labels included as a concept)
    and values. Unannotated images count in the denominator.

    Parameters
    ----------
    sets
        Neuron sets.
    labels
        ``(n,)`` cluster id per row (e.g. ``Clustering.labels``).
    annotations
        From ``build_annotations``.
    min_size
        Smallest cluster size reported.

    Returns
    -------
    PurityReport
        Per-cluster purity and the maximising concept value.
    """
    labels = _check_labels(sets, labels)
    min_size = check_positive_int("min_size", min_size)
    ids, sizes = _multi_clusters(labels, min_size)
    group_of_label = np.full(int(labels.max(initial=-1)) + 1, -1, dtype=np.int64)
    group_of_label[ids] = np.arange(ids.size)
    member_row = np.flatnonzero(group_of_label[labels] >= 0)
    n_images, group, code, hits = _group_code_counts(
        sets, group_of_label[labels[member_row]], member_row, ids.size, annotations
    )
    best_hits, best_code = _best_per_group(ids.size, group, code, hits)
    purity = np.zeros(ids.size, dtype=np.float64)
    np.divide(best_hits, n_images, out=purity, where=n_images > 0)
    return PurityReport(
        cluster_ids=ids,
        sizes=sizes,
        n_images=n_images,
        purity=purity,
        concepts=tuple(annotations.concepts[c] if c >= 0 else "" for c in best_code),
        values=tuple(annotations.values[c] if c >= 0 else "" for c in best_code),
        mean_purity=float(purity.mean()) if purity.size else float("nan"),
    )


def random_baseline_purity(
    sets: NeuronSets,
    labels: np.ndarray,
    annotations: Annotations,
    *,
    n_draws: int = 10,
    seed: int = 0,
    min_size: int = 2,
) -> BaselineReport:
    """Purity of random neuron groups matched to the clusters in size and layer.

    In each draw, every layer's neurons are shuffled and dealt, without replacement, into
    one random group per cluster (of at least ``min_size`` neurons) of that layer, with the
    cluster's size; purity is computed as in ``cluster_purity`` and averaged over draws.

    Parameters
    ----------
    sets, labels, annotations, min_size
        As in ``cluster_purity``.
    n_draws
        Number of random draws averaged.
    seed
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    BaselineReport
        Mean random purity per cluster and overall.
    """
    labels = _check_labels(sets, labels)
    min_size = check_positive_int("min_size", min_size)
    n_draws = check_positive_int("n_draws", n_draws)
    ids, sizes = _multi_clusters(labels, min_size)
    label_layer = np.unique(np.stack([labels, sets.layers]), axis=1)
    if np.any(label_layer[0, 1:] == label_layer[0, :-1]):
        bad = int(label_layer[0, 1:][label_layer[0, 1:] == label_layer[0, :-1]][0])
        raise ValueError(f"cluster {bad} spans several layers; clusters must lie in one layer")
    cluster_layer = label_layer[1, np.searchsorted(label_layer[0], ids)]
    rng = np.random.default_rng(seed)
    layer_rows = _layer_rows(sets)
    total = np.zeros(ids.size, dtype=np.float64)
    for _ in range(n_draws):
        member_group, member_row = [], []
        for layer, rows in enumerate(layer_rows):
            groups = np.flatnonzero(cluster_layer == layer)
            if groups.size == 0:
                continue
            dealt = rng.permutation(rows)[: int(sizes[groups].sum())]
            member_row.append(dealt)
            member_group.append(np.repeat(groups, sizes[groups]))
        if not member_row:
            break
        n_images, group, code, hits = _group_code_counts(
            sets, np.concatenate(member_group), np.concatenate(member_row), ids.size, annotations
        )
        best_hits, _ = _best_per_group(ids.size, group, code, hits)
        purity = np.zeros(ids.size, dtype=np.float64)
        np.divide(best_hits, n_images, out=purity, where=n_images > 0)
        total += purity
    purity = total / n_draws
    return BaselineReport(
        cluster_ids=ids,
        purity=purity,
        mean_purity=float(purity.mean()) if purity.size else float("nan"),
        n_draws=n_draws,
        seed=int(seed),
    )


def describe_clusters(
    sets: NeuronSets,
    labels: np.ndarray,
    annotations: Annotations,
    *,
    min_size: int = 2,
    values_per_concept: int = 2,
    max_terms: int = 4,
    min_fraction: float = 0.1,
) -> list[ClusterDescription]:
    """Name what the top images of each cluster have in common.

    For each cluster with at least ``min_size`` neurons, the fraction of its distinct top
    images (union over members) carrying each ``concept=value`` is computed; per concept the
    ``values_per_concept`` most frequent values with fraction >= ``min_fraction`` are kept,
    and the ``max_terms`` highest fractions overall (ties: concept, then value, by name)
    form the label, e.g. ``"class=goldfish (0.80), colour=red (0.92)"``.

    Parameters
    ----------
    sets, labels, annotations, min_size
        As in ``cluster_purity``. Class labels are the concept ``"class"`` if supplied.
    values_per_concept
        Values kept per concept.
    max_terms
        Terms in the label.
    min_fraction
        Smallest fraction reported, in ``[0, 1]``.

    Returns
    -------
    list of ClusterDescription
        One per cluster, ascending cluster id.
    """
    labels = _check_labels(sets, labels)
    min_size = check_positive_int("min_size", min_size)
    values_per_concept = check_positive_int("values_per_concept", values_per_concept)
    max_terms = check_positive_int("max_terms", max_terms)
    if not 0.0 <= float(min_fraction) <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction!r}")
    ids, sizes = _multi_clusters(labels, min_size)
    group_of_label = np.full(int(labels.max(initial=-1)) + 1, -1, dtype=np.int64)
    group_of_label[ids] = np.arange(ids.size)
    member_row = np.flatnonzero(group_of_label[labels] >= 0)
    n_images, group, code, hits = _group_code_counts(
        sets, group_of_label[labels[member_row]], member_row, ids.size, annotations
    )
    concept_names = np.asarray(annotations.concepts, dtype=object)
    value_names = np.asarray(annotations.values, dtype=object)
    # Sort terms by group, then fraction (desc), then concept/value names (code order).
    order = np.lexsort((code, -hits, group))
    group, code, hits = group[order], code[order], hits[order]
    bounds = np.searchsorted(group, np.arange(ids.size + 1))
    out = []
    for g in range(ids.size):
        shares: list[ConceptShare] = []
        per_concept: dict[str, int] = {}
        for c, h in zip(code[bounds[g] : bounds[g + 1]], hits[bounds[g] : bounds[g + 1]]):
            fraction = float(h) / float(n_images[g])
            concept = str(concept_names[c])
            if fraction < min_fraction or per_concept.get(concept, 0) >= values_per_concept:
                continue
            per_concept[concept] = per_concept.get(concept, 0) + 1
            shares.append(ConceptShare(concept, str(value_names[c]), fraction))
            if len(shares) == max_terms:
                break
        text = ", ".join(f"{s.concept}={s.value} ({s.fraction:.2f})" for s in shares)
        out.append(
            ClusterDescription(int(ids[g]), int(sizes[g]), int(n_images[g]), tuple(shares), text)
        )
    return out


def pair_agreement(reference: SimilarPairs, candidate: SimilarPairs) -> PairAgreement:
    """Recall and precision of ``candidate`` pairs against ``reference`` pairs.

    Parameters
    ----------
    reference
        E.g. exact pairs.
    candidate
        E.g. LSH pairs, over the same neuron sets.

    Returns
    -------
    PairAgreement
        Counts, recall and precision.
    """
    if reference.n_neurons != candidate.n_neurons:
        raise ValueError(
            f"pair sets refer to different neuron counts: {reference.n_neurons} and "
            f"{candidate.n_neurons}"
        )
    n = np.int64(reference.n_neurons)
    common = np.intersect1d(reference.i * n + reference.j, candidate.i * n + candidate.j).size
    n_ref, n_cand = reference.n_pairs, candidate.n_pairs
    return PairAgreement(
        n_reference=n_ref,
        n_candidate=n_cand,
        n_common=int(common),
        recall=common / n_ref if n_ref else 1.0,
        precision=common / n_cand if n_cand else 1.0,
    )


def clustering_agreement(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Adjusted Rand index between two clusterings of the same neurons (1 = identical)."""
    # Imported here: scikit-learn is slow to import and only needed for evaluation.
    from sklearn.metrics import adjusted_rand_score

    labels_a = np.asarray(labels_a)
    labels_b = np.asarray(labels_b)
    if labels_a.shape != labels_b.shape or labels_a.ndim != 1:
        raise ValueError(
            f"labels must be 1-D of equal length, got {labels_a.shape} and {labels_b.shape}"
        )
    return float(adjusted_rand_score(labels_a, labels_b))


def pairs_to_neuron_ids(sets: NeuronSets, pairs: SimilarPairs) -> dict[str, np.ndarray]:
    """Columns ``neuron_id_a, neuron_id_b, jaccard`` (``a < b``) for storing pairs as a table."""
    return {
        "neuron_id_a": sets.neuron_ids[pairs.i],
        "neuron_id_b": sets.neuron_ids[pairs.j],
        "jaccard": pairs.jaccard,
    }


@dataclass(frozen=True)
class MatchedBaselineReport:
    """Random groups scored on the *cluster's own* dominant concept value.

    ``purity`` holds, per cluster, the mean fraction of a random same-size group's top images
    (same layer) that carry the concept value the cluster is dominated by. Unlike
    :func:`random_baseline_purity` (each random group scored on its own best value), this is
    not inflated by values that dominate a whole layer's top images: it asks how often random
    neurons would show the cluster's concept.
    """

    cluster_ids: np.ndarray
    purity: np.ndarray
    mean_purity: float
    n_draws: int
    seed: int


def matched_random_baseline(
    sets: NeuronSets,
    labels: np.ndarray,
    annotations: Annotations,
    report: PurityReport,
    *,
    n_draws: int = 10,
    seed: int = 0,
) -> MatchedBaselineReport:
    """For each cluster of ``report``, the share of random groups' top images with its value.

    Random groups have the cluster's size and are drawn (seeded) from the cluster's layer.
    """
    labels = _check_labels(sets, labels)
    n_draws = check_positive_int("n_draws", n_draws)
    rng = np.random.default_rng(seed)
    code_of = {(c, v): k for k, (c, v) in enumerate(zip(annotations.concepts, annotations.values))}
    max_image = int(max(sets.indices.max(initial=0), annotations.image_ids.max(initial=0))) + 1
    has_code_cache: dict[int, np.ndarray] = {}

    def has_code(code: int) -> np.ndarray:
        if code not in has_code_cache:
            mask = np.zeros(max_image, dtype=bool)
            mask[annotations.image_ids[annotations.codes == code]] = True
            has_code_cache[code] = mask
        return has_code_cache[code]

    rows_of_layer = {
        int(layer): np.flatnonzero(sets.layers == layer) for layer in np.unique(sets.layers)
    }
    out = np.zeros(report.cluster_ids.size, dtype=np.float64)
    for idx, (cid, size, concept, value) in enumerate(
        zip(report.cluster_ids, report.sizes, report.concepts, report.values)
    ):
        if not concept:
            continue
        mask = has_code(code_of[(concept, value)])
        layer = int(sets.layers[np.flatnonzero(labels == cid)[0]])
        pool = rows_of_layer[layer]
        fractions = []
        for _ in range(n_draws):
            rows = rng.choice(pool, size=min(int(size), pool.size), replace=False)
            images = np.unique(
                np.concatenate([sets.indices[sets.indptr[r] : sets.indptr[r + 1]] for r in rows])
            )
            if images.size:
                fractions.append(float(mask[images].mean()))
        out[idx] = float(np.mean(fractions)) if fractions else 0.0
    return MatchedBaselineReport(
        cluster_ids=report.cluster_ids,
        purity=out,
        mean_purity=float(out.mean()) if out.size else float("nan"),
        n_draws=n_draws,
        seed=seed,
    )
