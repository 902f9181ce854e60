"""A dictionary on a layer is one FeatureLayer: trained with its fit, stored and loaded as
such, and put on a device without losing any of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from carto_assets.core.sae.dictionaries import (
    DictionaryTraining,
    describe,
    load_dictionaries,
    save_dictionaries,
    train_dictionaries,
)
from carto_assets.core.sae.layer import FeatureLayer, feature_maxima

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_trained_layers_round_trip_through_storage(tmp_path):
    rng = np.random.default_rng(0)
    samples = {
        "b1": rng.normal(size=(300, 6)).astype(np.float32),
        "b2": rng.normal(size=(200, 4)).astype(np.float32),
    }
    trained = train_dictionaries(
        samples, DictionaryTraining(expansion=2, k=2, epochs=2, batch_size=64), seed=3
    )
    assert list(trained) == ["b1", "b2"]
    for source, layer in trained.items():
        assert isinstance(layer, FeatureLayer) and layer.source == source
        assert layer.name == f"{source}:features" and layer.n_features == layer.channels
        assert layer.fit is not None and layer.n_samples == len(samples[source])
        assert layer.seconds > 0
    save_dictionaries(tmp_path / "d", trained, "fp")
    loaded = load_dictionaries(tmp_path / "d", "fp")
    assert describe(loaded) == describe(trained)
    for source, layer in loaded.items():
        want = trained[source]
        assert (layer.source, layer.fit, layer.n_samples) == (want.source, want.fit, want.n_samples)
        for w in ("W_enc", "b_enc", "W_dec", "b_dec"):
            np.testing.assert_array_equal(getattr(layer.sae, w), getattr(want.sae, w))
        # On a device: the same layer, its weights as tensors, the same maxima.
        moved = layer.on("cpu")
        assert (moved.name, moved.fit, moved.n_samples) == (layer.name, layer.fit, layer.n_samples)
        assert isinstance(moved.sae.W_enc, torch.Tensor)
        out = torch.randn(3, layer.sae.W_dec.shape[0], 4, 5)
        for a, b in zip(moved.reduce(out), feature_maxima(layer.sae, out), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"fingerprint fp, expected other"):
        load_dictionaries(tmp_path / "d", "other")


def test_a_layer_without_a_fit_is_not_stored(tmp_path):
    trained = train_dictionaries(
        {"b1": np.ones((20, 3), dtype=np.float32)}, DictionaryTraining(expansion=1, k=1, epochs=1)
    )
    bare = {"b1": FeatureLayer("b1", trained["b1"].sae)}
    with pytest.raises(ValueError, match=r"dictionaries \['b1'\] have no fit"):
        save_dictionaries(tmp_path / "d", bare, "fp")
