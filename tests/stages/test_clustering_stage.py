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


def test_annotations_of_the_top_images_are_every_images_rows_for_them(tmp_path):
    """``load_annotations(store, image_ids)`` reads in SQL what reading every image's rows and
    keeping those images gives (ids in any order, repeated; none: no rows)."""
    import duckdb

    from carto_assets.stages.clustering import load_annotations
    from carto_assets.storage.store import CartoStore

    path = tmp_path / "carto.duckdb"
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE images AS SELECT i::BIGINT AS image_id, 'class_' || (i % 3) AS label_name "
        "FROM range(50) t(i)"
    )
    con.execute(
        "CREATE TABLE image_concepts AS SELECT i::BIGINT AS image_id, c AS concept, "
        "c || '=' || ((i * 7 + length(c)) % 4) AS value "
        "FROM range(50) t(i), (VALUES ('colour'), ('shape')) v(c)"
    )
    con.close()
    store = CartoStore(path)
    every_concepts, every_classes = load_annotations(store)
    assert every_concepts.height == 100 and every_classes.height == 50
    ids = np.array([41, 3, 3, 17, 0, 49, 17])
    concepts, classes = load_annotations(store, ids)
    keys = ["image_id", "concept", "value"]
    for got, every in ((concepts, every_concepts), (classes, every_classes)):
        expected = every.filter(pl.col("image_id").is_in(ids.tolist()))
        assert got.sort(keys).equals(expected.sort(keys))
        assert sorted(set(got["image_id"].to_list())) == [0, 3, 17, 41, 49]
    none_concepts, none_classes = load_annotations(store, np.array([], dtype=np.int64))
    assert none_concepts.height == 0 and none_classes.height == 0
