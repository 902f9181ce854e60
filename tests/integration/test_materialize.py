"""The whole asset graph on a tiny study, into a temporary database and Dagster instance."""

import dagster as dg
import numpy as np
import polars as pl
import pytest
import torch

from carto_assets.cli.run import RunFailed, materialize_all
from carto_assets.sources.datasets import open_source
from carto_assets.stages.images import build_manifest, load_manifest, save_manifest
from carto_assets.stages.model import prepare_model
from carto_assets.stages.prepared import PreparedStudy
from carto_assets.stages.stored_model import load_model
from carto_assets.storage.store import CartoStore
from carto_assets.study import load_study

pytestmark = pytest.mark.slow


def test_tables_hold_what_the_contract_says(materialized):
    study, _, _ = materialized
    store = CartoStore(study.database_path)
    images = store.query("SELECT * FROM images ORDER BY image_id")
    assert len(images) == 240 and images["image_id"].to_list() == list(range(240))
    assert sorted(images["shard"].unique().to_list()) == [0, 1]
    assert set(store.query("SELECT DISTINCT concept FROM image_concepts")["concept"]) >= {
        "shape",
        "colour",
        "size",
    }
    neurons = store.query("SELECT * FROM neurons ORDER BY neuron_id")
    assert neurons["neuron_id"].to_list() == list(range(len(neurons)))
    channels = neurons.filter(neurons["kind"] == "channel")
    assert channels["layer"].unique(maintain_order=True).to_list() == [
        "block1",
        "block2",
        "block3",
        "block4",
    ]
    # block3's dictionary features sit right after block3's channels, as a pseudo-layer.
    assert neurons["layer"].unique(maintain_order=True).to_list() == [
        "block1",
        "block2",
        "block3",
        "block3:features",
        "block4",
    ]
    assert neurons["layer_index"].unique(maintain_order=True).to_list() == list(range(5))
    features = neurons.filter(neurons["kind"] == "feature")
    assert set(neurons["kind"]) == {"channel", "feature"}
    assert set(features["layer"]) == {"block3:features"}
    assert features["channel"].to_list() == list(range(2 * 64))
    per = store.query(
        "SELECT neuron_id, count(*) AS n, min(rank) AS lo, max(rank) AS hi, "
        "count(DISTINCT image_id) AS distinct_images FROM top_images GROUP BY neuron_id"
    )
    assert len(per) == len(neurons)
    assert set(per["n"]) == {8} and set(per["lo"]) == {1} and set(per["hi"]) == {8}
    assert set(per["distinct_images"]) == {8}
    ranges = store.query(
        "SELECT min(image_id) AS lo, max(image_id) AS hi, min(y) AS ymin, "
        "bool_and(y < map_height AND x < map_width) AS inside "
        "FROM top_images JOIN neurons USING (neuron_id)"
    )
    assert ranges["lo"][0] >= 0 and ranges["hi"][0] < 240 and ranges["inside"][0]
    # The labels' sample: every image of a study smaller than labels.sample_images, with every
    # unit's activation (features included); its maxima are each unit's top-k activations.
    sample = store.query("SELECT image_id, len(maxima) AS n FROM unit_maxima ORDER BY image_id")
    assert sample["image_id"].to_list() == list(range(240))
    assert set(sample["n"]) == {len(neurons)}
    top = store.query(
        "SELECT t.activation, m.maxima[t.neuron_id + 1] AS kept "
        "FROM top_images t JOIN unit_maxima m USING (image_id)"
    )
    assert (top["activation"] - top["kept"]).abs().max() < 1e-6
    annotations = store.query(
        "SELECT concept, count(*) AS n FROM image_annotations GROUP BY concept"
    )
    by_concept = dict(annotations.iter_rows())
    assert by_concept.pop("class") == 240
    world = store.query("SELECT concept, count(*) AS n FROM image_concepts GROUP BY concept")
    assert by_concept == dict(world.iter_rows())


def test_top_images_match_a_direct_full_pass(materialized):
    """Recompute some neurons' activations over every image and fully sort them."""
    study, _, _ = materialized
    bundle, layers, _ = load_model(study)
    source = open_source(study)
    pixels, ok = source.load_many(list(range(240)))
    assert ok.all()
    from carto_assets.core.network.recorder import LayerRecorder

    with LayerRecorder(bundle.module, layers) as rec, torch.no_grad():
        bundle.module(bundle.normalize(torch.from_numpy(pixels)))
        values, _, _ = rec.collect()
    store = CartoStore(study.database_path)
    # Column j of the channels' values is the j-th channel unit (features sit in between).
    channel_ids = store.query(
        "SELECT neuron_id FROM neurons WHERE kind = 'channel' ORDER BY neuron_id"
    )["neuron_id"].to_list()
    for column in (0, 17, values.shape[1] - 1):
        col = values[:, column].numpy()
        neuron = channel_ids[column]
        expected = sorted(range(240), key=lambda i: (-col[i], i))[:8]
        got = store.query(
            f"SELECT image_id, activation FROM top_images WHERE neuron_id = {neuron} ORDER BY rank"
        )
        assert got["image_id"].to_list() == expected
        np.testing.assert_allclose(got["activation"].to_numpy(), col[expected], rtol=1e-5)


def test_rerun_replaces_rows_and_reuses_the_checkpoint(materialized):
    study, instance, study_file = materialized
    store = CartoStore(study.database_path)
    before = store.query("SELECT count(*) AS n FROM top_images")["n"][0]
    materialize_all(str(study_file), instance, say=lambda m: None)
    assert store.query("SELECT count(*) AS n FROM top_images")["n"][0] == before
    assert store.query("SELECT count(*) AS n FROM images")["n"][0] == 240
    mats = instance.fetch_materializations(dg.AssetKey("model"), limit=5).records
    assert mats[0].asset_materialization.metadata["reused_cached_checkpoint"].value is True
    dictionary = instance.fetch_materializations(dg.AssetKey("dictionary"), limit=1).records[0]
    assert dictionary.asset_materialization.metadata["reused_cached_dictionaries"].value is True
    meta = mats[0].asset_materialization.metadata
    # The trained network's accuracy on the held-out images, the first round(n * fraction) of
    # the training seed's permutation of the image ids, recomputed here.
    held = np.random.default_rng(study.training_seed).permutation(240)
    held = np.sort(held[: round(240 * study.training.holdout_fraction)])
    assert meta["n_holdout_images"].value == len(held) > 0
    bundle, _, _ = load_model(study)
    pixels, ok = open_source(study).load_many(held.tolist())
    labels = store.query(
        f"SELECT label FROM images WHERE image_id IN ({', '.join(map(str, held))}) "
        "ORDER BY image_id"
    )["label"].to_numpy()
    with torch.no_grad():
        predicted = bundle.module(bundle.normalize(torch.from_numpy(pixels))).argmax(1).numpy()
    assert ok.all()
    assert meta["holdout_accuracy"].value == pytest.approx(float((predicted == labels).mean()))


def test_every_shard_partition_was_materialized(materialized):
    _, instance, _ = materialized
    status = instance.get_materialized_partitions(dg.AssetKey("activations"))
    assert status == {"shard-0000", "shard-0001"}


def test_unknown_layer_fails_before_the_forward_pass(tmp_path, make_study):
    study_file = make_study(tmp_path, layers=["block1", "nope"])
    with pytest.raises(RunFailed, match=r"unknown layer 'nope'.*valid layers: .*block1"):
        materialize_all(str(study_file), dg.DagsterInstance.ephemeral(), say=lambda m: None)
    assert not (load_study(study_file).files_dir / "activations").exists()


def test_top_k_larger_than_an_image_folder_fails_clearly(tmp_path, make_study):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 30), (i * 50, 0, 0)).save(tmp_path / "imgs" / cls / f"{i}.png")
    study_file = make_study(
        tmp_path,
        model="torchvision:resnet18",
        dataset={"kind": "imagefolder", "path": "imgs", "image_size": 32},
        top_k=10,
        shards=1,
    )
    with pytest.raises(RunFailed, match=r"top_k=10 is larger than the dataset \(6 readable"):
        materialize_all(str(study_file), dg.DagsterInstance.ephemeral(), say=lambda m: None)


def test_image_folder_study_with_a_torchvision_model_end_to_end(tmp_path, make_study):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(6):
            arr = rng.integers(0, 255, (36, 48, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / cls / f"{i}.jpg")
    (tmp_path / "imgs" / "cats" / "broken.jpg").write_bytes(b"")
    study_file = make_study(
        tmp_path,
        model="torchvision:resnet18",
        dataset={"kind": "imagefolder", "path": "imgs", "image_size": 64},
        top_k=4,
        shards=2,
        layers=["layer2", "layer1"],
    )
    instance = dg.DagsterInstance.ephemeral()
    materialize_all(str(study_file), instance, say=lambda m: None)
    study = load_study(study_file)
    store = CartoStore(study.database_path)
    assert store.query("SELECT count(*) AS n FROM images")["n"][0] == 12
    layers = store.query(
        "SELECT layer, count(*) AS n FROM neurons GROUP BY layer, layer_index ORDER BY layer_index"
    )
    assert layers["layer"].to_list() == ["layer1", "layer2"]  # forward order, not listed order
    assert layers["n"].to_list() == [64, 128]
    mat = instance.fetch_materializations(dg.AssetKey("images"), limit=1).records[0]
    assert mat.asset_materialization.metadata["n_skipped_files"].value == 1


def test_class_importance_matches_a_direct_count(materialized):
    """Summit's rule recomputed from scratch for a few neurons and classes."""
    from carto_assets.core.network.recorder import LayerRecorder, top_mass_mask

    study, _, _ = materialized
    bundle, layers, _ = load_model(study)
    pixels, _ = open_source(study).load_many(list(range(240)))
    store = CartoStore(study.database_path)
    labels = store.query("SELECT label FROM images ORDER BY image_id")["label"].to_numpy()
    with LayerRecorder(bundle.module, layers) as rec, torch.no_grad():
        bundle.module(bundle.normalize(torch.from_numpy(pixels)))
        values, _, _ = rec.collect()
    first_layer = values[:, : layers[0].channels]
    mask = top_mass_mask(first_layer, study.mass_fraction).numpy()
    got = store.query("SELECT label, neuron_id, score, mean_activation FROM class_importance")
    n_units = store.query("SELECT count(*) AS n FROM neurons")["n"][0]  # channels + features
    assert len(got) == len(set(labels.tolist())) * n_units
    for label in sorted(set(labels.tolist()))[:3]:
        for neuron in (0, 5):
            row = got.filter((got["label"] == label) & (got["neuron_id"] == neuron))
            sel = labels == label
            assert row["score"][0] == pytest.approx(mask[sel, neuron].mean())
            assert row["mean_activation"][0] == pytest.approx(
                float(values[sel, neuron].mean()), rel=1e-4
            )


def test_clustering_tables_are_consistent(materialized):
    study, instance, _ = materialized
    store = CartoStore(study.database_path)
    n_neurons = store.query("SELECT count(*) AS n FROM neurons")["n"][0]
    sig = store.query("SELECT neuron_id, len(signature) AS n FROM minhash_signatures")
    assert len(sig) == n_neurons and set(sig["n"]) == {study.clustering.num_perm}
    nc = store.query(
        "SELECT nc.neuron_id, nc.cluster_id, nc.layer, n.layer AS neuron_layer, c.layer AS "
        "cluster_layer FROM neuron_clusters nc JOIN neurons n USING (neuron_id) "
        "JOIN clusters c USING (cluster_id)"
    )
    assert len(nc) == n_neurons and nc["neuron_id"].n_unique() == n_neurons
    assert (nc["layer"] == nc["neuron_layer"]).all() and (nc["layer"] == nc["cluster_layer"]).all()
    sizes = store.query(
        "SELECT c.cluster_id, c.size, count(*) AS members, c.label FROM clusters c "
        "JOIN neuron_clusters USING (cluster_id) GROUP BY ALL"
    )
    assert (sizes["size"] == sizes["members"]).all()
    assert sizes["label"].null_count() == 0
    pairs = store.query("SELECT * FROM neuron_pairs")
    assert (pairs["neuron_a"] < pairs["neuron_b"]).all()
    assert (pairs["jaccard"] >= study.clustering.threshold).all()
    mat = instance.fetch_materializations(dg.AssetKey("cluster_quality"), limit=1).records[0]
    meta = mat.asset_materialization.metadata
    # The share of the exact similar pairs (same layer, Jaccard of the top-image sets at least
    # the threshold; neurons with constant top-k activations have no set) that the study's
    # LSH found and stored in neuron_pairs, recomputed in SQL.
    exact = store.query(f"""
        WITH sets AS (
            SELECT DISTINCT t.neuron_id, n.layer_index, t.image_id
            FROM top_images t JOIN neurons n USING (neuron_id)
            WHERE t.neuron_id IN (SELECT neuron_id FROM top_images GROUP BY neuron_id
                                  HAVING max(activation) > min(activation))
        ), sizes AS (SELECT neuron_id, count(*) AS size FROM sets GROUP BY neuron_id),
        shared AS (
            SELECT a.neuron_id AS neuron_a, b.neuron_id AS neuron_b, count(*) AS inter
            FROM sets a JOIN sets b ON a.image_id = b.image_id
                AND a.layer_index = b.layer_index AND a.neuron_id < b.neuron_id
            GROUP BY ALL
        )
        SELECT neuron_a, neuron_b, p.neuron_a IS NOT NULL AS found
        FROM shared
        JOIN sizes sa ON sa.neuron_id = shared.neuron_a
        JOIN sizes sb ON sb.neuron_id = shared.neuron_b
        LEFT JOIN neuron_pairs p USING (neuron_a, neuron_b)
        WHERE inter / (sa.size + sb.size - inter) >= {study.clustering.threshold}
    """)
    assert meta["n_exact_pairs"].value == len(exact) > 0
    recall = store.query("SELECT value FROM study_quality WHERE figure = 'pair_recall'")["value"]
    assert recall.to_list() == [pytest.approx(exact["found"].mean(), rel=1e-12)]
    assert meta["pair_recall"].value == round(recall[0], 4)
    assert "adjusted_rand_index" in meta


def test_patches_and_concept_graph(materialized):
    from carto_assets.core.network.patches import decode_png

    study, instance, _ = materialized
    store = CartoStore(study.database_path)
    n_neurons = store.query("SELECT count(*) AS n FROM neurons")["n"][0]
    per = store.query(
        "SELECT neuron_id, count(*) AS n, max(rank) AS hi FROM example_patches GROUP BY neuron_id"
    )
    m = min(study.graph.patches_per_neuron, study.top_k)
    assert len(per) == n_neurons and set(per["n"]) == {m} and set(per["hi"]) == {m}
    png = store.query("SELECT png FROM example_patches LIMIT 1")["png"][0]
    assert decode_png(png).shape == (study.graph.patch_size, study.graph.patch_size, 3)
    # Patches are cut from the image the top_images row names, around its argmax.
    joined = store.query(
        "SELECT count(*) AS n FROM example_patches p JOIN top_images t "
        "USING (neuron_id, rank) WHERE p.image_id <> t.image_id"
    )
    assert joined["n"][0] == 0

    nodes = store.query("SELECT * FROM concept_graph_nodes")
    assert len(nodes) > 0
    per_layer = nodes.group_by("label", "layer").len()
    assert per_layer["len"].max() <= study.graph.nodes_per_layer
    clusters = store.query("SELECT cluster_id, layer FROM clusters")
    assert len(nodes.join(clusters, on=["cluster_id", "layer"])) == len(nodes)
    edges = store.query(
        "SELECT e.*, ls.layer_index AS s_idx, lt.layer_index AS t_idx FROM concept_graph_edges e "
        "JOIN (SELECT DISTINCT layer, layer_index FROM neurons) ls ON ls.layer = e.source_layer "
        "LEFT JOIN (SELECT DISTINCT layer, layer_index FROM neurons) lt "
        "ON lt.layer = e.target_layer"
    )
    assert len(edges) > 0 and (edges["weight"] > 0).all()
    # Channel layers: consecutive mapped layers only, the last one into the prediction (the
    # graph without features). A feature pseudo-layer gets edges from the channel layer just
    # below its source and sends them to the prediction (block3:features is the only one).
    kinds = store.query("SELECT DISTINCT layer, layer_index, kind FROM neurons ORDER BY 2")
    channel_layers = kinds.filter(pl.col("kind") == "channel")["layer"].to_list()
    rank = {name: i for i, name in enumerate(channel_layers)}
    channel_edges = edges.filter(pl.col("source_layer").is_in(channel_layers))
    inner = channel_edges.filter(pl.col("target_layer").is_in(channel_layers))
    assert len(inner) > 0
    assert all(rank[t] - rank[s] == 1 for s, t in zip(inner["source_layer"], inner["target_layer"]))
    pred = edges.filter(edges["target_layer"] == "prediction")
    assert len(pred) > 0
    assert set(pred.filter(pl.col("source_layer").is_in(channel_layers))["source_layer"]) == {
        channel_layers[-1]
    }
    feature_pairs = set(
        zip(
            *edges.filter(
                ~pl.col("source_layer").is_in(channel_layers)
                | ~pl.col("target_layer").is_in([*channel_layers, "prediction"])
            )
            .select("source_layer", "target_layer")
            .to_dict(as_series=False)
            .values()
        )
    )
    assert feature_pairs <= {("block2", "block3:features"), ("block3:features", "prediction")}
    cascades = store.query("SELECT * FROM concept_cascades")
    assert set(cascades["direction"]) <= {"up", "down"} and (cascades["depth"] >= 1).all()
    mat = instance.fetch_materializations(dg.AssetKey("concept_graph"), limit=1).records[0]
    rho = mat.asset_materialization.metadata["faithfulness_spearman_rho"].value
    # What the asset check wants: edge weights rank the ablation drops the same way.
    assert rho > 0


def test_cooccurrence_in_sql_matches_python_sets(materialized):
    from reference.cooccurrence import cooccurrence_counts_bruteforce

    study, _, _ = materialized
    store = CartoStore(study.database_path)
    table = store.query("SELECT * FROM cooccurrence")
    top = store.query("SELECT neuron_id, image_id FROM top_images")
    a, b, count = cooccurrence_counts_bruteforce(top["neuron_id"], top["image_id"])
    assert len(table) > 0
    assert table.equals(pl.DataFrame({"neuron_a": a, "neuron_b": b, "count": count}))


def test_concept_graph_is_the_same_whatever_the_class_chunks(materialized):
    """The tables the partitioned assets published equal one in-process run with one class per
    chunk and one with every class in a single chunk."""
    from carto_assets.stages import concept_graph as graph_stage

    study, _, _ = materialized
    store = CartoStore(study.database_path)
    published = store.query("SELECT * FROM concept_graph_edges")
    faith = store.query("SELECT * FROM concept_graph_faithfulness")
    n_classes = len(load_manifest(study)[1])
    for per in (1, n_classes):
        g = graph_stage.concept_graph(PreparedStudy(study, store), classes_per_chunk=per)
        assert g.chunks == -(-n_classes // per)
        assert g.edges.select(published.columns).equals(published)
        assert g.faithfulness.select(faith.columns).equals(faith)
        for table, frame in (
            ("concept_graph_nodes", g.nodes),
            ("class_relevance", g.relevance),
            ("concept_graph_ablation", g.ablation),
        ):
            assert frame.equals(store.query(f"SELECT * FROM {table}")), table


def test_nodes_are_the_rule_applied_to_the_stored_scores(materialized):
    """The published nodes are the study's rule (relevance) applied to class_relevance, as the
    SQL the graph used to run; the units behind them are its top fraction per layer; every
    class and layer with nodes has its three ablation rows; the figures compare the rules."""
    from reference.attribution import graph_nodes_sql

    from carto_assets.storage import quality

    study, instance, _ = materialized
    store = CartoStore(study.database_path)
    assert study.graph.importance == "relevance"
    scores = store.query(
        "SELECT r.label, r.neuron_id, n.layer, n.layer_index, nc.cluster_id, r.share AS score "
        "FROM class_relevance r JOIN neurons n USING (neuron_id) "
        "JOIN neuron_clusters nc USING (neuron_id)"
    )
    g = study.graph
    want = graph_nodes_sql(scores, g.top_neuron_fraction, g.nodes_per_layer)
    nodes = store.query("SELECT * FROM concept_graph_nodes ORDER BY ALL")
    assert nodes.drop("importance").equals(want.sort(nodes.columns).drop("importance"))
    np.testing.assert_allclose(nodes["importance"], want.sort(nodes.columns)["importance"])
    counted = store.query(
        "SELECT label, cluster_id, count(*) AS n FROM concept_graph_units GROUP BY ALL"
    )
    joined = nodes.join(counted, on=["label", "cluster_id"])
    assert len(joined) == len(nodes) and (joined["n"] == joined["important_members"]).all()
    # Relevance per unit: the stored mean share's absolute values sum to at most 1 per layer.
    per_layer = store.query(
        "SELECT label, layer, sum(abs(share)) AS s FROM class_relevance "
        "JOIN neurons USING (neuron_id) GROUP BY ALL"
    )
    assert (per_layer["s"] <= 1 + 1e-9).all() and (per_layer["s"] > 0).any()
    ablation = store.query("SELECT * FROM concept_graph_ablation")
    layers_with_nodes = store.query("SELECT DISTINCT label, layer FROM concept_graph_nodes")
    assert len(ablation) == 3 * len(layers_with_nodes)
    assert set(ablation["chosen_by"]) == {"relevance", "activation", "random"}
    assert (ablation["images"] == study.graph.ablation_images).all()
    np.testing.assert_allclose(ablation["drop"], ablation["baseline"] - ablation["ablated"])
    figures = quality.figures_of(store.figures(), "concept_graph")
    for rule in ("relevance", "activation"):
        assert {("nodes_of_class_" + rule, x) for x in set(layers_with_nodes["layer"])} <= set(
            figures
        )
    mean_drop = (
        ablation.filter(pl.col("chosen_by") == "random")
        .group_by("layer")
        .agg(pl.col("drop").mean())
    )
    for layer, drop in mean_drop.iter_rows():
        assert figures[("node_ablation_drop_random", layer)] == pytest.approx(drop)
    mat = instance.fetch_materializations(dg.AssetKey("concept_graph"), limit=1).records[0]
    meta = mat.asset_materialization.metadata
    assert meta["node_rule"].value == "relevance"
    assert set(meta["seconds_per_class_by_step"].value) == set(graph_stage_steps())


def graph_stage_steps():
    from carto_assets.stages.concept_graph import STEPS

    return STEPS


def test_embedding_projection_and_neighbours_cover_every_neuron(materialized):
    study, instance, _ = materialized
    store = CartoStore(study.database_path)
    n = store.query("SELECT count(*) AS n FROM neurons")["n"][0]
    co = store.query("SELECT * FROM cooccurrence")
    assert (co["neuron_a"] < co["neuron_b"]).all() and (co["count"] >= 1).all()
    # Counts equal a direct SQL self-join on top_images.
    direct = store.query(
        "SELECT a.neuron_id AS neuron_a, b.neuron_id AS neuron_b, count(*) AS count "
        "FROM top_images a JOIN top_images b ON a.image_id = b.image_id "
        "AND a.neuron_id < b.neuron_id GROUP BY ALL ORDER BY ALL"
    )
    assert co.sort("neuron_a", "neuron_b").equals(direct.cast(co.schema))
    emb = store.query("SELECT neuron_id, len(vector) AS d FROM neuron_embedding")
    assert len(emb) == n and set(emb["d"]) == {study.embedding.dim}
    proj = store.query("SELECT * FROM neuron_projection")
    assert len(proj) == n and proj["x"].is_finite().all() and proj["y"].is_finite().all()
    nb = store.query(
        "SELECT neuron_id, count(*) AS k, bool_and(neighbor_id <> neuron_id) AS ok "
        "FROM neuron_neighbors GROUP BY neuron_id"
    )
    assert len(nb) == n and set(nb["k"]) == {study.embedding.neighbors} and nb["ok"].all()
    meta = instance.fetch_materializations(dg.AssetKey("neuron_embedding"), limit=1).records[0]
    losses = meta.asset_materialization.metadata["epoch_losses"].value
    assert len(losses) == study.embedding.epochs and all(np.isfinite(losses))


def test_random_init_torchvision_model_is_the_same_in_every_load(tmp_path, make_study):
    """weights: none is seeded and cached, so shards and later stages see one network."""
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (i * 60, 20, 0)).save(tmp_path / "imgs" / cls / f"{i}.png")
    study_file = make_study(
        tmp_path,
        model="torchvision:resnet18",
        dataset={"kind": "imagefolder", "path": "imgs", "image_size": 32},
        top_k=2,
        shards=1,
    )
    study = load_study(study_file)
    save_manifest(study, build_manifest(study))
    prepare_model(PreparedStudy.open(study), progress=lambda m: None)
    a, _, _ = load_model(study)
    torch.manual_seed(12345)  # whatever the global RNG state, the loaded weights are the same
    b, _, _ = load_model(study)
    assert torch.equal(a.module.conv1.weight, b.module.conv1.weight)


def test_feature_units_run_through_every_stage(materialized):
    """block3's dictionary features: top images equal to encoding every image, clusters of one
    kind, patches and metadata for the features, the dictionary reused on a rerun."""
    from carto_assets.core.network.hooks import capture
    from carto_assets.core.network.recorder import spatial_max
    from carto_assets.core.sae.autoencoder import encode

    study, instance, _ = materialized
    store = CartoStore(study.database_path)
    (layer,) = PreparedStudy(study, store).feature_layers
    units = store.query(
        "SELECT n.kind, count(DISTINCT n.neuron_id) AS units, count(t.rank) AS rows "
        "FROM neurons n LEFT JOIN top_images t USING (neuron_id) GROUP BY n.kind"
    )
    by_kind = dict(zip(units["kind"], units["units"]))
    assert by_kind == {"channel": 32 + 48 + 64 + 96, "feature": layer.n_features}
    assert (units["rows"] == units["units"] * study.top_k).all()  # every unit has its top-k

    bundle, _, _ = load_model(study)
    pixels, _ = open_source(study).load_many(list(range(240)))
    with capture(bundle.module, ["block3"]) as out, torch.no_grad():
        bundle.module(bundle.normalize(torch.from_numpy(pixels)))
    maps = out["block3"]
    z = encode(layer.sae, maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1]))
    values, _, _ = spatial_max(
        z.reshape(maps.shape[0], maps.shape[2], maps.shape[3], -1).permute(0, 3, 1, 2)
    )
    first = store.query("SELECT min(neuron_id) AS n FROM neurons WHERE kind = 'feature'")["n"][0]
    for feature in (0, 100, layer.n_features - 1):
        col = values[:, feature].numpy()
        got = store.query(
            f"SELECT image_id, activation FROM top_images WHERE neuron_id = {first + feature} "
            "ORDER BY rank"
        )
        expected = sorted(range(240), key=lambda i: (-col[i], i))[: study.top_k]
        np.testing.assert_allclose(got["activation"].to_numpy(), col[expected], atol=1e-5)

    mixed = store.query(
        "SELECT nc.cluster_id FROM neuron_clusters nc JOIN neurons n USING (neuron_id) "
        "GROUP BY nc.cluster_id HAVING count(DISTINCT n.kind) > 1"
    )
    assert len(mixed) == 0
    patches = store.query(
        "SELECT count(DISTINCT p.neuron_id) AS n FROM example_patches p "
        "JOIN neurons n USING (neuron_id) WHERE n.kind = 'feature'"
    )
    assert patches["n"][0] == layer.n_features

    quality = instance.fetch_materializations(dg.AssetKey("cluster_quality"), limit=1).records[0]
    versus = quality.asset_materialization.metadata["feature_vs_channel_single_unit_gain"].value
    assert set(versus) == {"block3"}
    assert set(versus["block3"]) >= {"channels", "features", "delta", "features_share_0_8"}
    dictionary = instance.fetch_materializations(dg.AssetKey("dictionary"), limit=1).records
    by_layer = dictionary[0].asset_materialization.metadata["by_layer"].value
    assert set(by_layer) == {"block3"} and by_layer["block3"]["n_features"] == 128
    assert 0.0 <= by_layer["block3"]["fvu"] < 1.0


def test_patches_written_a_few_rows_at_a_time_equal_the_table(materialized, monkeypatch):
    """However few images hold the patches, they are encoded PATCH_ROWS at a time; the parts
    load as exactly the published table."""
    import duckdb

    from carto_assets.stages import example_patches as patch_stage

    study, _, _ = materialized
    store = CartoStore(study.database_path)
    published = store.query(
        'SELECT neuron_id, rank, image_id, top, "left", bottom, "right", png '
        "FROM example_patches ORDER BY neuron_id, rank"
    )
    monkeypatch.setattr(patch_stage, "PATCH_ROWS", 7)
    parts = patch_stage.example_patches(PreparedStudy(study, store))
    assert len(parts.parts) >= len(published) // 7
    rebuilt = duckdb.connect().sql(patch_stage.patches_select(parts.parts)).pl()
    assert rebuilt.equals(published)
