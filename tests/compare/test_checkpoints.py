"""The built-in model keeps its training's checkpoints, and a study can map one of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from carto_assets.core.network.training import train_builtin
from carto_assets.stages.images import build_manifest, save_manifest
from carto_assets.stages.model import prepare_model
from carto_assets.stages.prepared import PreparedStudy
from carto_assets.stages.stored_model import checkpoint_path, load_model, model_dir
from carto_assets.storage.fingerprints import model_fingerprint
from carto_assets.study import StudyError, load_study, study_from_dict


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stopping_after_an_epoch_gives_that_epochs_checkpoint(one_torch_thread):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(96, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, size=96)
    settings = dict(epochs=3, learning_rate=0.003, batch_size=32, holdout_fraction=0.25, seed=5)
    kept: dict[int, dict] = {}

    def keep(epoch, model):
        kept[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    full = train_builtin(images, labels, 3, on_epoch=keep, **settings)
    assert sorted(kept) == [0, 1, 2, 3]
    assert _states_equal(kept[3], full.bundle.module.state_dict())
    for epoch in (0, 1):
        stopped = train_builtin(images, labels, 3, stop_after=epoch, **settings)
        assert _states_equal(stopped.bundle.module.state_dict(), kept[epoch]), epoch
        assert len(stopped.epoch_losses) == epoch
    # Training two epochs is not the first two epochs of three (the schedule differs).
    short = train_builtin(images, labels, 3, **{**settings, "epochs": 2})
    assert not _states_equal(short.bundle.module.state_dict(), kept[2])
    with pytest.raises(ValueError, match="stop_after must be in"):
        train_builtin(images, labels, 3, stop_after=4, **settings)


def test_training_tells_its_progress_by_batch_and_stays_the_same(one_torch_thread):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(90, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, size=90)
    settings = dict(epochs=3, learning_rate=0.003, batch_size=32, holdout_fraction=0.2, seed=2)
    told: list[tuple[int, int]] = []
    heard = train_builtin(images, labels, 3, on_batch=lambda d, t: told.append((d, t)), **settings)
    # 72 training images: 3 batches of at most 32 per epoch, 3 epochs.
    assert told == [(d, 9) for d in range(1, 10)]
    quiet = train_builtin(images, labels, 3, **settings)
    assert _states_equal(heard.bundle.module.state_dict(), quiet.bundle.module.state_dict())
    told.clear()
    train_builtin(
        images, labels, 3, stop_after=1, on_batch=lambda d, t: told.append((d, t)), **settings
    )
    assert told == [(1, 3), (2, 3), (3, 3)]


def _prepared(folder, make_study, **fields):
    folder.mkdir(exist_ok=True)
    study = load_study(make_study(folder, **fields))
    save_manifest(study, build_manifest(study))
    return study, prepare_model(PreparedStudy.open(study), progress=lambda m: None)


def test_a_study_maps_a_kept_checkpoint_or_trains_up_to_it(tmp_path, make_study, one_torch_thread):
    training = {"epochs": 2, "batch_size": 64}
    final, info = _prepared(tmp_path / "a", make_study, training=training)
    assert info.kept_checkpoints == [0, 1] and info.checkpoint_epoch is None
    kept = torch.load(checkpoint_path(model_dir(final), 1), weights_only=True)

    # The same study folder: epoch 1 is copied from the whole training's checkpoints.
    same, info_same = _prepared(
        tmp_path / "a", make_study, training={**training, "checkpoint_epoch": 1}
    )
    assert info_same.copied_from == str(checkpoint_path(model_dir(final), 1))
    assert model_fingerprint(same) != model_fingerprint(final)
    assert model_fingerprint(same, final=True) == model_fingerprint(final)
    # Another folder: the same seeded training, stopped after epoch 1, gives the same network.
    other, info_other = _prepared(
        tmp_path / "b", make_study, training={**training, "checkpoint_epoch": 1}
    )
    assert info_other.copied_from is None and info_other.kept_checkpoints == [0]
    for study in (same, other):
        bundle, _, _ = load_model(study)
        assert _states_equal(bundle.module.state_dict(), kept)
    # A second training seed is another network over the same images.
    seeded, _ = _prepared(tmp_path / "c", make_study, training={**training, "seed": 11})
    assert not _states_equal(
        load_model(seeded)[0].module.state_dict(), load_model(final)[0].module.state_dict()
    )


def test_training_seed_and_checkpoint_rules():
    demo = study_from_dict({})
    assert model_fingerprint(study_from_dict({"training": {"seed": demo.seed}})) == (
        model_fingerprint(demo)
    )
    assert model_fingerprint(study_from_dict({"training": {"seed": 7}})) != model_fingerprint(demo)
    with pytest.raises(StudyError, match=r"'training.checkpoint_epoch' must be at most epochs"):
        study_from_dict({"training": {"epochs": 2, "checkpoint_epoch": 3}})
    with pytest.raises(StudyError, match="only the built-in model is trained by the study"):
        study_from_dict({"model": "torchvision:resnet18", "training": {"checkpoint_epoch": 0}})
