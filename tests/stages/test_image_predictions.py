"""The activation pass records each image's prediction (``image_predictions``), and the
explanations' misclassified images come from it: the images a forward pass over each class
chose before (tests/reference/predictions.py)."""

from __future__ import annotations

import numpy as np
import pytest
from reference.predictions import forward_logits, misclassified_by_forward_pass

from carto_assets.stages.activations import predictions_frame, run_shard
from carto_assets.stages.concept_graph import class_images
from carto_assets.stages.explanation_chunk import Explainer, misclassified_images
from carto_assets.stages.images import build_manifest, save_manifest, write_images_tables
from carto_assets.stages.model import prepare_model
from carto_assets.stages.prepared import PreparedStudy
from carto_assets.stages.top_images import merge_top_images
from carto_assets.study import load_study


@pytest.fixture(scope="module")
def passed(tmp_path_factory, make_study):
    """A tiny study through the activation pass (two shards) and their merge; a model barely
    trained, so each class has misclassified images."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("predictions")
    study = load_study(make_study(folder, explain={"misclassified": 3}))
    manifest = build_manifest(study)
    save_manifest(study, manifest)
    prepared = PreparedStudy.open(study)
    write_images_tables(study, manifest, prepared.store)
    prepare_model(prepared, progress=lambda m: None)
    prepared = PreparedStudy.open(study)
    for shard in range(study.shards):
        run_shard(prepared, shard, progress=lambda m: None)
    merge_top_images(prepared)
    yield PreparedStudy.open(study)
    torch.set_num_threads(threads)


def test_the_predictions_are_a_plain_forward_pass_over_the_images(passed):
    stored = passed.store.query("SELECT * FROM image_predictions ORDER BY image_id")
    images = passed.images.sort("image_id")
    assert stored["image_id"].to_list() == images["image_id"].to_list()
    pixels, ok = passed.source.load_many(images["image_id"].to_list())
    assert ok.all()
    logits = forward_logits(passed.bundle, pixels)
    labels = images["label"].to_numpy()
    assert np.array_equal(stored["predicted"].to_numpy(), logits.argmax(axis=1))
    np.testing.assert_allclose(stored["logit"].to_numpy(), logits.max(axis=1), rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        stored["label_logit"].to_numpy(), logits[np.arange(len(labels)), labels], atol=1e-5
    )
    # A model this little trained gets some right and some wrong.
    assert 0 < (stored["predicted"].to_numpy() == labels).sum() < len(labels)


def test_the_explanations_misclassified_images_are_the_forward_pass_choice(passed):
    study = passed.study
    labels = sorted(set(passed.images["label"].to_list()))
    explainer = Explainer.for_chunk(passed, labels)
    limit = study.explain.misclassified
    chosen = everything = 0
    for label in labels:
        sampled, _, _ = class_images(study, label, passed.images, passed.source, passed.bundle)
        skip = set(sampled.tolist())
        table = explainer._misclassified(label, sampled)
        reference = misclassified_by_forward_pass(passed, label, skip, limit, study.batch_size)
        assert np.array_equal(table, reference), label
        # Every wrong image of the class too, not only the first few.
        wrong = misclassified_images(passed.store, passed.images, [label], 10**6)[label]
        every = misclassified_by_forward_pass(passed, label, skip, 10**6, study.batch_size)
        assert np.array_equal(wrong[~np.isin(wrong, sampled)], every), label
        chosen += len(table)
        everything += len(every)
    assert 0 < chosen < everything


def test_a_shards_predictions_frame_is_the_declared_table():
    frame = predictions_frame(
        {
            "image_id": np.array([5, 2]),
            "predicted": np.array([1, 0], dtype=np.int32),
            "logit": np.array([2.0, 1.0], dtype=np.float32),
            "label_logit": np.array([np.nan, 1.0], dtype=np.float32),
        }
    )
    assert frame["image_id"].to_list() == [2, 5]  # by image id
    assert frame["label_logit"].to_list() == [1.0, None]  # unknown: NULL, not NaN
    assert frame.schema == predictions_frame(None).schema and predictions_frame(None).is_empty()
