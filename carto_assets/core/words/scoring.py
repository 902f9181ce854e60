"""AUC and Mann-Whitney p-values of many units against many image sets at once.

A unit's activation (its spatial maximum per image) scores how well it separates the images
where a formula holds (positives) from the others. With ``R`` the unit's average ranks over
the images (ties share the mean of their ranks), the positives' rank sum ``S`` gives the
Mann-Whitney statistic ``U = S - n_pos (n_pos + 1) / 2`` and the ROC AUC ``U / (n_pos n_neg)``
(equal to scikit-learn's ``roc_auc_score``). For a sparse image x term indicator ``T`` the rank
sums of every (term, unit) are one product ``T.T @ R``; that is what makes the search over all
units cheap (:mod:`carto_assets.core.words.search`).

The p-value is the one-sided Mann-Whitney test (the activation is higher where the formula
holds), normal approximation with tie and continuity correction, as
``scipy.stats.mannwhitneyu(pos, neg, alternative="greater", method="asymptotic")``.

Degenerate cases score nothing: an image set that holds on all or no images, or a unit with
the same activation on every image, gives AUC NaN and p-value 1.

Pure numpy/scipy; no orchestration imports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.special import ndtr

__all__ = [
    "RankedUnits",
    "auc_from_rank_sums",
    "average_ranks",
    "p_from_rank_sums",
    "rank_units",
    "term_scores",
]


@dataclass(frozen=True)
class RankedUnits:
    """Units' activations as average ranks over the images, with what the tests need.

    Attributes
    ----------
    ranks : np.ndarray
        float64 (n_images, n_units): 1-based ranks per column, ties by average rank.
    tie_sums : np.ndarray
        float64 (n_units,): ``sum(t**3 - t)`` over each column's groups of ``t`` tied values
        (the tie correction of the Mann-Whitney variance).
    constant : np.ndarray
        bool (n_units,): the unit has the same activation on every image.
    """

    ranks: np.ndarray
    tie_sums: np.ndarray
    constant: np.ndarray

    @property
    def n_images(self) -> int:
        """Number of images (rows)."""
        return int(self.ranks.shape[0])


def rank_units(activations: np.ndarray) -> RankedUnits:
    """Average ranks, tie sums and constant columns of an (n_images, n_units) matrix.

    Vectorised over the columns: one sort along the images, then every run of equal values
    gets the mean of the ranks it spans.

    Parameters
    ----------
    activations : np.ndarray
        (n_images, n_units) finite numbers, one column per unit.

    Returns
    -------
    RankedUnits
        Ranks equal to ``scipy.stats.rankdata(activations, axis=0)`` (method "average").

    Raises
    ------
    ValueError
        If the matrix is not 2-D, has no rows, or holds NaN or infinity.
    """
    x = np.asarray(activations)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"activations must be a 2-D (n_images, n_units) array, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("activations must be finite (no NaN or infinity)")
    n, m = x.shape
    by_unit = np.ascontiguousarray(x.T)  # one unit per row: sorts along contiguous memory
    order = np.argsort(by_unit, axis=1, kind="stable")
    ordered = np.take_along_axis(by_unit, order, axis=1)
    starts = np.empty((m, n), dtype=bool)
    starts[:, 0] = True
    np.not_equal(ordered[:, 1:], ordered[:, :-1], out=starts[:, 1:])
    del ordered
    # Runs of equal values, numbered over the flattened rows (a run never spans two rows).
    flat = starts.ravel()
    first = np.flatnonzero(flat)
    size = np.diff(np.append(first, m * n))
    average = (first % n) + (size + 1) / 2.0  # the mean of ranks first+1 .. first+size
    ranks = np.empty((m, n), dtype=np.float64)
    np.put_along_axis(ranks, order, average[np.cumsum(flat) - 1].reshape(m, n), axis=1)
    size = size.astype(np.float64)
    tie_sums = np.bincount(first // n, weights=size**3 - size, minlength=m)
    constant = size[np.searchsorted(first, np.arange(m) * n)] == n
    ranks = np.ascontiguousarray(ranks.T)
    return RankedUnits(ranks=ranks, tie_sums=tie_sums, constant=constant)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Per column 1-based ranks, ties by average rank (``scipy.stats.rankdata(x, axis=0)``).

    Parameters
    ----------
    x : np.ndarray
        (n, m) or (n,) finite numbers.

    Returns
    -------
    np.ndarray
        float64, the shape of ``x``.
    """
    x = np.asarray(x)
    if x.ndim == 1:
        return rank_units(x[:, None]).ranks[:, 0]
    return rank_units(x).ranks


def auc_from_rank_sums(rank_sums: np.ndarray, n_pos: np.ndarray, n_images: int) -> np.ndarray:
    """ROC AUC from the positives' rank sums: ``(S - n_pos (n_pos+1)/2) / (n_pos n_neg)``.

    Parameters
    ----------
    rank_sums : np.ndarray
        Sum of the positives' average ranks, any shape.
    n_pos : np.ndarray
        Number of positives, broadcastable to ``rank_sums``.
    n_images : int
        Number of images (positives + negatives).

    Returns
    -------
    np.ndarray
        float64 AUC; NaN where there are no positives or no negatives.
    """
    n_pos = np.asarray(n_pos, dtype=np.float64)
    n_neg = n_images - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (np.asarray(rank_sums, dtype=np.float64) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def p_from_rank_sums(
    rank_sums: np.ndarray, n_pos: np.ndarray, n_images: int, tie_sums: np.ndarray
) -> np.ndarray:
    """One-sided Mann-Whitney p-value (positives higher), normal approximation.

    With ``U = S - n_pos (n_pos+1)/2``, ``mu = n_pos n_neg / 2`` and
    ``sigma^2 = n_pos n_neg / 12 * ((n + 1) - tie_sum / (n (n - 1)))``, the p-value is
    ``1 - Phi((U - mu - 0.5) / sigma)``: scipy's ``mannwhitneyu(..., alternative="greater",
    method="asymptotic")`` with its default continuity correction.

    Parameters
    ----------
    rank_sums : np.ndarray
        Sum of the positives' average ranks.
    n_pos : np.ndarray
        Number of positives, broadcastable to ``rank_sums``.
    n_images : int
        Number of images.
    tie_sums : np.ndarray
        The unit's ``sum(t**3 - t)`` (:class:`RankedUnits`), broadcastable to ``rank_sums``.

    Returns
    -------
    np.ndarray
        float64 p-values in [0, 1]; 1 where there are no positives or no negatives, or the
        activation is constant.
    """
    n = float(n_images)
    n_pos = np.asarray(n_pos, dtype=np.float64)
    n_neg = n - n_pos
    u = np.asarray(rank_sums, dtype=np.float64) - n_pos * (n_pos + 1) / 2
    if n > 1:
        variance = n_pos * n_neg / 12 * ((n + 1) - np.asarray(tie_sums) / (n * (n - 1)))
    else:
        variance = np.zeros_like(u)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (u - n_pos * n_neg / 2 - 0.5) / np.sqrt(variance)
    p = ndtr(-z)
    return np.where((n_pos > 0) & (n_neg > 0) & (variance > 0), p, 1.0)


def term_scores(
    indicator: sparse.spmatrix | np.ndarray, units: RankedUnits
) -> tuple[np.ndarray, np.ndarray]:
    """AUC and p-value of every (term, unit) pair: rank sums by one sparse product.

    Parameters
    ----------
    indicator : scipy.sparse matrix or np.ndarray
        (n_images, n_terms) 0/1: where each term holds.
    units : RankedUnits
        The units' ranks over the same images, in the same order.

    Returns
    -------
    auc, p : np.ndarray
        float64 (n_terms, n_units) each; AUC NaN and p 1 for degenerate pairs.
    """
    t = sparse.csr_matrix(indicator, dtype=np.float64)
    if t.shape[0] != units.n_images:
        raise ValueError(f"indicator has {t.shape[0]} images, the activations {units.n_images}")
    rank_sums = np.asarray(t.T @ units.ranks)
    n_pos = np.asarray(t.sum(axis=0)).ravel()[:, None]
    auc = auc_from_rank_sums(rank_sums, n_pos, units.n_images)
    auc[:, units.constant] = np.nan
    p = p_from_rank_sums(rank_sums, n_pos, units.n_images, units.tie_sums[None, :])
    return auc, p
