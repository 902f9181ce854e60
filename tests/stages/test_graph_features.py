"""The concept graph stage with a feature layer, on a hand-made database and a tiny network."""

from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from carto_assets import schema
from carto_assets.core.network.zoo import ModelBundle
from carto_assets.core.sae.autoencoder import SparseAutoencoder
from carto_assets.core.sae.layer import FEATURE_SUFFIX, FeatureLayer
from carto_assets.schema import PREDICTION
from carto_assets.stages import concept_graph as graph
from carto_assets.stages.prepared import PreparedStudy, StoredManifest
from carto_assets.storage.store import CartoStore
from carto_assets.study import load_study

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHANNELS = {"lower": 4, "mid": 5, "upper": 4}
MID_F = "mid" + FEATURE_SUFFIX
N_FEATURES = 8
N_IMAGES, SIZE = 12, 8


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lower = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.ReLU())
        self.upper = nn.Sequential(nn.Conv2d(5, 4, 1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.upper(self.mid(self.lower(x))))


def sae() -> SparseAutoencoder:
    rng = np.random.default_rng(0)
    w_dec = rng.normal(size=(5, N_FEATURES)).astype(np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=0, keepdims=True)
    return SparseAutoencoder(
        W_enc=w_dec.T.copy(),
        b_enc=np.full(N_FEATURES, 0.05, np.float32),
        W_dec=w_dec,
        b_dec=np.zeros(5, np.float32),
        k=3,
    )


class Pixels:
    def load_many(self, ids, workers=1):
        rng = np.random.default_rng(list(ids))
        pixels = rng.integers(0, 256, size=(len(ids), SIZE, SIZE, 3), dtype=np.uint8)
        return pixels, np.ones(len(ids), bool)


def make_store(path) -> CartoStore:
    """Every unit its own neuron; clusters of two consecutive units; random positive scores."""
    layers = [*CHANNELS.items(), (MID_F, N_FEATURES)]
    rows = [(name, i, c) for i, (name, n) in enumerate(layers) for c in range(n)]
    layer, layer_index, channel = (list(col) for col in zip(*rows))
    ids = list(range(len(rows)))
    neurons = schema.frame(
        "neurons",
        {
            "neuron_id": ids,
            "layer": layer,
            "layer_index": layer_index,
            "channel": channel,
            "map_height": [SIZE] * len(ids),
            "map_width": [SIZE] * len(ids),
            "kind": ["feature" if name.endswith(FEATURE_SUFFIX) else "channel" for name in layer],
        },
    )
    clusters = schema.frame(
        "neuron_clusters",
        {
            "neuron_id": ids,
            "cluster_id": [100 * i + c // 2 for i, c in zip(layer_index, channel)],
            "layer": layer,
        },
    )
    rng = np.random.default_rng(1)
    importance = schema.frame(
        "class_importance",
        {
            "label": [0] * len(ids) + [1] * len(ids),
            "neuron_id": ids * 2,
            "score": rng.uniform(0.1, 1.0, 2 * len(ids)),
            "top_mass_count": [1] * (2 * len(ids)),
            "n_images": [N_IMAGES // 2] * (2 * len(ids)),
            "mean_activation": [1.0] * (2 * len(ids)),
        },
    )
    cluster_ids = sorted(set(clusters["cluster_id"].to_list()))
    cluster_table = schema.frame(
        "clusters",
        {
            "cluster_id": cluster_ids,
            "layer": [layer[ids[clusters["cluster_id"].to_list().index(c)]] for c in cluster_ids],
            "size": [clusters["cluster_id"].to_list().count(c) for c in cluster_ids],
            "label": [f"cluster {c}" for c in cluster_ids],
            "top_class": [["a", "b"][c % 2] for c in cluster_ids],
            "top_class_fraction": [0.5] * len(cluster_ids),
            "mean_jaccard": [1.0] * len(cluster_ids),
            "members": [
                [n for n, k in zip(ids, clusters["cluster_id"].to_list()) if k == c]
                for c in cluster_ids
            ],
        },
    )
    store = CartoStore(path)
    store.replace_tables(
        {
            "neurons": neurons,
            "neuron_clusters": clusters,
            "clusters": cluster_table,
            "class_importance": importance,
            "image_predictions": predictions(),
        }
    )
    return store


def predictions() -> pl.DataFrame:
    """What the activation pass would record: the network's prediction of each image, each
    class's images loaded together (the fake source's pixels depend on the batch)."""
    rows = []
    bundle = ModelBundle(Net().eval(), "net", SIZE, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    for label in (0, 1):
        ids = list(range(label, N_IMAGES, 2))
        pixels, _ = Pixels().load_many(ids)
        with torch.no_grad():
            logits = bundle.module(bundle.normalize(torch.from_numpy(pixels)))
        for i, row in zip(ids, logits):
            rows.append((i, int(row.argmax()), float(row.max()), float(row[label])))
    return schema.frame(
        "image_predictions",
        dict(zip(("image_id", "predicted", "logit", "label_logit"), zip(*rows))),
    )


@pytest.fixture
def setup(tmp_path, make_study):
    study = load_study(
        make_study(
            tmp_path,
            graph={
                "images_per_class": 6,
                "faithfulness_edges": 60,
                "nodes_per_layer": 4,
                "top_neuron_fraction": 1.0,
            },
        )
    )
    images = pl.DataFrame(
        {
            "image_id": range(N_IMAGES),
            "label": [0, 1] * (N_IMAGES // 2),
            "source": [f"x:{i}" for i in range(N_IMAGES)],
        }
    )
    bundle = ModelBundle(Net().eval(), "net", SIZE, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    infos = [SimpleNamespace(name=name) for name in CHANNELS]
    store = make_store(tmp_path / "g.duckdb")

    def prepared(features: bool) -> PreparedStudy:
        """The study prepared with the tiny network, with or without mid's dictionary."""
        return PreparedStudy.given(
            study,
            store,
            manifest=StoredManifest(images, ["a", "b"]),
            model=(bundle, infos),
            source=Pixels(),
            feature_layers=[FeatureLayer("mid", sae())] if features else [],
        )

    return prepared


def layer_pairs(edges: pl.DataFrame) -> set[tuple[str, str]]:
    return set(edges.select("source_layer", "target_layer").unique().iter_rows())


def test_feature_layers_get_their_own_chain_and_leave_the_channel_graph_alone(setup):
    plain = graph.concept_graph_chunk(setup(features=False), [0, 1])
    prepared = setup(features=True)
    study = prepared.study
    mixed = graph.concept_graph_chunk(prepared, [0, 1])

    channel_pairs = {("lower", "mid"), ("mid", "upper"), ("upper", PREDICTION)}
    assert layer_pairs(plain.edges) == channel_pairs
    # mid's features: entered from the channel layer below mid, out to the prediction.
    assert layer_pairs(mixed.edges) == channel_pairs | {("lower", MID_F), (MID_F, PREDICTION)}
    is_channel = ~pl.col("source_layer").eq(MID_F) & ~pl.col("target_layer").eq(MID_F)
    assert mixed.edges.filter(is_channel).equals(plain.edges)
    assert mixed.summary.no_dependency == plain.summary.no_dependency == []

    # Cascades stay in their root's chain: channel cascades are unchanged, feature ones only
    # reach the prediction.
    by_root = pl.col("root_layer").eq(MID_F)
    assert mixed.cascades.filter(~by_root).equals(plain.cascades)
    feature_cascades = mixed.cascades.filter(by_root)
    assert len(feature_cascades) > 0
    assert set(feature_cascades["member_layer"]) == {PREDICTION}

    # Ablation of feature clusters and of channels into features: finite, measured drops.
    faith = mixed.faithfulness
    touched = faith.filter(pl.col("source_layer").eq(MID_F) | pl.col("target_layer").eq(MID_F))
    assert len(touched) > 0 and touched["drop"].is_finite().all()
    assert set(touched["source_layer"]) == {"lower", MID_F}

    # Chunk files and the merge carry the pseudo-layer through.
    graph.write_graph_chunk(study, "0", mixed)
    again = graph.read_graph_chunk(study, "0")
    assert again.edges.equals(mixed.edges) and again.cascades.equals(mixed.cascades)
    assert again.summary == mixed.summary
    merged = graph.merge_graph_chunks(prepared, [again])
    assert MID_F in set(merged.nodes["layer"]) and MID_F in set(merged.edges["target_layer"])
    assert merged.edges.columns == schema.column_names("concept_graph_edges")


def test_explanations_cover_the_feature_layer_and_add_up(setup):
    """The chunk's explanations: every sampled image, every unit layer (the features' too);
    per image, target and layer the stored concepts, the rest and the unclustered units add up
    to the layer's total; the checks cover the last channel and feature layers."""
    chunk = graph.concept_graph_chunk(setup(features=True), [0, 1])
    ex = chunk.explanations
    images = ex["explained_images"]
    assert set(images.filter(pl.col("why") == "sample")["image_id"]) == set(range(N_IMAGES))
    layers = ex["explanation_layers"]
    assert set(layers["layer"]) == {*CHANNELS, MID_F}
    stored = (
        ex["explanation_concepts"]
        .group_by("image_id", "target", "layer")
        .agg(pl.col("relevance").sum().alias("stored"))
    )
    joined = layers.join(stored, on=["image_id", "target", "layer"])
    assert len(joined) == len(layers)
    np.testing.assert_allclose(
        joined["stored"] + joined["other_concepts"] + joined["unclustered"],
        joined["total"],
        rtol=1e-6,
        atol=1e-9,
    )
    np.testing.assert_allclose(layers["gap"], layers["logit"] - layers["total"])
    assert set(ex["explanation_checks"]["layer"]) == {"upper", MID_F}
    # Wrong predictions are explained for the true class too.
    wrong = images.filter(pl.col("predicted") != pl.col("label"))
    targets = layers.group_by("image_id").agg(pl.col("target").n_unique().alias("n"))
    expected = {i: 2 if i in set(wrong["image_id"]) else 1 for i in images["image_id"]}
    assert dict(targets.iter_rows()) == expected
