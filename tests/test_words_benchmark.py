"""benchmarks/words.py: the explanation section's diagnosis (a cluster's AUC for an image's
shape), against scikit-learn's ``roc_auc_score`` on the pooled activation written out.

The benchmark's measurements on a mapped study are not tested here (they need the demo's
database); what it computes from them is.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.metrics import roc_auc_score

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "words.py"
spec = importlib.util.spec_from_file_location("words_benchmark", PATH)
bench = importlib.util.module_from_spec(spec)
sys.modules["words_benchmark"] = bench  # dataclasses look their module up there
spec.loader.exec_module(bench)


class _Store:
    def __init__(self, members: dict[int, list[int]]):
        self.members = members

    def query(self, sql: str, params=None) -> pl.DataFrame:
        assert "neuron_clusters" in sql
        ids = sorted(self.members)
        return pl.DataFrame({"cluster_id": ids, "members": [self.members[c] for c in ids]})


class _Prepared:
    def __init__(self, members: dict[int, list[int]]):
        self.store = _Store(members)


def _world(seed: int = 0):
    rng = np.random.default_rng(seed)
    n = 200
    shapes = rng.choice(["heart", "star", "cross"], size=n)
    maxima = rng.random((n, 4)).astype(np.float32)
    maxima[shapes == "heart", 0] += 0.8  # unit 0 fires on hearts
    maxima[:, 2] *= 10  # a member of another scale: pooling divides by each maximum
    maxima[shapes == "star", 3] += 0.5
    ann = bench.Annotations.of_rows(np.arange(n), ["shape"] * n, shapes.tolist(), n)
    return maxima, shapes, ann


def test_a_clusters_shape_auc_is_roc_auc_of_its_pooled_activation():
    maxima, shapes, ann = _world()
    members = {7: [0, 2], 3: [1], 11: [3]}
    columns, ranks = bench.concept_ranks(_Prepared(members), maxima)
    assert set(columns) == set(members)
    asked = [("heart", 7), ("star", 11), ("cross", 3), ("heart", 11)]
    got = bench.shape_aucs(columns, ranks, ann, [s for s, _ in asked], [c for _, c in asked])
    for (shape, cluster), auc in zip(asked, got):
        m = members[cluster]
        pooled = (maxima[:, m] / maxima[:, m].max(axis=0)).mean(axis=1)
        assert abs(auc - roc_auc_score(shapes == shape, pooled)) < 1e-12
    assert got[0] > 0.8 and got[1] > 0.8  # the planted responses
    assert abs(got[2] - 0.5) < 0.15  # unit 1 is noise


def test_a_shape_the_images_never_show_has_no_auc():
    maxima, _, ann = _world()
    columns, ranks = bench.concept_ranks(_Prepared({0: [0]}), maxima)
    got = bench.shape_aucs(columns, ranks, ann, ["crescent", "heart"], [0, 0])
    assert np.isnan(got[0]) and np.isfinite(got[1])
