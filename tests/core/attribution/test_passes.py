"""The shared forward pass, the relevance pass, split edge passes and restarted ablations,
each against plain autograd (tests/reference/attribution.py) on a small CNN, a residual
network and a small vision transformer."""

import numpy as np
import pytest
import torch
from reference import attribution as ref
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from carto_assets.core.attribution.ablation import Row, ablate
from carto_assets.core.attribution.forward import RetainedForward
from carto_assets.core.attribution.influence import Carry, EdgeSums, edge_sums, edge_table
from carto_assets.core.attribution.relevance import relevance, shares
from carto_assets.core.network.zoo import torchvision_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block1 = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True))
        self.block2 = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU())
        self.block3 = nn.Sequential(nn.Conv2d(8, 5, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))

    def forward(self, x):
        return self.head(self.block3(self.block2(self.block1(x))))


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    vit = VisionTransformer(
        image_size=16, patch_size=4, num_layers=3, num_heads=2, hidden_dim=12, mlp_dim=16,
        num_classes=3,
    )  # fmt: skip
    nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero
    return vit.eval()


def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision_model("resnet18", "none").eval()


CASES = {
    "cnn": (SmallCNN, ["block1", "block2", "block3"], 12),
    "resnet": (resnet, ["layer1", "layer2", "layer3"], 32),
    "vit": (
        tiny_vit,
        ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"],
        16,
    ),
}


def setup_case(name: str):
    build, layers, size = CASES[name]
    model = build().eval()
    x = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outs = {}
        hooks = [
            dict(model.named_modules())[n].register_forward_hook(
                lambda m, i, o, n=n: outs.__setitem__(n, o)
            )
            for n in layers
        ]
        model(x)
        for h in hooks:
            h.remove()
    width = {n: int(o.shape[2] if o.ndim == 3 else o.shape[1]) for n, o in outs.items()}
    rng = np.random.default_rng(0)
    clusters = {n: rng.integers(0, 4, width[n]) for n in layers}
    return model, layers, x, clusters


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_backward_pass_gives_every_layers_relevance(case):
    model, layers, x, clusters = setup_case(case)
    targets = np.array([0, 1, 2, 0, 2])
    fwd = RetainedForward.run(model, layers, clusters, x)
    rel = relevance(fwd, targets)
    want = ref.relevance(model, layers, x, targets)
    for name in layers:
        np.testing.assert_allclose(rel.units[name], want[name], rtol=1e-4, atol=1e-6)
    assert rel.independent == ()
    np.testing.assert_allclose(rel.logits, fwd.logits.detach().double().numpy()[range(5), targets])
    # Shares: each image's absolute relevance sums to 1 per layer, signs kept.
    s = shares(rel.units[layers[0]])
    np.testing.assert_allclose(np.abs(s).sum(axis=1), 1.0)
    assert np.array_equal(np.sign(s), np.sign(rel.units[layers[0]]))
    # The model is left as it was: parameters requiring grad, mode unchanged.
    assert all(p.requires_grad for p in model.parameters()) and not model.training
    n_out = fwd.logits.shape[1]
    with pytest.raises(ValueError, match=f"class_index {n_out} is outside"):
        relevance(fwd, n_out)


@pytest.mark.parametrize("case", sorted(CASES))
def test_split_edge_passes_give_each_target_its_images_gradient(case):
    """Each image carries one upper cluster per pass; every target's contribution sum equals
    plain autograd summed over exactly the images that carried it."""
    model, layers, x, clusters = setup_case(case)
    lower, upper = layers[0], layers[1]
    members = {int(c): np.flatnonzero(clusters[upper] == c) for c in np.unique(clusters[upper])}
    targets = {upper: members}
    carry = Carry.split(targets, x.shape[0], 2, seed=4)
    assert carry.n_passes == -(-len(members) * 2 // 5)
    fwd = RetainedForward.run(model, layers, clusters, x)
    sums = edge_sums(fwd, [(lower, upper)], carry)
    for cluster, units in members.items():
        carriers = carry.carriers(upper, cluster)
        assert len(carriers) == 2  # never one image twice
        want = ref.edge_contributions(model, layers, lower, upper, units, x)[carriers].sum(0)
        got = sums.sums[(lower, upper)][cluster]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
        assert sums.counts[(lower, upper)][cluster] == 2
    # Every image carrying every target (one pass per target) is the old exact edge.
    every = edge_sums(fwd, [(lower, upper)], Carry.every(targets, 5))
    for cluster, units in members.items():
        want = ref.edge_contributions(model, layers, lower, upper, units, x).sum(0)
        np.testing.assert_allclose(every.sums[(lower, upper)][cluster], want, rtol=1e-4, atol=1e-6)
    edges, none = edge_table(clusters, [(lower, upper)], every)
    assert none == () and len(edges["weight"]) > 0


def test_carry_split_spreads_images_and_depends_on_its_layer_alone():
    a = {"u": {3: np.arange(2), 7: np.arange(2, 4), 9: np.arange(4, 5)}}
    both = {**a, "v": {1: np.arange(3)}}
    one, two = Carry.split(a, 6, None, seed=1), Carry.split(both, 6, None, seed=1)
    assert np.array_equal(one.passes["u"], two.passes["u"])
    assert one.passes["u"].shape == (1, 6)  # 3 clusters x 2 images in one pass
    row = one.passes["u"][0]
    assert {c: int((row == c).sum()) for c in (3, 7, 9)} == {3: 2, 7: 2, 9: 2}
    again = Carry.split(a, 6, 6, seed=1)  # every image for every cluster: three passes
    assert again.n_passes == 3
    assert all(len(again.carriers("u", c)) == 6 for c in (3, 7, 9))
    with pytest.raises(ValueError, match="images_per_target"):
        Carry.split(a, 6, 0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_restarted_ablation_rows_equal_whole_forward_passes(case):
    model, layers, x, clusters = setup_case(case)
    fwd = RetainedForward.run(model, layers, clusters, x)
    fwd.release()
    rng = np.random.default_rng(2)
    rows = []
    for name in layers:
        width = len(clusters[name])
        for image in (0, 3):
            units = np.sort(rng.choice(width, size=max(1, width // 3), replace=False))
            rows.append(Row(image, name, units))
    members = np.flatnonzero(clusters[layers[-1]] == clusters[layers[-1]][0])
    rows.append(Row(1, layers[0], np.array([0, 1]), measure=(layers[-1], members)))
    fast = ablate(model, fwd, x, rows, batch_size=4)
    slow = ablate(model, fwd, x, rows, restart=False)
    assert fast.restarted and not slow.restarted
    for got in (fast, slow):
        for i, row in enumerate(rows):
            want = ref.ablated_logits(
                model, layers, row.layer, row.units, x[row.image : row.image + 1]
            )
            np.testing.assert_allclose(got.logits[i], want[0], rtol=1e-4, atol=1e-5)
        want = ref.ablated_activation(model, layers, layers[0], [0, 1], layers[-1], members, x[1:2])
        np.testing.assert_allclose(got.measured[-1], want[0], rtol=1e-4, atol=1e-5)
        assert np.isnan(got.measured[:-1]).all()


def test_ablation_falls_back_where_a_skip_connection_bypasses_the_layer():
    """Inside a residual block, the block's input reaches its output around conv1: a row
    restarted at conv1 would be wrong, the clean copy shows it, and whole passes take over."""
    model = resnet()
    layers = ["layer1.0.conv1", "layer2"]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    clusters = {"layer1.0.conv1": np.arange(64) % 5, "layer2": np.arange(128) % 7}
    fwd = RetainedForward.run(model, layers, clusters, x)
    fwd.release()
    rows = [Row(2, "layer1.0.conv1", np.arange(10)), Row(0, "layer2", np.arange(20))]
    got = ablate(model, fwd, x, rows)
    assert not got.restarted
    for i, row in enumerate(rows):
        want = ref.ablated_logits(model, layers, row.layer, row.units, x[row.image : row.image + 1])
        np.testing.assert_allclose(got.logits[i], want[0], rtol=1e-4, atol=1e-5)


def test_rows_cannot_measure_below_where_they_start():
    model, layers, x, clusters = setup_case("cnn")
    fwd = RetainedForward.run(model, layers, clusters, x)
    with pytest.raises(ValueError, match="not above"):
        ablate(model, fwd, x, [Row(0, "block2", np.array([0]), measure=("block1", np.array([0])))])
    assert isinstance(EdgeSums(), EdgeSums)
