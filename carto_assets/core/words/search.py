"""Label every unit with the formula over annotation values that best explains it.

INVERT-style beam search (Bykov et al., NeurIPS 2023), vectorised across units. Depth 1
scores every term ``t`` and ``NOT t``; each later depth extends the ``beam`` best formulas
``F`` of the previous depth with ``F AND t``, ``F OR t``, ``F AND NOT t`` and ``F OR NOT t`` for
every term ``t`` not yet in ``F``, up to ``max_terms`` terms. A formula's score is the ROC AUC
of the unit's activation for the images where it holds (:mod:`.scoring`).

Every expansion is two sparse products over all units at once: with ``R`` the units' ranks,
``M`` the beam formula's mask (one column per unit) and ``T`` the image x term indicator,
``T.T @ (R * M)`` and ``T.T @ M`` are the rank sums and positive counts of ``F AND t`` for
every term; ``AND NOT``, ``OR`` and ``OR NOT`` follow by inclusion-exclusion from those and
``T.T @ R``. The Python loops run over depths and beam slots only.

A formula that holds on more than ``max_share`` of the images is no candidate (INVERT's
concept-fraction bound). A formula of more terms replaces a shorter one only where it beats it
by more than ``min_gain`` AUC; a
unit whose chosen formula has AUC below ``min_auc`` or a Bonferroni-corrected p-value above
``max_p`` gets no formula ("no word fits"). docs/words.md explains the method.

Pure numpy/scipy; no orchestration imports.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import sparse

from carto_assets.core.validate import check_float, check_int
from carto_assets.core.words.formula import And, Formula, Not, Or, Term, in_order, text
from carto_assets.core.words.scoring import (
    auc_from_rank_sums,
    p_from_rank_sums,
    rank_units,
)

__all__ = [
    "LabelSearch",
    "LabelSearchSettings",
    "UnitWords",
    "extension_sums",
    "label_units",
    "pooled_activations",
    "term_indicator",
]

#: A single term "describes" a unit from this AUC on (the polysemanticity count).
DESCRIBES_AUC = 0.8

# Operators of an extension step, in candidate order; depth 1 has TERM and NOT_TERM.
AND, OR, AND_NOT, OR_NOT = 0, 1, 2, 3
TERM, NOT_TERM = 0, 1


class LabelSearchSettings(Protocol):
    """The search's settings (:func:`label_units` documents each): a study's labels block
    has them, as has :class:`LabelSearch`."""

    @property
    def max_terms(self) -> int: ...
    @property
    def beam(self) -> int: ...
    @property
    def min_auc(self) -> float: ...
    @property
    def max_p(self) -> float: ...
    @property
    def min_gain(self) -> float: ...
    @property
    def max_share(self) -> float: ...


@dataclass(frozen=True)
class LabelSearch:
    """:class:`LabelSearchSettings` with the defaults, for callers without a study."""

    max_terms: int = 3
    beam: int = 5
    min_auc: float = 0.75
    max_p: float = 1e-3
    min_gain: float = 0.02
    max_share: float = 0.5


@dataclass(frozen=True)
class UnitWords:
    """Labels of a set of units (columns of the activation matrix), one entry per unit.

    Attributes
    ----------
    formula : list[str | None]
        The label's canonical text, None where no word fits.
    tree : list[Formula | None]
        The same formula as a tree.
    auc : np.ndarray
        float64 AUC of the best formula found (also where it was refused, so that a reader
        sees why); NaN for a constant unit.
    p_value : np.ndarray
        Its one-sided Mann-Whitney p-value times ``n_formulas`` (Bonferroni), at most 1.
    candidate : list[str | None]
        The best formula found, refused or not (None only for a constant unit).
    single_term : list[str | None]
        The best one-term formula (``t`` or ``NOT t``) within ``max_share``.
    single_auc : np.ndarray
        Its AUC.
    n_terms_over_08 : np.ndarray
        int64: how many distinct terms ``t`` alone reach AUC >= 0.8 (polysemanticity).
    n_formulas : int
        How many formulas the search scored per unit (the Bonferroni factor).
    """

    formula: list[str | None]
    tree: list[Formula | None]
    auc: np.ndarray
    p_value: np.ndarray
    candidate: list[str | None]
    single_term: list[str | None]
    single_auc: np.ndarray
    n_terms_over_08: np.ndarray
    n_formulas: int

    def columns(self) -> dict[str, list | np.ndarray]:
        """The labels as columns (for a table), without the trees."""
        return {
            "formula": self.formula,
            "auc": self.auc,
            "p_value": self.p_value,
            "candidate": self.candidate,
            "single_term": self.single_term,
            "single_auc": self.single_auc,
            "n_terms_over_08": self.n_terms_over_08,
        }


def check_settings(settings: LabelSearchSettings) -> None:
    """Raise if a setting is out of range (max_terms 1..3, beam >= 1, thresholds in range)."""
    check_int("max_terms", settings.max_terms, minimum=1, maximum=3)
    check_int("beam", settings.beam, minimum=1)
    check_float("min_auc", settings.min_auc, low=0.5, high=1.0)
    check_float("max_p", settings.max_p, low=0.0, high=1.0, low_open=True)
    check_float("min_gain", settings.min_gain, low=0.0, high=0.5)
    check_float("max_share", settings.max_share, low=0.0, high=1.0, low_open=True)


def term_indicator(
    sample_image_ids: np.ndarray,
    image_ids: np.ndarray,
    concepts: Sequence[str],
    values: Sequence[str],
) -> tuple[list[Term], sparse.csc_matrix]:
    """The sparse image x term indicator of annotation rows, over a sample of images.

    Parameters
    ----------
    sample_image_ids : np.ndarray
        The sample's image ids, in the order of the activation matrix's rows.
    image_ids, concepts, values : array-like
        One annotation row each (``image_annotations``); rows of images outside the sample
        are ignored, repeated rows count once.

    Returns
    -------
    terms : list[Term]
        The terms, sorted by (concept, value).
    indicator : scipy.sparse.csc_matrix
        bool (n_sample, n_terms).
    """
    sample = np.asarray(sample_image_ids, dtype=np.int64)
    ids = np.asarray(image_ids, dtype=np.int64)
    if not (len(ids) == len(concepts) == len(values)):
        raise ValueError("image_ids, concepts and values must have the same length")
    order = np.argsort(sample, kind="stable")
    position = np.zeros(len(ids), dtype=np.int64)
    inside = np.zeros(len(ids), dtype=bool)
    if len(sample):
        position = np.minimum(np.searchsorted(sample[order], ids), len(sample) - 1)
        inside = sample[order][position] == ids
    pairs = sorted({(str(c), str(v)) for c, v, k in zip(concepts, values, inside) if k})
    terms = [Term(c, v) for c, v in pairs]
    code = {pair: i for i, pair in enumerate(pairs)}
    rows = order[position[inside]]
    cols = np.array(
        [code[(str(c), str(v))] for c, v, k in zip(concepts, values, inside) if k], dtype=np.int64
    )
    data = np.ones(len(rows), dtype=bool)
    matrix = sparse.csc_matrix((data, (rows, cols)), shape=(len(sample), len(terms)), dtype=bool)
    matrix.sum_duplicates()
    matrix.data[:] = True
    return terms, matrix


def on_shares(activations: np.ndarray) -> np.ndarray:
    """Per unit (column), the share of the images (rows) it is *on* for: at least half its
    largest activation over them. A unit on for nearly every image (``labels.always_on``) adds
    about the same to a logit on every image: a fixed part of the logit, which cannot tell one
    image from another, however much relevance it carries (docs/words.md). A unit whose
    largest activation is not positive is on for none. float64 (n_units,)."""
    x = np.asarray(activations, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"activations must be 2-D (n_images, n_units), got {x.shape}")
    if len(x) == 0:
        return np.zeros(x.shape[1])
    top = x.max(axis=0)
    on = (x >= 0.5 * top) & (top > 0)
    return on.mean(axis=0)


def pooled_activations(activations: np.ndarray, groups: Sequence[np.ndarray]) -> np.ndarray:
    """A group's activation: its members' activations, each divided by its max, averaged.

    Dividing by each member's maximum over the sample puts members of different scales on
    one footing, so that a cluster is labelled by the same search as a unit.

    Parameters
    ----------
    activations : np.ndarray
        (n_images, n_units) per-image maxima.
    groups : sequence of np.ndarray
        Per group, the column indices of its members (at least one each).

    Returns
    -------
    np.ndarray
        float64 (n_images, n_groups). A member whose maximum is not positive adds zeros.
    """
    x = np.asarray(activations)
    if x.ndim != 2:
        raise ValueError(f"activations must be 2-D (n_images, n_units), got {x.shape}")
    n_units = x.shape[1]
    scale = x.max(axis=0).astype(np.float64) if len(x) else np.zeros(n_units)
    inverse = np.divide(1.0, scale, out=np.zeros(n_units), where=scale > 0)
    rows, cols, weights = [], [], []  # unit -> group weight: 1 / (size * max), sparse
    for g, members in enumerate(groups):
        members = np.unique(np.asarray(members, dtype=np.int64))
        if len(members) == 0 or members.min() < 0 or members.max() >= n_units:
            raise ValueError(
                f"group {g} must list 1+ unit columns in [0, {n_units}), got {members}"
            )
        rows.append(members)
        cols.append(np.full(len(members), g, dtype=np.int64))
        weights.append(inverse[members] / len(members))
    membership = sparse.csr_matrix(
        (
            np.concatenate(weights) if weights else np.zeros(0),
            (
                np.concatenate(rows) if rows else np.zeros(0, np.int64),
                np.concatenate(cols) if cols else np.zeros(0, np.int64),
            ),
        ),
        shape=(n_units, len(groups)),
    )
    return np.asarray(x.astype(np.float64) @ membership)


def _fill(auc: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(auc), -np.inf, auc)


def _select(auc, rank_sums, counts, ids, width: int, n_images: int):
    """The ``width`` best distinct candidates per unit, best first.

    Candidates are rows of (n_candidates, n_units) arrays. Two candidates with the same
    positives' rank sum and count are taken for the same image set (rank sums of half-integer
    ranks are exact in float64), and only the first by ``ids`` stays, so that ``a AND b`` and
    ``b AND a`` do not fill two beam slots. Ties in AUC go to the smaller id (term order).
    """
    a, s, c, i = (v.T for v in (auc, rank_sums, counts, ids))  # (n_units, n_candidates)
    order = np.lexsort((i, c, s), axis=-1)
    a, s, c, i = (np.take_along_axis(v, order, axis=-1) for v in (a, s, c, i))
    same = np.zeros_like(a, dtype=bool)
    same[:, 1:] = (s[:, 1:] == s[:, :-1]) & (c[:, 1:] == c[:, :-1])
    a = np.where(same, np.nan, a)
    order = np.lexsort((i, -_fill(a)), axis=-1)[:, :width]
    return tuple(np.take_along_axis(v, order, axis=-1).T for v in (a, s, c, i))


def _top(auc, rank_sums, counts, ids, m: int):
    """At most ``m`` rows per unit with the highest AUC (an unordered pre-selection)."""
    if auc.shape[0] <= m:
        return auc, rank_sums, counts, ids
    keep = np.argpartition(-_fill(auc), m - 1, axis=0)[:m]
    return tuple(np.take_along_axis(v, keep, axis=0) for v in (auc, rank_sums, counts, ids))


def _tree(ops: Sequence[int], term_ids: Sequence[int], terms: Sequence[Term]) -> Formula:
    formula: Formula = terms[term_ids[0]] if ops[0] == TERM else Not(terms[term_ids[0]])
    for op, k in zip(ops[1:], term_ids[1:]):
        t: Formula = terms[k] if op in (AND, OR) else Not(terms[k])
        formula = And((formula, t)) if op in (AND, AND_NOT) else Or((formula, t))
    return formula


def _chunk_size(n_images: int, n_terms: int, beam: int, budget: int) -> int:
    per_unit = n_images * (8 * 4 + 2 * beam + 2) + n_terms * 4 * 8 * 8
    return max(1, budget // max(per_unit, 1))


def label_units(
    activations: np.ndarray,
    terms: Sequence[Term],
    indicator: sparse.spmatrix | np.ndarray,
    settings: LabelSearchSettings = LabelSearch(),
    *,
    memory_budget: int = 256 * 2**20,
    timings: dict[str, float] | None = None,
) -> UnitWords:
    """Per unit, the formula over the terms that best separates the images it fires on.

    Parameters
    ----------
    activations : np.ndarray
        (n_images, n_units) finite per-image maxima, one column per unit.
    terms : sequence of Term
        The indicator's columns.
    indicator : scipy.sparse matrix or np.ndarray
        (n_images, n_terms) 0/1: where each term holds, rows as ``activations``. A term that
        holds on all or no images is never used.
    settings : LabelSearchSettings
        ``max_terms`` (1..3) terms per formula at most; ``beam`` formulas kept per depth;
        ``min_auc`` the lowest AUC of a label; ``max_p`` the highest Bonferroni-corrected
        p-value of a label; ``min_gain`` the AUC a formula must gain (strictly more) over the
        best formula with fewer terms to replace it; ``max_share`` the largest share of the
        images a formula may hold on (a broader one is neither a label nor extended).
    memory_budget : int
        Bytes of working arrays; units are searched in chunks that fit (the result does not
        depend on it).
    timings : dict[str, float], optional
        If given, seconds are added per phase: ``ranks``, ``depth 1``, ``depth 2``, ...,
        ``choice`` (the rule and the p-values).

    Returns
    -------
    UnitWords
        One label per unit.
    """
    check_settings(settings)
    x = np.asarray(activations)
    if x.ndim != 2:
        raise ValueError(f"activations must be 2-D (n_images, n_units), got {x.shape}")
    n, n_units = x.shape
    indicator = sparse.csc_matrix(indicator, dtype=bool)
    if indicator.shape != (n, len(terms)):
        raise ValueError(
            f"indicator must be (n_images, n_terms) = ({n}, {len(terms)}), got {indicator.shape}"
        )
    counts = np.asarray(indicator.sum(axis=0)).ravel()
    usable = np.flatnonzero((counts > 0) & (counts < n))
    kept = [terms[k] for k in usable]
    k_terms = len(kept)
    t_dense = indicator[:, usable].toarray()  # (n, K) bool, gathered per unit below
    t_rows = sparse.csr_matrix(indicator[:, usable].T, dtype=np.float64)  # (K, n)
    positives = counts[usable].astype(np.float64)[:, None]

    widths = [2 * k_terms]
    for _ in range(2, settings.max_terms + 1):
        widths.append(min(settings.beam, widths[-1]) * 4 * k_terms)
    n_formulas = int(sum(widths)) if k_terms else 0

    out = {
        "auc": np.full(n_units, np.nan),
        "p": np.ones(n_units),
        "single_auc": np.full(n_units, np.nan),
        "over": np.zeros(n_units, dtype=np.int64),
    }
    trees: list[Formula | None] = [None] * n_units
    chosen_ok = np.zeros(n_units, dtype=bool)
    singles: list[Formula | None] = [None] * n_units
    if k_terms == 0 or n_units == 0:
        return _result(out, trees, chosen_ok, singles, n_formulas)

    chunk = _chunk_size(n, k_terms, settings.beam, memory_budget)
    for lo in range(0, n_units, chunk):
        hi = min(lo + chunk, n_units)
        _search_chunk(
            x[:, lo:hi], t_dense, t_rows, positives, kept, settings, n_formulas,
            out, trees, chosen_ok, singles, lo, timings if timings is not None else {},
        )  # fmt: skip
    return _result(out, trees, chosen_ok, singles, n_formulas)


def _result(out, trees, chosen_ok, singles, n_formulas) -> UnitWords:
    trees = [in_order(t) if t is not None else None for t in trees]
    texts = [text(t) if t is not None else None for t in trees]
    return UnitWords(
        formula=[s if ok else None for s, ok in zip(texts, chosen_ok)],
        tree=[t if ok else None for t, ok in zip(trees, chosen_ok)],
        auc=out["auc"],
        p_value=out["p"],
        candidate=texts,
        single_term=[text(t) if t is not None else None for t in singles],
        single_auc=out["single_auc"],
        n_terms_over_08=out["over"],
        n_formulas=n_formulas,
    )


def extension_sums(
    ranks: np.ndarray,
    mask: np.ndarray,
    term_rows: sparse.csr_matrix,
    term_sums: np.ndarray,
    term_counts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Rank sums and counts of ``F AND t``, ``F OR t``, ``F AND NOT t``, ``F OR NOT t``.

    Two sparse products for every term and unit at once: ``T.T @ (R * M)`` and ``T.T @ M``
    are the rank sum and count of ``t AND F``; the other three follow by inclusion-exclusion.

    Parameters
    ----------
    ranks : np.ndarray
        (n_images, n_units) average ranks.
    mask : np.ndarray
        bool (n_images, n_units): where each unit's formula ``F`` holds.
    term_rows : scipy.sparse.csr_matrix
        float64 (n_terms, n_images): the indicator, transposed.
    term_sums : np.ndarray
        (n_terms, n_units) rank sums of the terms alone (``term_rows @ ranks``).
    term_counts : np.ndarray
        (n_terms, 1) images per term.

    Returns
    -------
    sums, counts : np.ndarray
        float64 (4, n_terms, n_units) each, in the order AND, OR, AND NOT, OR NOT.
    """
    n = ranks.shape[0]
    total = n * (n + 1) / 2.0
    weighted = ranks * mask
    in_and = np.asarray(term_rows @ weighted)
    n_and = np.asarray(term_rows @ mask.astype(np.float64))
    s_mask = weighted.sum(axis=0)
    n_mask = mask.sum(axis=0).astype(np.float64)
    sums = np.stack(
        [in_and, term_sums + s_mask - in_and, s_mask - in_and, total - (term_sums - in_and)]
    )
    counts = np.stack(
        [n_and, term_counts + n_mask - n_and, n_mask - n_and, n - (term_counts - n_and)]
    )
    return sums, counts


def _search_chunk(
    x, t_dense, t_rows, positives, terms, settings, n_formulas, out, trees, chosen_ok, singles, lo,
    timings,
) -> None:  # fmt: skip
    clock = [time.perf_counter()]

    def lap(phase: str) -> None:
        now = time.perf_counter()
        timings[phase] = timings.get(phase, 0.0) + now - clock[0]
        clock[0] = now

    n = x.shape[0]
    k_terms = len(terms)
    ranked = rank_units(x)
    lap("ranks")
    ranks = ranked.ranks
    units = ranks.shape[1]
    columns = np.arange(units)
    total = n * (n + 1) / 2.0
    beam = settings.beam
    pool = 3 * beam  # pre-selected candidates per slot (room for duplicates)

    # Depth 1: every term and its negation.
    s1 = np.asarray(t_rows @ ranks)  # (K, U)
    auc1 = auc_from_rank_sums(s1, positives, n)
    auc1[:, ranked.constant] = np.nan
    rank_sums = np.concatenate([s1, total - s1])
    counts = np.broadcast_to(np.concatenate([positives, n - positives]), rank_sums.shape)
    # A formula that holds on more than max_share of the images is no candidate, neither a
    # label nor a beam formula (INVERT's concept-fraction bound): `NOT shape=arrow` (7 in 8)
    # names what the unit does not respond to, and AUC cannot tell it from `shape=crescent`.
    limit = settings.max_share * n
    auc = np.where(counts > limit, np.nan, np.concatenate([auc1, 1.0 - auc1]))
    ids = np.broadcast_to(np.arange(2 * k_terms)[:, None], rank_sums.shape)
    b_auc, b_sum, b_count, b_id = _select(auc, rank_sums, counts, ids, beam, n)
    ops = (b_id // k_terms)[:, :, None]  # (beam, U, depth)
    term_ids = (b_id % k_terms)[:, :, None]
    masks = np.ascontiguousarray(  # (beam, n, U); contiguous for the sparse products
        t_dense[:, term_ids[:, :, 0]].transpose(1, 0, 2) ^ (ops[:, :, 0] == NOT_TERM)[:, None]
    )

    best = [(b_auc[0], b_sum[0], b_count[0], ops[0], term_ids[0])]
    out["single_auc"][lo : lo + units] = b_auc[0]
    out["over"][lo : lo + units] = (auc1 >= DESCRIBES_AUC).sum(axis=0)
    for u in range(units):
        if np.isfinite(b_auc[0, u]):
            singles[lo + u] = _tree(ops[0, u], term_ids[0, u], terms)

    lap("depth 1")
    for depth in range(2, settings.max_terms + 1):
        found = []
        for slot in range(b_auc.shape[0]):
            slot_sums, slot_counts = extension_sums(ranks, masks[slot], t_rows, s1, positives)
            slot_auc = auc_from_rank_sums(slot_sums, slot_counts, n)
            slot_auc[:, :, ranked.constant] = np.nan
            slot_auc[:, :, ~np.isfinite(b_auc[slot])] = np.nan
            slot_auc[slot_counts > limit] = np.nan
            for step in range(term_ids.shape[2]):  # a term once per formula
                slot_auc[:, term_ids[slot, :, step], columns] = np.nan
            slot_ids = slot * 4 * k_terms + np.arange(4 * k_terms)[:, None]
            found.append(
                _top(
                    slot_auc.reshape(4 * k_terms, units),
                    slot_sums.reshape(4 * k_terms, units),
                    slot_counts.reshape(4 * k_terms, units),
                    np.broadcast_to(slot_ids, (4 * k_terms, units)),
                    pool,
                )
            )
        b_auc, b_sum, b_count, b_id = _select(
            *(np.concatenate(parts) for parts in zip(*found)), beam, n
        )
        parent = b_id // (4 * k_terms)
        op = (b_id % (4 * k_terms)) // k_terms
        term = b_id % k_terms
        ops = np.concatenate([ops[parent, columns], op[:, :, None]], axis=2)
        term_ids = np.concatenate([term_ids[parent, columns], term[:, :, None]], axis=2)
        new_masks = np.empty((b_auc.shape[0], n, units), dtype=bool)
        for slot in range(b_auc.shape[0]):
            inherited = masks[parent[slot], :, columns].T  # (n, U)
            added = t_dense[:, term[slot]] ^ (op[slot] >= AND_NOT)
            is_and = (op[slot] == AND) | (op[slot] == AND_NOT)
            new_masks[slot] = np.where(is_and, inherited & added, inherited | added)
        masks = new_masks
        best.append((b_auc[0], b_sum[0], b_count[0], ops[0], term_ids[0]))
        lap(f"depth {depth}")

    # Fewer terms unless more gain more than min_gain (a tie keeps the shorter formula).
    best_auc, best_sum, best_count = (np.stack([b[i] for b in best]) for i in range(3))
    choice = np.zeros(units, dtype=np.int64)
    for depth in range(1, len(best)):
        better = _fill(best_auc[depth]) > _fill(best_auc[choice, columns]) + settings.min_gain
        choice = np.where(better, depth, choice)
    chosen_auc = best_auc[choice, columns]
    chosen_sum = best_sum[choice, columns]
    chosen_count = best_count[choice, columns]
    p = p_from_rank_sums(chosen_sum, chosen_count, n, ranked.tie_sums)
    p = np.where(np.isfinite(chosen_auc), np.minimum(1.0, p * n_formulas), 1.0)
    out["auc"][lo : lo + units] = chosen_auc
    out["p"][lo : lo + units] = p
    for u, d in enumerate(choice):
        if np.isfinite(chosen_auc[u]):
            trees[lo + u] = _tree(best[d][3][u], best[d][4][u], terms)
            chosen_ok[lo + u] = chosen_auc[u] >= settings.min_auc and p[u] <= settings.max_p
    lap("choice")
