"""Units of different models matched by the Jaccard similarity of their top-k image sets.

Two studies over the same images describe every unit by the same kind of set (its top-k image
ids), so a unit of one model and a unit of another that respond to the same images have
similar sets, whatever their layers or channel numbers. :func:`cross_model_pairs` finds every
cross-model pair with Jaccard >= threshold in time linear in the units:

1. identical non-empty sets (across all models) are collapsed, so e.g. a permuted copy's units
   and their originals share one signature;
2. every distinct set gets a MinHash signature with the same permutations (datasketch's
   scheme, :mod:`carto_assets.core.similarity.minhash`), one LSH index holds them all, and
   only candidate pairs whose sets belong to units of different models are kept;
3. each candidate is confirmed by its exact Jaccard similarity.

:func:`best_matches` then gives each unit its best match in every other model: the highest
Jaccard, ties broken by the rank footrule over the shared images (the sum of
``|rank_a - rank_b|``: units with the same set but another order are told apart), then by
the smaller unit id (units with identical top-k lists are paired in id order, so identical
groups match one to one); a match is *mutual* when each is the other's best.

Pure numpy; no dagster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from carto_assets.core.similarity.lsh import (
    MinHashLsh,
    MinHashLshSettings,
    lsh_banding,
    lsh_candidate_pairs,
    pairs_within_runs,
)
from carto_assets.core.similarity.minhash import minhash_signatures
from carto_assets.core.similarity.pairs import identical_set_groups
from carto_assets.core.similarity.sets import NeuronSets, pair_jaccard, sub_positions
from carto_assets.core.validate import check_float, check_int


@dataclass(frozen=True, eq=False)
class UnitSets:
    """Top-k image sets of the units of several models, one row per unit.

    Attributes
    ----------
    study
        ``(n,)`` int64: the model (study index) of each unit; unit ids are row numbers.
    indptr
        ``(n + 1,)`` int64 row pointers.
    images
        ``(nnz,)`` int64 image ids, ascending and unique within each row.
    ranks
        ``(nnz,)`` int64: each image's rank in the unit's top-k (1 = strongest).
    n_studies
        Number of models.
    """

    study: np.ndarray
    indptr: np.ndarray
    images: np.ndarray
    ranks: np.ndarray
    n_studies: int

    @property
    def n_units(self) -> int:
        return int(self.study.size)

    def as_neuron_sets(self) -> NeuronSets:
        """The rows as one-layer :class:`NeuronSets` (ids = row numbers)."""
        n = self.n_units
        return NeuronSets(
            neuron_ids=np.arange(n, dtype=np.int64),
            layers=np.zeros(n, dtype=np.int64),
            layer_values=np.zeros(1, dtype=np.int64),
            indptr=self.indptr,
            indices=self.images,
        )

    def rows(self, units: np.ndarray) -> UnitSets:
        """The sub-collection of ``units`` (renumbered 0..len-1 in that order)."""
        units = np.asarray(units, dtype=np.int64)
        sub_indptr, positions = sub_positions(self.indptr, units)
        return UnitSets(
            self.study[units],
            sub_indptr,
            self.images[positions],
            self.ranks[positions],
            self.n_studies,
        )

    def duplicate_index(self, units: np.ndarray | None = None) -> np.ndarray:
        """``(n,)``: each unit's position (0, 1, ...) among the units of its model with the same
        top images in the same order, by unit id; 0 for a unit whose list is its own.

        ``units`` limits the search to those units (e.g. the ones whose set repeats in their
        model); the others get 0.
        """
        chosen = np.arange(self.n_units) if units is None else np.unique(units)
        out = np.zeros(self.n_units, dtype=np.int64)
        if chosen.size < 2:
            return out
        indptr, positions = sub_positions(self.indptr, chosen)
        rows = pl.DataFrame(
            {
                "unit": np.repeat(chosen, np.diff(indptr)),
                "image": self.images[positions],
                "rank": self.ranks[positions],
            }
        ).sort("unit", "rank")
        lists = rows.group_by("unit", maintain_order=True).agg("image")
        frame = pl.DataFrame({"unit": chosen, "study": self.study[chosen]})
        index = (
            frame.join(lists, on="unit", how="left")
            .sort("unit")
            .with_columns(index=pl.int_range(pl.len()).over("study", "image"))
        )
        out[index["unit"].to_numpy()] = index["index"].to_numpy()
        return out

    def relabel_images(self, study: int, mapping: np.ndarray) -> UnitSets:
        """The same units with ``study``'s image ids replaced by ``mapping[image_id]`` (rows
        re-sorted): e.g. a random permutation, the shuffled-image null."""
        rows = np.repeat(np.arange(self.n_units), np.diff(self.indptr))
        images = np.where(self.study[rows] == study, mapping[self.images], self.images)
        order = np.lexsort((images, rows))
        return UnitSets(self.study, self.indptr, images[order], self.ranks[order], self.n_studies)


def unit_sets(
    unit_id: np.ndarray,
    image_id: np.ndarray,
    rank: np.ndarray,
    study_of_unit: np.ndarray,
) -> UnitSets:
    """Build :class:`UnitSets` from top-k rows ``(unit_id, image_id, rank)``.

    ``study_of_unit[u]`` is unit ``u``'s model; units without rows get empty sets. A repeated
    ``(unit, image)`` keeps its best rank.
    """
    study = np.asarray(study_of_unit, dtype=np.int64)
    unit_id = np.asarray(unit_id, dtype=np.int64)
    image_id = np.asarray(image_id, dtype=np.int64)
    rank = np.asarray(rank, dtype=np.int64)
    if not unit_id.shape == image_id.shape == rank.shape:
        raise ValueError("unit_id, image_id and rank must have the same length")
    n = study.size
    if unit_id.size and (unit_id.min() < 0 or unit_id.max() >= n):
        raise ValueError(f"unit ids must be in [0, {n}), got values outside")
    if image_id.size and image_id.min() < 0:
        raise ValueError("image ids must be non-negative")
    # One int64 key (unit, image) sorts 22M rows in a few seconds where a three-key lexsort
    # took 20 (benchmarks/compare.py at 16x).
    span = int(image_id.max()) + 1 if image_id.size else 1
    if n * span < 2**62:
        order = np.argsort(unit_id * span + image_id)
    else:
        order = np.lexsort((image_id, unit_id))
    unit_id, image_id, rank = unit_id[order], image_id[order], rank[order]
    first = np.ones(unit_id.size, dtype=bool)
    first[1:] = (unit_id[1:] != unit_id[:-1]) | (image_id[1:] != image_id[:-1])
    if not first.all():  # a repeated (unit, image) keeps its best rank
        starts = np.flatnonzero(first)
        rank = np.minimum.reduceat(rank, starts)
        unit_id, image_id = unit_id[starts], image_id[starts]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(unit_id, minlength=n), out=indptr[1:])
    n_studies = int(study.max()) + 1 if n else 0
    return UnitSets(study, indptr, image_id, rank, n_studies)


@dataclass(frozen=True, eq=False)
class CrossPairs:
    """Cross-model unit pairs with Jaccard >= threshold.

    ``a < b`` are unit ids of different models, unique, sorted; ``jaccard`` their exact
    similarity. ``n_candidates`` counts the LSH candidates (pairs of distinct sets held by
    units of different models) that were confirmed or rejected.
    """

    a: np.ndarray
    b: np.ndarray
    jaccard: np.ndarray
    bands: int
    rows: int
    n_distinct_sets: int
    n_candidates: int
    #: units whose top-k set equals another unit's of the same model (e.g. dead units)
    repeated: np.ndarray


def cross_model_pairs(
    units: UnitSets,
    *,
    threshold: float,
    minhash: MinHashLshSettings = MinHashLsh(),
) -> CrossPairs:
    """Every pair of units of different models whose sets have Jaccard >= ``threshold``
    (LSH may miss a pair, never reports a false one); see the module docstring."""
    threshold = check_float("threshold", threshold, low=0, high=1, low_open=True)
    num_perm = check_int("num_perm", minhash.num_perm, minimum=1)
    bands, rows = lsh_banding(threshold, num_perm, minhash.bands, minhash.rows)
    if units.n_studies > 63:
        raise ValueError(f"at most 63 models can be matched at once, got {units.n_studies}")
    n = units.n_units
    sets = units.as_neuron_sets()
    rep = identical_set_groups(sets)
    reps = np.flatnonzero(rep == np.arange(n))
    members = np.flatnonzero(rep >= 0)
    # Which models hold each distinct set (a bit per model).
    models = np.zeros(n, dtype=np.uint64)
    np.bitwise_or.at(models, rep[members], np.uint64(1) << units.study[members].astype(np.uint64))
    sub_indptr, positions = sub_positions(units.indptr, reps)
    signatures = minhash_signatures(
        sub_indptr,
        units.images[positions],
        num_perm=num_perm,
        seed=minhash.seed,
        columns=bands * rows,
    )
    candidates = lsh_candidate_pairs(
        signatures, np.zeros(reps.size, dtype=np.int64), bands=bands, rows=rows
    )
    ci, cj = reps[candidates.i], reps[candidates.j]
    mi, mj = models[ci], models[cj]
    one_model = (mi & (mi - np.uint64(1))) == 0
    across = ~((mi == mj) & one_model)
    ci, cj = ci[across], cj[across]
    similarity = pair_jaccard(sets, ci, cj)
    keep = similarity >= threshold
    a, b, jaccard = _expand(units.study, rep, members, ci[keep], cj[keep], similarity[keep])
    key = rep[members] * np.int64(units.n_studies) + units.study[members]
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    repeated = members[counts[inverse.reshape(-1)] > 1]
    return CrossPairs(a, b, jaccard, bands, rows, int(reps.size), int(ci.size), repeated)


def _expand(
    study: np.ndarray,
    rep: np.ndarray,
    members: np.ndarray,
    ri: np.ndarray,
    rj: np.ndarray,
    similarity: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of distinct sets -> pairs of the units holding them (models differ), plus the
    pairs of units of different models that hold the same set (Jaccard 1)."""
    members = members[np.lexsort((members, rep[members]))]
    group_rep, group_start, group_size = np.unique(
        rep[members], return_index=True, return_counts=True
    )
    gi, gj = np.searchsorted(group_rep, ri), np.searchsorted(group_rep, rj)
    si, sj = group_size[gi], group_size[gj]
    count = si * sj
    pair = np.repeat(np.arange(ri.size), count)
    starts = np.repeat(np.cumsum(count) - count, count)
    offset = np.arange(int(count.sum()), dtype=np.int64) - starts
    x = members[group_start[gi][pair] + offset // sj[pair]]
    y = members[group_start[gj][pair] + offset % sj[pair]]
    wx, wy = pairs_within_runs(members, group_size)
    a = np.concatenate([np.minimum(x, y), wx])
    b = np.concatenate([np.maximum(x, y), wy])
    s = np.concatenate([similarity[pair], np.ones(wx.size)])
    across = study[a] != study[b]
    a, b, s = a[across], b[across], s[across]
    order = np.lexsort((b, a))
    return a[order], b[order], s[order]


@dataclass(frozen=True, eq=False)
class BestMatches:
    """Each unit's best match in every other model: one row per (unit, other model), ordered
    by unit then model.

    ``match`` is -1 and ``jaccard`` 0 where no unit of that model reaches the threshold;
    ``partners`` counts the units of that model that do.
    """

    unit: np.ndarray
    other_study: np.ndarray
    match: np.ndarray
    jaccard: np.ndarray
    mutual: np.ndarray
    partners: np.ndarray

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "unit": self.unit,
                "other_study": self.other_study,
                "match": self.match,
                "jaccard": self.jaccard,
                "mutual": self.mutual,
                "partners": self.partners,
            }
        )


def rank_footrule(units: UnitSets, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum |rank_a(x) - rank_b(x)|`` over the images ``x`` both units hold, per pair."""
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    involved = np.unique(np.concatenate([a, b]))
    indptr, positions = sub_positions(units.indptr, involved)
    rows = pl.DataFrame(
        {
            "unit": np.repeat(involved, np.diff(indptr)),
            "image": units.images[positions],
            "rank": units.ranks[positions],
        }
    )
    pairs = pl.DataFrame({"pair": np.arange(a.size), "a": a, "b": b})
    shared = (
        pairs.join(rows, left_on="a", right_on="unit")
        .join(rows, left_on=["b", "image"], right_on=["unit", "image"], suffix="_b")
        .group_by("pair")
        .agg(footrule=(pl.col("rank") - pl.col("rank_b")).abs().sum())
    )
    out = np.zeros(a.size, dtype=np.int64)
    out[shared["pair"].to_numpy()] = shared["footrule"].to_numpy()
    return out


def best_matches(units: UnitSets, pairs: CrossPairs) -> BestMatches:
    """Each unit's best match in every other model (see the module docstring)."""
    n, n_studies = units.n_units, units.n_studies
    u = np.concatenate([pairs.a, pairs.b])
    v = np.concatenate([pairs.b, pairs.a])
    jac = np.concatenate([pairs.jaccard, pairs.jaccard])
    other = units.study[v]
    group = u * n_studies + other
    # The footrule is only needed where the best Jaccard is tied.
    best_jac = np.zeros(n * n_studies)
    np.maximum.at(best_jac, group, jac)
    at_best = jac == best_jac[group]
    ties = np.bincount(group[at_best], minlength=n * n_studies)
    tied = at_best & (ties[group] > 1)
    footrule = np.zeros(u.size, dtype=np.int64)
    footrule[tied] = rank_footrule(units, u[tied], v[tied])
    # Units with the same top images in the same order (e.g. dead units) cannot be told
    # apart: the k-th of such a group is paired with the k-th of its counterpart's group, so
    # that identical groups match one to one (and mutually) rather than all to the first.
    position = np.zeros(u.size, dtype=np.int64)
    if tied.any() and pairs.repeated.size:
        duplicate = units.duplicate_index(pairs.repeated)
        position[tied] = np.abs(duplicate[u[tied]] - duplicate[v[tied]])
    order = np.lexsort((v, position, footrule, -jac, group))
    first = np.ones(order.size, dtype=bool)
    first[1:] = group[order][1:] != group[order][:-1]
    chosen = order[first]
    best = np.full(n * n_studies, -1, dtype=np.int64)
    best[group[chosen]] = v[chosen]
    best_j = np.zeros(n * n_studies)
    best_j[group[chosen]] = jac[chosen]
    partners = np.bincount(group, minlength=n * n_studies)

    unit = np.repeat(np.arange(n, dtype=np.int64), n_studies)
    other_study = np.tile(np.arange(n_studies, dtype=np.int64), n)
    keep = units.study[unit] != other_study
    unit, other_study = unit[keep], other_study[keep]
    flat = unit * n_studies + other_study
    match = best[flat]
    has = match >= 0
    back = np.full(unit.size, -1, dtype=np.int64)
    back[has] = best[match[has] * n_studies + units.study[unit[has]]]
    return BestMatches(
        unit=unit,
        other_study=other_study,
        match=match,
        jaccard=best_j[flat],
        mutual=has & (back == unit),
        partners=partners[flat],
    )


def match_units(
    units: UnitSets,
    *,
    threshold: float,
    minhash: MinHashLshSettings = MinHashLsh(),
) -> tuple[CrossPairs, BestMatches]:
    """:func:`cross_model_pairs`, then :func:`best_matches`."""
    pairs = cross_model_pairs(units, threshold=threshold, minhash=minhash)
    return pairs, best_matches(units, pairs)
