"""Cluster words: a cluster of one unit (largest activation positive) takes its unit's words,
the rest are searched; the result equals searching every cluster's pooled activation."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from carto_assets.core.words.search import label_units, pooled_activations, term_indicator
from carto_assets.stages.unit_labels import _cluster_columns, _word_columns
from carto_assets.study import LabelsConfig


def test_singleton_clusters_reuse_their_units_words_as_a_full_search_would_find():
    rng = np.random.default_rng(3)
    n, units = 160, 9
    shape = rng.integers(0, 4, n)
    colour = rng.integers(0, 3, n)
    maxima = rng.gamma(1.0, size=(n, units)).astype(np.float32)
    maxima[:, 0] += 3.0 * (shape == 1)  # a shape detector
    maxima[:, 1] = np.where(colour == 2, 2.0, 0.0) + 0.1 * rng.random(n)
    maxima[:, 2] = 0.0  # dead: pooled to zeros, searched as a cluster
    maxima[:, 3] = maxima[:, 0] * 0.5 + rng.random(n)
    ids = np.arange(n)
    terms, indicator = term_indicator(
        ids,
        np.concatenate([ids, ids]),
        ["shape"] * n + ["colour"] * n,
        [f"s{v}" for v in shape] + [f"c{v}" for v in colour],
    )
    settings = LabelsConfig()
    groups = [np.array([0]), np.array([1, 3]), np.array([2]), np.array([4]), np.array([5, 6, 7, 8])]
    words = label_units(maxima, terms, indicator, settings)
    pooled = pooled_activations(maxima, groups)
    study = SimpleNamespace(labels=settings)
    got = _cluster_columns(words, maxima, pooled, groups, terms, indicator, study)
    expected = _word_columns(label_units(pooled, terms, indicator, settings))
    assert got.keys() == expected.keys()
    for name, values in expected.items():
        if isinstance(values, np.ndarray):
            np.testing.assert_allclose(got[name], values, rtol=1e-12, equal_nan=True)
            assert got[name].dtype == values.dtype, name
        else:
            assert list(got[name]) == list(values), name
    assert words.formula[0] is not None and got["formula"][0] == words.formula[0]
