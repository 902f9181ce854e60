"""Ranks, AUC and p-values against scipy's rankdata, scikit-learn and scipy's mannwhitneyu."""

import numpy as np
import pytest
from scipy import sparse, stats
from sklearn.metrics import roc_auc_score

from carto_assets.core.words.scoring import (
    auc_from_rank_sums,
    average_ranks,
    p_from_rank_sums,
    rank_units,
    term_scores,
)


def tied_data(seed, n=60, units=7, terms=5):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, (n, units)).astype(np.float32)  # many ties
    x[:, 1] = rng.normal(size=n)  # no ties
    x[:, 2] = 3.0  # constant
    indicator = rng.random((n, terms)) < rng.uniform(0.05, 0.6, terms)
    indicator[:, -1] = True  # holds on every image
    return x, indicator


@pytest.mark.parametrize("seed", range(5))
def test_average_ranks_and_ties_match_scipy(seed):
    x, _ = tied_data(seed)
    ranked = rank_units(x)
    np.testing.assert_array_equal(ranked.ranks, stats.rankdata(x, axis=0))
    np.testing.assert_array_equal(average_ranks(x[:, 0]), stats.rankdata(x[:, 0]))
    for u in range(x.shape[1]):
        _, t = np.unique(x[:, u], return_counts=True)
        assert ranked.tie_sums[u] == (t.astype(float) ** 3 - t).sum()
    np.testing.assert_array_equal(ranked.constant, np.arange(x.shape[1]) == 2)


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_p_match_sklearn_and_mannwhitneyu(seed):
    x, indicator = tied_data(seed)
    auc, p = term_scores(sparse.csc_matrix(indicator), rank_units(x))
    for k in range(indicator.shape[1] - 1):
        for u in (0, 1, 3, 4, 5, 6):
            column = x[:, u].astype(np.float64)  # scipy computes in its input's precision
            pos, neg = column[indicator[:, k]], column[~indicator[:, k]]
            assert auc[k, u] == pytest.approx(roc_auc_score(indicator[:, k], x[:, u]), abs=1e-12)
            reference = stats.mannwhitneyu(pos, neg, alternative="greater", method="asymptotic")
            assert p[k, u] == pytest.approx(reference.pvalue, rel=1e-9, abs=1e-15)


def test_degenerate_cases_score_nothing():
    x, indicator = tied_data(0)
    indicator[:, 0] = False  # holds nowhere
    auc, p = term_scores(indicator, rank_units(x))
    assert np.isnan(auc[0]).all() and (p[0] == 1).all()  # no positives
    assert np.isnan(auc[-1]).all() and (p[-1] == 1).all()  # no negatives
    assert np.isnan(auc[:, 2]).all() and (p[:, 2] == 1).all()  # constant unit
    assert np.isnan(auc_from_rank_sums(np.array([3.0]), np.array([0]), 5)).all()
    assert p_from_rank_sums(np.array([15.0]), np.array([5]), 5, np.array([0.0]))[0] == 1


def test_bad_activations_are_refused():
    with pytest.raises(ValueError, match="finite"):
        rank_units(np.array([[1.0], [np.nan]]))
    with pytest.raises(ValueError, match="2-D"):
        rank_units(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="indicator has 3 images, the activations 2"):
        term_scores(np.ones((3, 1)), rank_units(np.zeros((2, 1))))
