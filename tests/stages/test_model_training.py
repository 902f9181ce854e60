"""The built-in CNN's training streams its batches from the source, and trains the network the
in-memory training (tests/reference/training.py) trains, bit for bit."""

from __future__ import annotations

import numpy as np
import torch
from reference.training import train_in_memory

from carto_assets.core.network.training import (
    ArrayRows,
    accuracy,
    split_holdout,
    train_builtin,
)
from carto_assets.stages.images import build_manifest, save_manifest, source_for_manifest
from carto_assets.stages.model import SourceRows, prepare_model
from carto_assets.stages.prepared import PreparedStudy
from carto_assets.stages.stored_model import BUILTIN_MEAN, BUILTIN_STD, load_model
from carto_assets.study import load_study


class CountingRows:
    """An image source that records every batch of positions it is asked for; ``broken``
    positions fail to load."""

    def __init__(self, images: np.ndarray, broken: frozenset[int] = frozenset()) -> None:
        self.inner = ArrayRows(images)
        self.broken = broken
        self.requests: list[int] = []

    @property
    def image_size(self) -> int:
        return self.inner.image_size

    def __len__(self) -> int:
        return len(self.inner)

    def rows(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.requests.append(len(positions))
        ok = np.array([int(p) not in self.broken for p in positions], dtype=bool)
        return self.inner.images[positions[ok]], ok


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_studys_streamed_training_equals_the_in_memory_training(
    tmp_path, make_study, one_torch_thread
):
    # 240 images, 192 of them trained on in batches of 40: the last batch of each epoch is short.
    study = load_study(
        make_study(tmp_path, training={"epochs": 2, "batch_size": 40, "holdout_fraction": 0.2})
    )
    manifest = build_manifest(study)
    save_manifest(study, manifest)
    info = prepare_model(PreparedStudy.open(study), progress=lambda m: None)
    streamed = load_model(study)[0].module.state_dict()

    prepared = PreparedStudy.open(study)
    source = source_for_manifest(study, prepared.images, prepared.class_names)
    pixels, ok = source.load_many(prepared.images["image_id"].to_list())
    assert ok.all()
    t = study.training
    reference, losses = train_in_memory(
        pixels,
        prepared.images["label"].to_numpy(),
        len(prepared.class_names),
        epochs=t.epochs,
        learning_rate=t.learning_rate,
        batch_size=t.batch_size,
        holdout_fraction=t.holdout_fraction,
        seed=study.training_seed,
        mean=BUILTIN_MEAN,
        std=BUILTIN_STD,
    )
    assert _states_equal(streamed, reference.state_dict())
    assert info.epoch_losses == losses
    assert (info.n_train, info.n_holdout) == (192, 48)


def test_training_loads_one_batch_at_a_time(one_torch_thread):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(200, 16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, size=200)
    rows = CountingRows(images)
    settings = dict(epochs=2, learning_rate=0.003, batch_size=24, holdout_fraction=0.25, seed=2)
    result = train_builtin(rows, labels, 3, **settings)
    # Training asks for batches of at most batch_size, the accuracies for at most 256: never
    # the whole dataset. Each epoch loads each of the 150 training images once.
    assert max(rows.requests) <= 150 and rows.requests[:7] == [24] * 6 + [6]
    assert sum(rows.requests) == 2 * 150 + 50 + 150
    reference, _ = train_in_memory(images, labels, 3, **settings)
    assert _states_equal(result.bundle.module.state_dict(), reference.state_dict())


def test_an_image_that_fails_to_load_is_left_out_of_its_batch(one_torch_thread):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(60, 16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, size=60)
    settings = dict(epochs=1, learning_rate=0.003, batch_size=16, holdout_fraction=0.5, seed=2)
    train_idx, _ = split_holdout(60, 0.5, 2)
    failing = frozenset(int(i) for i in train_idx[:2])
    whole = train_builtin(images, labels, 2, **settings)
    broken = train_builtin(CountingRows(images, failing), labels, 2, **settings)
    assert np.isfinite(broken.epoch_losses).all()
    assert not _states_equal(whole.bundle.module.state_dict(), broken.bundle.module.state_dict())
    # Accuracy is over the images that load.
    model = whole.bundle
    everything = np.arange(60)
    keep = np.setdiff1d(everything, sorted(failing))
    assert accuracy(model, CountingRows(images, failing), labels, everything) == (
        accuracy(model, images, labels, keep)
    )


def test_source_rows_load_the_manifests_images_by_position(tmp_path, make_study):
    study = load_study(make_study(tmp_path))
    save_manifest(study, build_manifest(study))
    prepared = PreparedStudy.open(study)
    source = source_for_manifest(study, prepared.images, prepared.class_names)
    rows = SourceRows(source, prepared.images["image_id"].to_numpy())
    pixels, ok = rows.rows(np.array([5, 2]))
    assert ok.all() and len(rows) == 240 and rows.image_size == 32
    assert np.array_equal(pixels[0], source.load(int(prepared.images["image_id"][5])))
    assert np.array_equal(pixels[1], source.load(int(prepared.images["image_id"][2])))
