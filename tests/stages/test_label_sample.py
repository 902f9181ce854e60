"""The labels' sample: kept by the activation pass, read back by load_label_sample.

A tiny shapes study with an untrained torchvision network (no training to wait for) and a
user annotations table keyed by ``images.source``; the sample's maxima are checked against a
plain forward pass of the same images with hooks, and against another sharding.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from carto_assets.core.sae.dictionaries import sample_image_ids
from carto_assets.stages.activations import SHARD_FOLDER, run_shard, shard_dir, shard_states
from carto_assets.stages.images import build_manifest, save_manifest, write_images_tables
from carto_assets.stages.label_sample import load_label_sample
from carto_assets.stages.model import prepare_model
from carto_assets.stages.prepared import PreparedStudy
from carto_assets.stages.top_images import merge_top_images
from carto_assets.study import load_study

N_IMAGES = 90
SAMPLE = 40
#: the user's table annotates the even images among the first 60
ANNOTATED = list(range(0, 60, 2))


def _annotations(folder):
    path = folder / "notes.csv"
    lines = ["path,tone"] + [f"shapes:{i},{'warm' if i % 4 else 'cold|grey'}" for i in ANNOTATED]
    path.write_text("\n".join(lines) + "\n")
    return path.name


def _run(folder, make_study, **fields) -> PreparedStudy:
    """images, model, every shard and the merge of a tiny study in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    study = load_study(
        make_study(
            folder,
            model="torchvision:resnet18",
            dataset={"kind": "shapes", "size": N_IMAGES, "image_size": 32},
            top_k=4,
            batch_size=32,
            annotations=_annotations(folder),
            **{"labels": {"sample_images": SAMPLE}, "shards": 2, **fields},
        )
    )
    prepared = PreparedStudy.open(study)
    manifest = build_manifest(study)
    save_manifest(study, manifest)
    write_images_tables(study, manifest, prepared.store)
    prepare_model(prepared, progress=lambda m: None)
    prepared = PreparedStudy.open(study)
    for s in range(study.shards):
        run_shard(prepared, s, progress=lambda m: None)
    merge_top_images(prepared)
    return PreparedStudy.open(study)


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory, make_study):
    return _run(tmp_path_factory.mktemp("two"), make_study)


def _plain_maxima(prepared: PreparedStudy, image_ids: np.ndarray) -> np.ndarray:
    """Each unit's spatial max on ``image_ids``: the study's network with hooks, no recorder."""
    bundle, layers = prepared.model
    pixels, ok = prepared.source.load_many(image_ids.tolist())
    assert ok.all()
    outputs: dict[str, torch.Tensor] = {}
    modules = dict(bundle.module.named_modules())
    handles = [
        modules[info.name].register_forward_hook(
            lambda _m, _i, out, name=info.name: outputs.__setitem__(name, out.clone())
        )
        for info in layers
    ]
    with torch.no_grad():
        bundle.module.eval()(bundle.normalize(torch.from_numpy(pixels)))
    for h in handles:
        h.remove()
    return torch.cat([outputs[i.name].amax(dim=(2, 3)) for i in layers], dim=1).numpy()


def test_the_sample_is_every_units_maximum_on_the_seeded_annotated_images(two_shards):
    prepared = two_shards
    sample = load_label_sample(prepared)
    drawn = sample_image_ids(np.arange(N_IMAGES), SAMPLE, prepared.study.seed)
    # The draw is seeded over all images; the user's table leaves the unannotated ones out.
    assert sample.image_ids.tolist() == [i for i in drawn.tolist() if i in ANNOTATED]
    assert sample.n_unannotated == len(drawn) - sample.n_images > 0
    assert sample.user_concepts == ("tone",)
    neurons = prepared.store.query("SELECT neuron_id FROM neurons ORDER BY neuron_id")
    assert sample.neuron_ids.tolist() == neurons["neuron_id"].to_list()
    assert sample.maxima.shape == (sample.n_images, sample.n_units)
    assert sample.maxima.dtype == np.float32
    np.testing.assert_allclose(
        sample.maxima, _plain_maxima(prepared, sample.image_ids), rtol=1e-4, atol=1e-5
    )
    # The annotations of exactly those images: the class, the world and the user's table.
    ann = sample.annotations
    assert sorted(set(ann["image_id"].to_list())) == sample.image_ids.tolist()
    assert {"class", "shape", "colour", "tone"} <= set(ann["concept"].to_list())
    images = prepared.images
    for row in images.filter(pl.col("image_id").is_in(sample.image_ids.tolist())).iter_rows(
        named=True
    ):
        mine = ann.filter(pl.col("image_id") == row["image_id"])
        assert mine.filter(pl.col("concept") == "class")["value"].to_list() == [row["label_name"]]
        tones = sorted(mine.filter(pl.col("concept") == "tone")["value"].to_list())
        assert tones == (["warm"] if row["image_id"] % 4 else ["cold", "grey"])


def test_image_annotations_and_the_unannotated_count_are_in_the_database(two_shards):
    store = two_shards.store
    counts = store.query(
        "SELECT concept, count(*) AS n FROM image_annotations GROUP BY concept ORDER BY concept"
    )
    by = dict(zip(counts["concept"].to_list(), counts["n"].to_list(), strict=True))
    world = store.query("SELECT concept, count(*) AS n FROM image_concepts GROUP BY concept")
    for concept, n in world.iter_rows():
        assert by[concept] == n  # the world's rows, as image_concepts has them
    assert by["class"] == N_IMAGES
    assert by["tone"] == len(ANNOTATED) + len([i for i in ANNOTATED if i % 4 == 0])
    figures = store.query(
        "SELECT figure, value FROM study_quality WHERE asset = 'images' ORDER BY figure"
    )
    assert dict(figures.iter_rows()) == {
        "annotated_images": len(ANNOTATED),
        "images_without_annotations": N_IMAGES - len(ANNOTATED),
    }
    view = store.query("SELECT image_id, len(maxima) AS n FROM unit_maxima ORDER BY image_id")
    drawn = sample_image_ids(np.arange(N_IMAGES), SAMPLE, two_shards.study.seed)
    assert view["image_id"].to_list() == drawn.tolist()
    assert set(view["n"].to_list()) == {store.query("SELECT count(*) n FROM neurons")["n"][0]}


@pytest.mark.slow
def test_the_sample_does_not_depend_on_the_sharding(two_shards, tmp_path, make_study):
    one = load_label_sample(_run(tmp_path / "one", make_study, shards=1))
    two = load_label_sample(two_shards)
    assert one.image_ids.tolist() == two.image_ids.tolist()
    np.testing.assert_allclose(one.maxima, two.maxima, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_other_sample_settings_recompute_the_shards_and_labels_off_keeps_none(
    two_shards, tmp_path, make_study
):
    prepared = _run(tmp_path / "off", make_study, labels={"enabled": False})
    study = prepared.study
    assert all("unit_maxima" not in SHARD_FOLDER.read(shard_dir(study, s)) for s in range(2))
    assert prepared.store.query("SELECT count(*) AS n FROM unit_maxima")["n"][0] == 0
    with pytest.raises(ValueError, match=r"'labels\.enabled' is false"):
        load_label_sample(prepared)
    # The same shards with the labels on, or another sample, are stale: recomputed.
    for labels in ({"enabled": True}, {"enabled": True, "sample_images": SAMPLE + 1}):
        other = study.model_copy(update={"labels": study.labels.model_copy(update=labels)})
        fresh, missing, stale = shard_states(PreparedStudy.open(other))
        assert (fresh, missing, stale) == ({}, [], [0, 1])
    # Unchanged settings keep them.
    fresh, _, _ = shard_states(PreparedStudy.open(study))
    assert sorted(fresh) == [0, 1]


def test_a_sample_of_at_least_the_dataset_is_every_image():
    ids = np.arange(30)
    assert sample_image_ids(ids, None, 0).tolist() == list(range(30))
    assert sample_image_ids(ids, 30, 5).tolist() == list(range(30))
    assert sample_image_ids(ids, 10, 5).tolist() == sample_image_ids(ids, 10, 5).tolist()
    assert sample_image_ids(ids, 10, 5).tolist() != sample_image_ids(ids, 10, 6).tolist()
