"""Cluster labels, purity and the random-group baseline on a hand-made example, worked by hand."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest
from reference.clustering import neuron_sets_from_lists

from carto_assets.stages.cluster_quality import (
    group_gains,
    group_images,
    layer_shares,
    random_groups,
)
from carto_assets.stages.clustering import concept_shares, label_clusters, purity_table

ANNOTATION_SCHEMA = {"image_id": pl.Int64, "concept": pl.Utf8, "value": pl.Utf8}


def annotated_example():
    """Layer 0: cluster 0 = units 0, 1 (images 1-4), singletons 2 ({10, 11}) and 3 ({12});
    layer 1: cluster 3 = units 4, 5 (images 20-22), the whole layer."""
    sets = neuron_sets_from_lists(
        [[1, 2, 3], [2, 3, 4], [10, 11], [12], [20, 21], [21, 22]],
        layers=[0, 0, 0, 0, 1, 1],
    )
    labels = np.array([0, 0, 1, 2, 3, 3])
    rows = [
        (1, "colour", "red"),
        (2, "colour", "red"),
        (3, "colour", "red"),
        (4, "colour", "blue"),
        (1, "shape", "star"),
        (2, "shape", "star"),
        (3, "shape", "circle"),
        (4, "shape", "circle"),
        (1, "class", "cat"),
        (2, "class", "dog"),
        (3, "class", "cat"),
        (4, "class", "dog"),
        (10, "colour", "red"),
        (21, "colour", "green"),
        (22, "colour", "green"),
    ]
    annotations = pl.DataFrame(rows, schema=ANNOTATION_SCHEMA, orient="row")
    return sets, labels, annotations


def test_purity_counts_the_union_of_top_images():
    sets, labels, annotations = annotated_example()
    shares = concept_shares(sets, labels, annotations)
    n_images = dict(shares.select("cluster_id", "n_images").unique().iter_rows())
    # Union of top images: {1, 2, 3, 4} (a multiset would give red 5/6) and {20, 21, 22};
    # cluster 2's only image is unannotated, so it has no shares.
    assert n_images == {0: 4, 1: 2, 3: 3}
    purity = purity_table(shares).filter(pl.col("cluster_id").is_in([0, 3]))
    assert purity["concept"].to_list() == ["colour", "colour"]
    assert purity["value"].to_list() == ["red", "green"]
    np.testing.assert_allclose(purity["purity"].to_numpy(), [3 / 4, 2 / 3])
    # Layer 0's top images {1, 2, 3, 4, 10, 11, 12}: red on 1, 2, 3, 10.
    np.testing.assert_allclose(purity["layer_base"].to_numpy(), [4 / 7, 2 / 3])
    assert float(purity["purity"].mean()) == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_labels_name_over_represented_values_most_distinctive_first():
    sets, labels, annotations = annotated_example()
    shares = concept_shares(sets, labels, annotations)
    # Cluster 0: cat, dog, circle and star hold 1/2 of its images and 2/7 of the layer's
    # (lift 0.21), red 3/4 against 4/7 (lift 0.18); ties go by concept, then value. Cluster 1
    # (red 1/2 against 4/7) and cluster 3 (green, as common as in its layer) hold nothing
    # their layer does not: no label.
    text = dict(label_clusters(shares).iter_rows())
    assert text == {0: "class=cat (0.5), class=dog (0.5), shape=circle (0.5)"}
    two = dict(label_clusters(shares, max_terms=2).iter_rows())
    assert two == {0: "class=cat (0.5), class=dog (0.5)"}
    assert dict(label_clusters(shares, min_fraction=0.7).iter_rows()) == {0: "colour=red (0.75)"}


def test_a_class_term_repeating_a_concept_term_is_dropped():
    shares = pl.DataFrame(
        {
            "cluster_id": [0, 0],
            "layer_index": [0, 0],
            "concept": ["shape", "class"],
            "value": ["star", "star"],
            "fraction": [0.8, 0.8],
            "base": [0.2, 0.2],
        }
    )
    assert dict(label_clusters(shares).iter_rows()) == {0: "shape=star (0.8)"}


def mean_gain_per_cluster(sets, labels, annotations, clusters, n_draws, seed):
    ids, units, cluster_of = random_groups(sets, labels, clusters, n_draws, seed)
    gains = group_gains(
        group_images(sets, ids, units), annotations, layer_shares(sets, annotations)
    )
    # A group without annotated top images scores 0, as in quality().
    gain = np.zeros(cluster_of.size)
    gain[gains["group_id"].to_numpy()] = gains["gain"].to_numpy()
    return {int(c): float(gain[cluster_of == c].mean()) for c in clusters}, units


def test_random_baseline_averages_same_size_same_layer_groups():
    sets, labels, annotations = annotated_example()
    clusters = np.array([0, 3])
    baseline, units = mean_gain_per_cluster(sets, labels, annotations, clusters, 3000, seed=0)
    shares = layer_shares(sets, annotations)

    def gain_of(rows):
        images = group_images(sets, np.zeros(len(rows), dtype=np.int64), np.array(rows))
        gains = group_gains(images, annotations, shares)
        return float(gains["gain"][0]) if len(gains) else 0.0

    # Layer 1 holds exactly the two units of cluster 3, so every random group equals it.
    assert baseline[3] == pytest.approx(gain_of([4, 5]))
    # Layer 0: a uniformly random pair of its four units.
    expected = np.mean([gain_of(list(pair)) for pair in itertools.combinations(range(4), 2)])
    assert baseline[0] == pytest.approx(expected, abs=0.02)
    # The baseline is not trivial: the pairs' gains differ.
    assert len({round(gain_of(list(p)), 6) for p in itertools.combinations(range(4), 2)}) > 1
    again, again_units = mean_gain_per_cluster(sets, labels, annotations, clusters, 3000, seed=0)
    assert again == baseline
    np.testing.assert_array_equal(again_units, units)
