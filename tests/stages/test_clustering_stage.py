"""The clustering stage on a hand-made database: dead neurons, labels, gain vs random groups."""

import numpy as np
import polars as pl
import pytest

from carto_assets import schema
from carto_assets.stages.cluster_quality import quality, stored_clustering
from carto_assets.stages.clustering import find_clusters, load_neuron_sets, tables
from carto_assets.storage.quality import figure_frame, figures_of
from carto_assets.storage.store import CartoStore
from carto_assets.study import ClusteringConfig


def make_store(tmp_path) -> CartoStore:
    """Layer 0: neurons 0-1 dead (constant activations, identical tie-break sets), neurons 2-4
    share images 0-9 (all 'red'), neurons 5-7 share images 20-29 (all 'blue')."""
    rows = []
    for n in (0, 1):
        rows += [(n, r + 1, r, 0.0) for r in range(10)]
    for n in (2, 3, 4):
        rows += [(n, r + 1, r, 10.0 - r) for r in range(10)]
    for n in (5, 6, 7):
        rows += [(n, r + 1, 20 + r, 10.0 - r) for r in range(10)]
    columns = dict(zip(("neuron_id", "rank", "image_id", "activation"), zip(*rows)))
    top = schema.frame("top_images", {**columns, "y": [0] * len(rows), "x": [0] * len(rows)})
    neurons = schema.frame(
        "neurons",
        {
            "neuron_id": range(8),
            "layer": ["l0"] * 8,
            "layer_index": [0] * 8,
            "channel": range(8),
            "map_height": [1] * 8,
            "map_width": [1] * 8,
            "kind": ["channel"] * 8,
        },
    )
    images = schema.frame(
        "images",
        {
            "image_id": range(40),
            "shard": [0] * 40,
            "source": [f"shapes:{i}" for i in range(40)],
            "label": [0] * 20 + [1] * 20,
            "label_name": ["a"] * 20 + ["b"] * 20,
        },
    )
    concepts = schema.frame(
        "image_concepts",
        {"image_id": range(40), "concept": ["colour"] * 40, "value": ["red"] * 20 + ["blue"] * 20},
    )
    store = CartoStore(tmp_path / "t.duckdb")
    store.replace_tables(
        {"top_images": top, "neurons": neurons, "images": images, "image_concepts": concepts}
    )
    return store


def test_dead_neurons_stay_singletons_and_concepts_are_labelled(tmp_path):
    store = make_store(tmp_path)
    sets = load_neuron_sets(store)
    assert np.diff(sets.indptr)[:2].tolist() == [0, 0]  # dead neurons: empty sets
    cfg = ClusteringConfig(threshold=0.5, method="exact")
    result = find_clusters(sets, cfg)
    labels = result.clustering.labels
    assert labels[0] != labels[1]
    assert (
        len({labels[2], labels[3], labels[4]}) == 1 and len({labels[5], labels[6], labels[7]}) == 1
    )
    frames = tables(result, store, store.query("SELECT neuron_id, layer FROM neurons"))
    clusters = frames["clusters"]
    text = dict(zip(clusters["cluster_id"].to_list(), clusters["label"].to_list()))
    assert text[labels[0]] == "constant activation (dead neuron)"
    assert "colour=red (1.0)" in text[labels[2]]
    assert "colour=blue (1.0)" in text[labels[5]]
    store.replace_tables(frames)
    stored_labels, stored_pairs = stored_clustering(store, sets)
    assert np.array_equal(stored_labels, labels)
    assert np.array_equal(stored_pairs.i, result.pairs.i)
    assert np.array_equal(stored_pairs.j, result.pairs.j)
    report = quality(sets, stored_labels, stored_pairs, store, cfg)
    summary = {
        k: v
        for (k, layer), v in figures_of(figure_frame("cluster_quality", report.figures())).items()
        if layer is None
    }
    concept_rows = report.table.filter(pl.col("kind") == "concept")
    assert concept_rows["purity"].to_list() == [1.0, 1.0]
    assert concept_rows["gain"].to_list() == [1.0, 1.0]
    # Random groups of 3 from this layer rarely hold only red (or only blue) images.
    assert summary["concept_random_gain"] < 1.0
    assert summary["concept_cluster_gain"] == 1.0
    assert summary["coverage"] == pytest.approx(
        6 / store.query("SELECT count(*) n FROM neurons")["n"][0]
    )
    assert summary["pair_recall"] == 1.0
