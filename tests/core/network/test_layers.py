"""Layer discovery, validation and torchvision loading (weights=None, local checkpoints)."""

import pytest
import torch

from carto_assets.core.network.layers import (
    LayerError,
    default_layers,
    probe_layers,
    resolve_layers,
)
from carto_assets.core.network.zoo import BuiltinCNN, torchvision_model


def test_builtin_auto_layers_are_the_four_blocks():
    infos = probe_layers(BuiltinCNN(5), 64)
    assert default_layers("builtin", infos) == ["block1", "block2", "block3", "block4"]
    layers = resolve_layers(infos, "auto", "builtin")
    assert [i.channels for i in layers] == [32, 48, 64, 96]
    assert layers[0].map_size == (32, 32)


def test_unknown_layer_lists_the_valid_ones():
    infos = probe_layers(BuiltinCNN(5), 64)
    with pytest.raises(LayerError, match=r"unknown layer 'block9'.*block1.*block4"):
        resolve_layers(infos, ["block9"], "builtin")


def test_layers_listed_out_of_order_come_back_in_forward_order():
    infos = probe_layers(BuiltinCNN(5), 64)
    layers = resolve_layers(infos, ["block3", "block1"], "builtin")
    assert [i.name for i in layers] == ["block1", "block3"]


def test_resnet18_weights_none_auto_layers_and_shared_relu_refused():
    model = torchvision_model("resnet18", "none")
    infos = probe_layers(model, 64)
    names = default_layers("resnet18", infos)
    assert names[-4:] == ["layer1", "layer2", "layer3", "layer4"]
    with pytest.raises(LayerError, match="runs 2 times"):
        resolve_layers(infos, ["layer1.0.relu"], "resnet18")


def test_googlenet_default_is_the_papers_inception_blocks():
    infos = probe_layers(torchvision_model("googlenet", "none"), 96)
    names = default_layers("googlenet", infos)
    assert names[0] == "inception3a" and names[-1] == "inception5b" and len(names) == 9
    chans = {i.name: i.channels for i in infos}
    assert [chans[n] for n in names] == [256, 480, 512, 512, 512, 528, 832, 832, 1024]


def test_local_checkpoint_loads_with_weights_only(tmp_path):
    ref = torchvision_model("resnet18", "none", num_classes=7)
    path = tmp_path / "r18.pt"
    torch.save(ref.state_dict(), path)
    loaded = torchvision_model("resnet18", str(path))
    assert loaded.fc.out_features == 7
    assert torch.equal(loaded.conv1.weight, ref.conv1.weight)


def test_bad_checkpoint_and_names_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        torchvision_model("resnet18", str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(ValueError, match="does not fit torchvision resnet18"):
        torchvision_model("resnet18", str(bad))
    with pytest.raises(ValueError, match="unknown torchvision model 'resnet19'"):
        torchvision_model("resnet19")
    with pytest.raises(ValueError, match="unknown weights 'NOPE'"):
        torchvision_model("resnet18", "NOPE")


def test_model_failing_on_input_size_is_reported():
    model = torchvision_model("vgg11", "none")
    with pytest.raises(ValueError, match=r"fails on a 8x8 input"):
        probe_layers(model, 8)
