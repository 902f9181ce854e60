"""The model zoo: default layer sets, the activation pass and bad inputs on real architectures.

Every model is built with ``weights=None`` (random init), so nothing is downloaded. Inputs are
small (64 px; ViT only accepts 224) and each model sees 3 images on one thread, to keep the file
well under a minute on a shared 2-core machine.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from carto_assets.core.network.layers import (
    LayerError,
    LayerInfo,
    default_layers,
    probe_layers,
    resolve_layers,
)
from carto_assets.core.network.recorder import Batch, PassResult, activation_pass
from carto_assets.core.network.zoo import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    torchvision_model,
    weights_normalization,
)

#: name -> (input size, expected auto layers' channel counts)
ZOO: dict[str, tuple[int, list[int]]] = {
    "googlenet": (64, [256, 480, 512, 512, 512, 528, 832, 832, 1024]),
    "resnet18": (64, [64, 128, 256, 512]),
    "resnet50": (64, [256, 512, 1024, 2048]),
    "vgg16": (64, [64, 128, 256, 512, 512]),
    "mobilenet_v3_large": (64, [16, 24, 40, 112, 160, 960]),
    "convnext_tiny": (64, [96, 192, 384, 768]),
    "efficientnet_b0": (64, [16, 24, 40, 80, 112, 192, 320, 1280]),
    "vit_b_16": (224, [768, 768, 768, 768]),
}


def run_pass(model: nn.Module, layers: list[LayerInfo], images: torch.Tensor, k: int) -> PassResult:
    """One activation pass over ``images`` as a single batch, labels all 0."""
    batch = Batch(
        image_ids=torch.arange(len(images), dtype=torch.long),
        images=images,
        labels=torch.zeros(len(images), dtype=torch.long),
    )
    return activation_pass(model, layers, [batch], k=k, n_classes=1, mass_fraction=0.5)


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_auto_layers_and_activation_pass(name: str, one_torch_thread) -> None:
    size, channels = ZOO[name]
    torch.manual_seed(0)
    model = torchvision_model(name, "none")
    infos = probe_layers(model, size)
    layers = resolve_layers(infos, "auto", name)

    assert [i.name for i in layers] == default_layers(name, infos)
    assert [i.channels for i in layers] == channels
    orders = [i.order for i in layers]
    assert orders == sorted(orders) and len(set(orders)) == len(orders)  # forward order
    # Every auto layer is selectable on its own (what a user listing it explicitly gets).
    for info in layers:
        assert resolve_layers(infos, [info.name], name) == [info]

    k, n_images = 2, 3
    images = torch.randn(n_images, 3, size, size, generator=torch.Generator().manual_seed(1))
    result = run_pass(model, layers, images, k)
    top = result.top_k
    n_neurons = sum(channels)
    assert result.n_images == n_images
    assert np.all(np.bincount(top["neuron_id"], minlength=n_neurons) == k)
    assert np.isfinite(top["activation"]).all()
    # The argmax lies inside each neuron's map.
    bounds = np.cumsum([0, *channels])
    layer_of = np.searchsorted(bounds, top["neuron_id"], side="right") - 1
    heights = np.array([i.map_size[0] for i in layers])[layer_of]
    widths = np.array([i.map_size[1] for i in layers])[layer_of]
    assert (top["y"] >= 0).all() and (top["y"] < heights).all()
    assert (top["x"] >= 0).all() and (top["x"] < widths).all()
    if name == "vit_b_16":
        assert all(i.map_size == (197, 1) and i.token_grid == (14, 14) for i in layers)
        assert (top["x"] == 0).all()


def test_vit_rejects_a_small_input_clearly(one_torch_thread) -> None:
    model = torchvision_model("vit_b_16", "none")
    with pytest.raises(ValueError, match=r"fails on a 64x64 input.*image_size"):
        probe_layers(model, 64)


class _TupleOut(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x * 2


class _WithTuple(nn.Module):
    """A conv whose output goes through a module returning a tuple (like an RNN or attention)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pair = _TupleOut()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.pair(self.conv(x))
        return a + b


def test_non_tensor_layer_output_is_refused() -> None:
    infos = probe_layers(_WithTuple(), 16)
    assert resolve_layers(infos, ["conv"], "custom")[0].channels == 4
    with pytest.raises(LayerError, match=r"layer 'pair' outputs a _TupleOut result"):
        resolve_layers(infos, ["pair"], "custom")


def test_model_left_in_train_mode_gives_eval_activations(one_torch_thread) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Conv2d(8, 6, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 2),
    )
    # Non-trivial running statistics, so batch statistics (train mode) would differ from them.
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    reference = copy.deepcopy(model).eval()
    model.train()

    infos = probe_layers(model, 16)
    assert model.training  # probing restores the caller's mode
    layers = resolve_layers(infos, ["3", "4"], "custom")
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    got = run_pass(model, layers, images, k=2).top_k
    want = run_pass(reference, layers, images, k=2).top_k
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    # Eval mode also means the running statistics were not updated by the pass.
    assert torch.equal(model[1].running_mean, reference[1].running_mean)


def test_probe_at_the_configured_size_of_a_small_image_study() -> None:
    # Sources resize + centre-crop every image to dataset.image_size; the model is probed at that
    # size, so the smallest size the study validation allows must run for a CNN.
    model = torchvision_model("resnet18", "none")
    infos = probe_layers(model, 16)
    assert [i.map_size for i in resolve_layers(infos, "auto", "resnet18")][-1] == (1, 1)


def test_weights_normalization_reads_the_weights_transforms_offline(monkeypatch) -> None:
    def no_download(*args, **kwargs):
        raise AssertionError("weights_normalization must not download anything")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)

    mean, std = weights_normalization("resnet50", "DEFAULT")
    assert mean == pytest.approx(IMAGENET_MEAN) and std == pytest.approx(IMAGENET_STD)
    mean, std = weights_normalization("vit_b_16", "IMAGENET1K_SWAG_E2E_V1")
    assert len(mean) == 3 and len(std) == 3
    # Random init and checkpoints carry no preprocessing: the fallback is returned.
    fallback = ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert weights_normalization("resnet18", "none", fallback=fallback) == fallback
    assert weights_normalization("resnet18", "/no/such/r18.pt", fallback=fallback) == fallback
    with pytest.raises(ValueError, match="unknown weights 'NOPE' for resnet18"):
        weights_normalization("resnet18", "NOPE")


def test_weights_normalization_follows_non_imagenet_statistics(monkeypatch) -> None:
    import torchvision

    transforms = SimpleNamespace(mean=[0.5, 0.5, 0.5], std=[0.25, 0.5, 1.0])
    fake_enum = {"CUSTOM": SimpleNamespace(transforms=lambda: transforms)}
    monkeypatch.setattr(torchvision.models, "get_model_weights", lambda name: fake_enum)
    assert weights_normalization("anything", "CUSTOM") == ((0.5, 0.5, 0.5), (0.25, 0.5, 1.0))


def test_bundle_uses_the_weights_normalization(monkeypatch) -> None:
    import torchvision

    from carto_assets.stages.stored_model import bundle_for
    from carto_assets.study import study_from_dict

    transforms = SimpleNamespace(mean=[0.5, 0.5, 0.5], std=[0.25, 0.5, 1.0])
    fake_enum = {"DEFAULT": SimpleNamespace(transforms=lambda: transforms)}
    monkeypatch.setattr(torchvision.models, "get_model_weights", lambda name: fake_enum)
    dataset = {"kind": "shapes", "size": 100, "image_size": 32}
    model = nn.Conv2d(3, 2, 3).train()
    study = study_from_dict(
        {"model": "torchvision:resnet18", "weights": "DEFAULT", "dataset": dataset}
    )
    bundle = bundle_for(study, model)
    assert (bundle.mean, bundle.std) == ((0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert not bundle.module.training
    random_init = study_from_dict({"model": "torchvision:resnet18", "dataset": dataset})
    bundle = bundle_for(random_init, model)
    assert (bundle.mean, bundle.std) == (IMAGENET_MEAN, IMAGENET_STD)
