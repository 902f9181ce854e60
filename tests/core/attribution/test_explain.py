"""Per-image concept relevance, maps, completeness and the faithfulness measures, against plain
autograd (tests/reference/attribution.py) on a small CNN, a residual network and a small ViT."""

import numpy as np
import pytest
import torch
from reference import attribution as ref
from test_passes import CASES, setup_case
from torch import nn

from carto_assets.core.attribution import explain
from carto_assets.core.attribution.forward import RetainedForward
from carto_assets.core.attribution.relevance import relevance

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("case", sorted(CASES))
def test_concepts_and_their_maps_equal_plain_autograd(case):
    model, layers, x, clusters = setup_case(case)
    clusters = {n: np.where(np.arange(len(c)) % 5 == 4, -1, c) for n, c in clusters.items()}
    targets = np.array([2, 0, 1, 1, 0])
    fwd = RetainedForward.run(model, layers, clusters, x)
    rel = relevance(fwd, targets, keep_grads=True)
    maps_ref = ref.relevance_maps(model, layers, x, targets)
    for layer in layers:
        per_unit = maps_ref[layer]
        # (B, C, H, W) conv, (B, T, C) tokens: units on axis 1 for both.
        per_unit = per_unit.transpose(0, 2, 1) if per_unit.ndim == 3 else per_unit
        sums = per_unit.reshape(per_unit.shape[0], per_unit.shape[1], -1).sum(axis=2)
        concepts = explain.layer_concepts(rel.units[layer], clusters[layer])
        members = explain.members_list(clusters[layer], concepts.clusters)
        want = np.stack([sums[:, m].sum(axis=1) for m in members], axis=1)
        np.testing.assert_allclose(concepts.relevance, want, rtol=1e-4, atol=1e-6)
        unclustered = sums[:, clusters[layer] < 0].sum(axis=1)
        np.testing.assert_allclose(concepts.unclustered, unclustered, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(concepts.total, sums.sum(axis=1), rtol=1e-4, atol=1e-6)
        # Shares: the concepts' and the unclustered units' absolute shares add up to at most 1.
        assert np.all(np.abs(concepts.share).sum(axis=1) <= 1 + 1e-9)
        maps = explain.concept_maps(fwd, rel, layer, members[:3])
        for k, m in enumerate(members[:3]):
            expected = per_unit[:, m].sum(axis=1).reshape(maps.shape[0], *maps.shape[2:])
            np.testing.assert_allclose(maps[:, k], expected, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(
                maps[:, k].reshape(maps.shape[0], -1).sum(axis=1),
                concepts.relevance[:, k],
                rtol=1e-4,
                atol=1e-5,
            )
    gaps = explain.completeness(rel)
    for layer in layers:
        np.testing.assert_allclose(gaps[layer], rel.logits - rel.units[layer].sum(axis=1))
    with pytest.raises(ValueError, match="keep_grads"):
        explain.concept_maps(fwd, relevance(fwd, targets), layers[0], members[:1])


class BiasFree(nn.Module):
    """Conv/ReLU/linear without biases: positively homogeneous, so every layer's gradient x
    activation adds up to the logit exactly (no completeness gap)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(6, 4, 3, stride=2, padding=1, bias=False), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 3, bias=False))

    def forward(self, x):
        return self.head(self.b(self.a(x)))


def test_a_homogeneous_network_leaves_no_completeness_gap_but_biases_do():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    clusters = {"a": np.arange(6) % 2, "b": np.arange(4)}
    net = BiasFree().eval()
    rel = relevance(RetainedForward.run(net, ["a", "b"], clusters, x), np.array([0, 1, 2, 0]))
    for gap in explain.completeness(rel).values():
        np.testing.assert_allclose(gap, 0.0, atol=1e-4)
    net.head[1].bias = nn.Parameter(torch.full((3,), 0.5))
    rel = relevance(RetainedForward.run(net, ["a", "b"], clusters, x), np.array([0, 1, 2, 0]))
    for gap in explain.completeness(rel).values():
        np.testing.assert_allclose(gap, 0.5, atol=1e-4)


def test_quantized_maps_round_trip_within_half_a_step():
    maps = np.random.default_rng(0).normal(size=(5, 4, 3)).astype(np.float32)
    maps[2] = 0.0
    codes, scale = explain.quantize(maps)
    for m, data, s in zip(maps, codes, scale):
        back = explain.dequantize(data, s, 4, 3)
        assert np.abs(back - m).max() <= s / 2 + 1e-7
    assert scale[2] == 0 and np.all(explain.dequantize(codes[2], 0.0, 4, 3) == 0)


def test_pointing_counts_positive_relevance_inside_the_mask():
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True  # the top-left cell of a 2 x 2 grid
    relevance_map = np.array([[3.0, 1.0], [-5.0, 0.0]])
    inside, share = explain.pointing(relevance_map, mask)
    assert inside == pytest.approx(0.75) and share == pytest.approx(0.25)
    half = np.zeros((8, 8), bool)
    half[:, :2] = True  # half of the left cells
    assert explain.mask_at(half, 2, 2).tolist() == [[0.5, 0.0], [0.5, 0.0]]
    inside, _ = explain.pointing(np.zeros((2, 2)), mask)
    assert np.isnan(inside)


def test_deletion_orders_rows_and_area():
    rng = np.random.default_rng(0)
    orders = explain.deletion_orders(np.array([0.1, 0.9, 0.5]), np.array([3.0, 1.0, 2.0]), 2, rng)
    assert orders["relevance"].tolist() == [1, 2] and orders["activation"].tolist() == [0, 2]
    # The random order is the caller's generator's draw: its permutation's first steps.
    assert orders["random"].tolist() == np.random.default_rng(0).permutation(3)[:2].tolist()
    members = [np.array([0, 1]), np.array([2]), np.array([3, 4])]
    rows = explain.deletion_rows(7, "b", np.array([2, 0]), members)
    assert [r.units.tolist() for r in rows] == [[3, 4], [0, 1, 3, 4]]
    assert all(r.image == 7 and r.layer == "b" for r in rows)
    assert explain.deletion_auc(2.0, np.array([1.0, 0.0])) == pytest.approx(0.5)
    assert np.isnan(explain.deletion_auc(0.0, np.array([1.0])))


def test_deletion_orders_random_order_is_uniform_without_repeats():
    relevance, activation = np.array([0.1, 0.9, 0.5, 0.3]), np.array([3.0, 1.0, 2.0, 0.5])
    rng = np.random.default_rng(1)
    first = np.zeros(4, int)
    for _ in range(400):
        order = explain.deletion_orders(relevance, activation, 3, rng)["random"]
        assert sorted(set(order.tolist())) == sorted(order.tolist()) and set(order) <= {0, 1, 2, 3}
        assert len(order) == 3
        first[order[0]] += 1
    # Neither the relevance nor the activation order, nor one fixed draw: each concept is
    # deleted first in about a quarter of the draws (100 expected, sd 8.7).
    assert first.min() >= 70 and first.max() <= 130


def test_dominant_concept_per_cell():
    maps = np.array([[[1.0, -1.0], [0.0, 2.0]], [[0.5, -0.5], [3.0, 1.0]]])
    assert explain.dominant(maps).tolist() == [[0, -1], [1, 0]]
    assert explain.top_concepts(np.array([[0.1, 0.3, 0.3]]), 2).tolist() == [[1, 2]]


def test_always_on_concepts_follow_the_others_among_the_same_top_k():
    share = np.array([[0.5, 0.2, 0.1, 0.15], [0.1, 0.2, 0.6, 0.05], [0.4, 0.3, 0.2, 0.1]])
    apart = np.array([True, False, False, False])
    ranked = explain.top_concepts(share, 3, apart)
    # The same three as by share alone, the always-on concept 0 moved behind the others.
    assert ranked.tolist() == [[1, 3, 0], [2, 1, 0], [1, 2, 0]]
    for row, plain in zip(ranked, explain.top_concepts(share, 3)):
        assert sorted(row.tolist()) == sorted(plain.tolist())
    # A concept set apart that is not among the k changes nothing; nothing apart: as before.
    assert explain.top_concepts(share[1:2], 2, apart).tolist() == [[2, 1]]
    assert (
        explain.top_concepts(share, 3, np.zeros(4, bool)).tolist()
        == explain.top_concepts(share, 3).tolist()
    )
    # Every stored concept always on: share order.
    assert explain.top_concepts(share[:1], 1, apart).tolist() == [[0]]
