"""Similar neuron pairs: neurons of one layer whose top-k sets have Jaccard >= threshold.

Two methods return the same ``SimilarPairs``: row pairs ``i < j`` of one layer, unique and
sorted, with their exact Jaccard similarity.

* ``lsh_pairs`` (linear in neurons): identical non-empty sets of a layer are collapsed first
  (they would otherwise fill one giant bucket in every band); every distinct set gets a
  MinHash signature (:mod:`carto_assets.core.similarity.minhash`, datasketch's scheme bit for
  bit); LSH
  banding proposes as candidates the sets that agree on all ``rows`` values of at least one of
  ``bands`` bands, which happens to a pair of similarity ``s`` with probability
  ``1 - (1 - s**rows)**bands``; candidates are confirmed by exact Jaccard. LSH can miss a
  pair but never reports a false one.
* ``exact_pairs_inverted_index``: shared-image counts through image -> neurons postings (a
  sparse ``X @ X.T`` per layer), with work proportional to ``sum(posting_length**2)``, not
  ``n**2``. It is the reference LSH's recall is measured against (``pair_agreement``).

A quadratic reference that evaluates every pair of a layer lives with the test oracles
(``tests/reference/clustering.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from carto_assets.core.similarity.lsh import (
    RECALL_WEIGHTS,
    MinHashLsh,
    MinHashLshSettings,
    check_threshold,
    lsh_banding,
    lsh_candidate_pairs,
    pairs_within_runs,
)
from carto_assets.core.similarity.minhash import Encoding, Scheme, fmix, minhash_signatures
from carto_assets.core.similarity.sets import (
    NeuronSets,
    image_codes,
    incidence_matrix,
    jaccard_from_counts,
    layer_rows,
    pair_jaccard,
    sub_positions,
)
from carto_assets.core.validate import check_choice, check_int

PairMethod = Literal["lsh", "inverted_index"]
PAIR_METHODS: tuple[str, ...] = ("lsh", "inverted_index")

_FINGERPRINT_CHUNK = 1 << 20


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


def _make_pairs(
    i: np.ndarray, j: np.ndarray, jaccard: np.ndarray, n: int, threshold: float
) -> SimilarPairs:
    keep = jaccard >= threshold
    i, j, jaccard = i[keep], j[keep], jaccard[keep]
    order = np.argsort(i * np.int64(n) + j, kind="stable")
    return SimilarPairs(i[order], j[order], jaccard[order], n)


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
    block_rows = check_int("block_rows", block_rows, minimum=1)
    codes, n_codes = image_codes(sets)
    sizes = sets.sizes
    found_i, found_j, found_s = [], [], []
    for rows in layer_rows(sets):
        if rows.size < 2:
            continue
        x = incidence_matrix(sets, codes, n_codes, rows)
        postings = x.T.tocsr()
        for start in range(0, rows.size, block_rows):
            counts = (x[start : start + block_rows] @ postings).tocoo()
            r = counts.row.astype(np.int64) + start
            c = counts.col.astype(np.int64)
            upper = c > r
            r, c = r[upper], c[upper]
            inter = counts.data[upper].astype(np.int64)
            sim = jaccard_from_counts(inter, sizes[rows[r]], sizes[rows[c]])
            keep = sim >= threshold
            found_i.append(rows[r[keep]])
            found_j.append(rows[c[keep]])
            found_s.append(sim[keep])
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
        _, pos_d = sub_positions(sets.indptr, dup)
        _, pos_r = sub_positions(sets.indptr, rep[dup])
        mismatch = sets.indices[pos_d] != sets.indices[pos_r]
        bad = np.logical_or.reduceat(mismatch, np.cumsum(sizes[dup]) - sizes[dup])
        rep[dup[bad]] = dup[bad]
    return rep


def lsh_pairs(
    sets: NeuronSets,
    *,
    threshold: float,
    minhash: MinHashLshSettings = MinHashLsh(),
    weights: tuple[float, float] = RECALL_WEIGHTS,
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
    minhash
        ``num_perm`` and ``seed`` (see
        ``carto_assets.core.similarity.minhash.minhash_signatures``), ``bands`` and ``rows``:
        LSH banding, both or neither; if neither, derived from ``threshold``, ``num_perm`` and
        ``weights`` like datasketch's ``MinHashLSH``. A study's clustering block, or
        :class:`~carto_assets.core.similarity.lsh.MinHashLsh`.
    scheme, encoding
        MinHash parameters, see ``minhash_signatures``.
    weights
        ``(false_positive_weight, false_negative_weight)`` for deriving the banding. The
        default favours recall: a false positive only costs one exact confirmation, a
        false negative loses a pair (at threshold 0.5 this gives rows 3, and with every
        permutation in a band 42 x 3, which finds a pair of Jaccard 0.5 with probability
        0.996; datasketch's (0.5, 0.5) gives 25 x 5 and 0.55). See ``lsh_banding``.
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
    num_perm = check_int("num_perm", minhash.num_perm, minimum=1)
    bands, rows = lsh_banding(threshold, num_perm, minhash.bands, minhash.rows, weights)

    n = sets.n_neurons
    rep = identical_set_groups(sets)
    reps = np.flatnonzero(rep == np.arange(n))
    if reps.size == n:
        sub_indptr, sub_indices = sets.indptr, sets.indices
    else:
        sub_indptr, positions = sub_positions(sets.indptr, reps)
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
            seed=minhash.seed,
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
    """Similar pairs by ``method`` (``"lsh"`` or ``"inverted_index"``).

    ``lsh_options`` are passed to ``lsh_pairs`` and only allowed for ``"lsh"``.
    """
    check_choice("method", method, PAIR_METHODS)
    if method != "lsh" and lsh_options:
        raise ValueError(f"options {sorted(lsh_options)} only apply to method='lsh'")
    if method == "lsh":
        return lsh_pairs(sets, threshold=threshold, **lsh_options).pairs
    return exact_pairs_inverted_index(sets, threshold=threshold)


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
