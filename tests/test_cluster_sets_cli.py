"""``clustering.sets`` and ``clustering.top_fraction`` typed as a user types them: ``carto check``
refuses what cannot run in one line, and ``carto run`` clusters on each unit's top share of the
labels' sample, which the stored pairs and figures show."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from readme.walk import CARTO, run, write_study
from reference.clustering import neuron_sets_from_lists, top_sets_reference

from carto_assets.core.similarity.sets import pair_jaccard

#: The tiny shapes world: 240 images, all of them in the labels' sample.
TINY = {
    "model": "builtin",
    "dataset": {"kind": "shapes", "size": 240, "image_size": 32},
    "shards": 2,
    "top_k": 8,
    "batch_size": 50,
    "seed": 3,
    "training": {"epochs": 1, "batch_size": 64},
    "embedding": {"epochs": 1},
    "graph": {"images_per_class": 4, "faithfulness_edges": 4},
    "audit": {"enabled": False},
    "database": "tiny.duckdb",
}


@pytest.mark.parametrize(
    ("clustering", "labels", "message"),
    [
        (
            {"sets": "sample"},
            {"enabled": False},
            "carto: invalid study: {path}: study field 'clustering.sets' must be top_k or auto "
            "while labels.enabled is false",
        ),
        (
            {"top_fraction": 1.5},
            {},
            "carto: invalid study: {path}: study field 'clustering.top_fraction' must be a "
            "number in (0.0, 1.0], got 1.5",
        ),
        (
            {"sets": "images"},
            {},
            "carto: invalid study: {path}: study field 'clustering.sets' must be one of 'auto', "
            "'sample', 'top_k', got 'images'",
        ),
    ],
)
def test_check_refuses_sets_it_cannot_measure_in_one_line(tmp_path, clustering, labels, message):
    study = write_study(tmp_path, "bad", {**TINY, "clustering": clustering, "labels": labels})
    out = run([CARTO, "check", "--study", study.name], cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(message.format(path=study))


def test_check_accepts_top_k_sets_without_labels(tmp_path):
    fields = {**TINY, "clustering": {"sets": "top_k"}, "labels": {"enabled": False}}
    study = write_study(tmp_path, "plain", fields)
    out = run([CARTO, "check", "--study", study.name], cwd=tmp_path).ok()
    assert "is valid" in out.stdout


@pytest.mark.slow
def test_run_clusters_each_units_top_share_of_the_sample(tmp_path):
    # 5% of 240 images is 12, more than top_k 8: the sets differ from top_images.
    fields = {**TINY, "clustering": {"sets": "sample", "top_fraction": 0.05, "threshold": 0.2}}
    study = write_study(tmp_path, "sampled", fields)
    run([CARTO, "run", "--study", study.name], cwd=tmp_path).ok()
    con = duckdb.connect(str(tmp_path / "tiny.duckdb"), read_only=True)
    figures = dict(
        con.execute(
            "SELECT figure, value FROM study_quality WHERE asset = 'cluster_quality' "
            "AND figure IN ('cluster_set_size', 'cluster_set_images')"
        ).fetchall()
    )
    assert figures == {"cluster_set_size": 12.0, "cluster_set_images": 240.0}
    # The stored pairs' Jaccard is the one of the top-12 sets, recomputed from the sample.
    sample = con.execute("SELECT image_id, maxima FROM unit_maxima ORDER BY image_id").fetchall()
    image_ids = [row[0] for row in sample]
    maxima = np.array([row[1] for row in sample], dtype=np.float32)
    sets = neuron_sets_from_lists(top_sets_reference(maxima, image_ids, 12))
    pairs = con.execute("SELECT neuron_a, neuron_b, jaccard FROM neuron_pairs").fetchall()
    assert pairs, "the tiny study has no similar pair at threshold 0.2"
    a, b, stored = (np.array(column) for column in zip(*pairs))
    assert np.allclose(stored, pair_jaccard(sets, a, b))
    # Sets of 12 are not the top-8 sets of top_images: the pairs' Jaccard differs from those.
    top = con.execute("SELECT neuron_id, image_id FROM top_images ORDER BY ALL").fetchall()
    top_lists = [[] for _ in range(maxima.shape[1])]
    for neuron, image in top:
        top_lists[neuron].append(image)
    assert not np.allclose(stored, pair_jaccard(neuron_sets_from_lists(top_lists), a, b))
    # Every unit's set holds 12 images (or none, a dead unit).
    sizes = np.diff(sets.indptr)
    assert set(sizes.tolist()) <= {0, 12} and (sizes == 12).any()
