"""Concept-graph influence on hand-wired networks, edge sampling and ablation."""

import numpy as np
import pytest
import torch
from reference import attribution as ref
from torch import nn

from carto_assets.core.attribution.ablation import ablation_faithfulness, sample_edges
from carto_assets.core.attribution.influence import influence_edges
from carto_assets.core.network.zoo import torchvision_model
from carto_assets.schema import PREDICTION, PREDICTION_CLUSTER

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# upper channel <- lower channel weights of the 1x1 "upper" conv. Lower channel 3 feeds nothing.
WIRING = np.array(
    [
        [2.0, 0.5, 0.0, 0.0],  # u0 reads l0 strongly, l1 weakly
        [0.0, 0.0, 1.5, 0.0],  # u1 reads only l2
        [0.25, 0.0, 1.0, 0.0],  # u2 reads l2 strongly, l0 weakly
    ]
)
# class 0 reads u0 and u1 positively and u2 negatively.
HEAD = np.array([[1.0, 0.5, -1.0], [0.0, 1.0, 0.0]])


class Wired(nn.Module):
    """lower = input channels (and their sum in channel 3), upper = WIRING @ lower."""

    def __init__(self) -> None:
        super().__init__()
        self.lower = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.ReLU())
        self.upper = nn.Conv2d(4, 3, 1, bias=False)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2, bias=False)
        )
        lower = torch.zeros(4, 3, 1, 1)
        for c in range(3):
            lower[c, c] = 1.0
        lower[3] = 1.0
        self.lower[0].weight.data.copy_(lower)
        self.upper.weight.data.copy_(torch.tensor(WIRING, dtype=torch.float32)[:, :, None, None])
        self.head[2].weight.data.copy_(torch.tensor(HEAD, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.upper(self.lower(x)))


def positive_images(n: int = 5, size: int = 6, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.5 + torch.rand(n, 3, size, size, generator=gen)


IDENTITY = {"lower": np.arange(4), "upper": np.arange(3)}


def edge_dict(result) -> dict[tuple, float]:
    e = result.edges
    return {
        (sl, int(sc), tl, int(tc)): float(w)
        for sl, sc, tl, tc, w in zip(
            e["source_layer"],
            e["source_cluster"],
            e["target_layer"],
            e["target_cluster"],
            e["weight"],
        )
    }


def test_edges_follow_the_wiring_exactly():
    net = Wired().eval()
    x = positive_images()
    result = influence_edges(net, ["lower", "upper"], IDENTITY, x, class_index=0)
    edges = edge_dict(result)
    wired = {(a, b) for b in range(3) for a in range(4) if WIRING[b, a] != 0}
    got = {(k[1], k[3]) for k in edges if k[2] == "upper"}
    assert got == wired
    # Exact value: weight x the lower activation at the upper channel's argmax, image mean.
    lower = x.numpy()  # lower channel c == input channel c
    up = np.einsum("ba,nahw->nbhw", WIRING, np.concatenate([lower, lower.sum(1, keepdims=True)], 1))
    for (a, b), w in zip([(0, 0), (1, 0), (2, 1), (0, 2), (2, 2)], [2.0, 0.5, 1.5, 0.25, 1.0]):
        expect = np.mean([w * lower[n, a].flat[int(up[n, b].argmax())] for n in range(len(x))])
        assert edges[("lower", a, "upper", b)] == pytest.approx(expect, rel=1e-5)
    # Ordering implied by the wiring (lower activations are within a factor 3 of each other).
    assert edges[("lower", 0, "upper", 0)] > edges[("lower", 1, "upper", 0)]
    assert edges[("lower", 2, "upper", 2)] > edges[("lower", 0, "upper", 2)]
    # Prediction: u0, u1 excite class 0, u2 inhibits it and is clipped away.
    pred = {k[1]: w for k, w in edges.items() if k[2] == PREDICTION}
    assert set(pred) == {0, 1}
    assert all(k[3] == PREDICTION_CLUSTER for k in edges if k[2] == PREDICTION)
    assert result.no_dependency == ()
    assert result.n_images == len(x)
    records = result.records()
    assert len(records) == len(edges) and records[0]["source_layer"] == "lower"
    assert all(type(r["target_cluster"]) is int for r in records)
    # Shares of one target sum to 1.
    e = result.edges
    into_u0 = (e["target_layer"] == "upper") & (e["target_cluster"] == 0)
    assert e["share"][into_u0].sum() == pytest.approx(1.0)


def test_nonpositive_edges_kept_on_request_with_their_sign():
    net = Wired().eval()
    result = influence_edges(
        net, ["lower", "upper"], IDENTITY, positive_images(), 0, keep_nonpositive=True
    )
    e = result.edges
    assert len(e["weight"]) == 4 * 3 + 3
    pred = e["target_layer"] == PREDICTION
    signed = dict(zip(e["source_cluster"][pred], e["signed_weight"][pred]))
    assert signed[2] < 0 and e["weight"][pred][e["source_cluster"][pred] == 2][0] == 0
    # No wire -> exactly zero.
    row = (e["source_cluster"] == 3) & (e["target_layer"] == "upper")
    assert np.all(e["signed_weight"][row] == 0)


def test_clusters_sum_their_members_and_upper_clusters_restrict_targets():
    net = Wired().eval()
    x = positive_images()
    single = edge_dict(influence_edges(net, ["lower", "upper"], IDENTITY, x, 0))
    clustered = {"lower": np.array([0, 0, 1, -1]), "upper": np.array([5, 6, 6])}
    result = influence_edges(
        net, ["lower", "upper"], clustered, x, 0, upper_clusters={"upper": [5]}
    )
    edges = edge_dict(result)
    # Only cluster 5 (= u0) is a target; it reads l0 and l1, both in lower cluster 0.
    assert set(k for k in edges if k[2] == "upper") == {("lower", 0, "upper", 5)}
    assert edges[("lower", 0, "upper", 5)] == pytest.approx(
        single[("lower", 0, "upper", 0)] + single[("lower", 1, "upper", 0)], rel=1e-6
    )
    # Prediction edges cover all clusters of the last layer: 6 = u1 + u2 (0.5 x u1 - u2).
    assert {k[1] for k in edges if k[2] == PREDICTION} <= {5, 6}


def test_influence_is_deterministic():
    net = Wired().eval()
    x = positive_images()
    a = influence_edges(net, ["lower", "upper"], IDENTITY, x, 0)
    b = influence_edges(net, ["lower", "upper"], IDENTITY, x, 0, batch_size=2)
    c = influence_edges(net, ["lower", "upper"], IDENTITY, x, 0)
    for k in a.edges:
        assert np.array_equal(a.edges[k], c.edges[k])
        if a.edges[k].dtype == object:
            assert np.array_equal(a.edges[k], b.edges[k])
        else:  # chunking only changes the summation order
            np.testing.assert_allclose(a.edges[k], b.edges[k], rtol=1e-6)


class Parallel(nn.Module):
    """Two branches on the input; the head reads both."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x), self.b(x)], dim=1))


def test_independent_layers_are_flagged_not_crashed():
    net = Parallel().eval()
    clusters = {"a": np.array([0, 0, 1, 1]), "b": np.array([0, 1, 2, 3])}
    result = influence_edges(net, ["a", "b"], clusters, torch.randn(3, 3, 8, 8), 1)
    assert result.no_dependency == (("a", "b"),)
    assert not np.any(result.edges["target_layer"] == "b")
    assert set(result.edges["target_layer"]) <= {PREDICTION}
    assert set(result.edges["source_layer"]) <= {"b"}


class DeadUpper(Wired):
    """The upper layer is ReLU(-WIRING @ lower): zero, with a zero gradient, on positive input."""

    def __init__(self) -> None:
        super().__init__()
        self.upper.weight.data.neg_()
        self.upper = nn.Sequential(self.upper, nn.ReLU())


def test_zero_gradient_is_flagged():
    result = influence_edges(DeadUpper().eval(), ["lower", "upper"], IDENTITY, positive_images(), 0)
    assert result.no_dependency == (("lower", "upper"), ("upper", PREDICTION))
    assert len(result.edges["weight"]) == 0


def test_dead_lower_layer_is_flagged():
    net = Wired().eval()
    x = -positive_images()  # ReLU kills every lower activation
    result = influence_edges(net, ["lower", "upper"], IDENTITY, x, 0)
    assert ("lower", "upper") in result.no_dependency
    assert not np.any(result.edges["target_layer"] == "upper")


def test_influence_validates_inputs():
    net = Wired().eval()
    x = positive_images()
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['nope'\]"):
        influence_edges(net, ["lower", "nope"], IDENTITY, x, 0)
    with pytest.raises(
        ValueError, match=r"cluster_of\['upper'\] has 2 entries but the layer has 3"
    ):
        influence_edges(net, ["lower", "upper"], {"lower": np.arange(4), "upper": [0, 1]}, x, 0)
    with pytest.raises(ValueError, match="images is empty"):
        influence_edges(net, ["lower", "upper"], IDENTITY, x[:0], 0)
    with pytest.raises(ValueError, match="forward order"):
        influence_edges(net, ["upper", "lower"], IDENTITY, x, 0)
    with pytest.raises(ValueError, match=r"cluster\(s\) \[9\]"):
        influence_edges(net, ["lower", "upper"], IDENTITY, x, 0, upper_clusters={"upper": [9]})
    with pytest.raises(ValueError, match="class_index 7"):
        influence_edges(net, ["lower", "upper"], IDENTITY, x, 7)
    with pytest.raises(ValueError, match="no entry for layer"):
        influence_edges(net, ["lower", "upper"], {"lower": np.arange(4)}, x, 0)


def test_ablation_agrees_with_edge_weights():
    net = Wired().eval()
    x = positive_images(n=8)
    result = influence_edges(net, ["lower", "upper"], IDENTITY, x, 0, keep_nonpositive=True)
    rho, effects = ablation_faithfulness(
        net, ["lower", "upper"], IDENTITY, x, result, class_index=0
    )
    assert rho > 0.8
    assert len(effects["drop"]) == len(result.edges["weight"])
    no_wire = effects["weight"] == 0
    no_wire &= effects["target_layer"] == "upper"
    assert np.all(effects["drop"][no_wire] == 0)
    # In this linear net a wire's gradient x activation is the drop if the argmax stays put;
    # a moving argmax can only soften the drop (max(u - d) >= u(argmax u) - d(argmax u)).
    wired = (effects["weight"] > 0) & (effects["target_layer"] == "upper")
    assert np.all(effects["drop"][wired] > 0)
    assert np.all(effects["drop"][wired] <= effects["weight"][wired] + 1e-5)
    assert np.all(np.isfinite(effects["relative_drop"][wired]))
    # The logit is linear in the upper layer (no max on the way): the estimate is exact.
    pred = effects["target_layer"] == PREDICTION
    np.testing.assert_allclose(
        effects["drop"][pred & (effects["weight"] > 0)],
        effects["weight"][pred & (effects["weight"] > 0)],
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="pass class_index"):
        ablation_faithfulness(net, ["lower", "upper"], IDENTITY, x, result)


def test_sample_edges_is_seeded():
    edges = {
        "source_layer": ["A"] * 10,
        "source_cluster": list(range(10)),
        "target_layer": ["B"] * 10,
        "target_cluster": [0] * 10,
        "weight": np.linspace(0, 1, 10),
    }
    a, b = sample_edges(edges, 4, seed=3), sample_edges(edges, 4, seed=3)
    assert np.array_equal(a["source_cluster"], b["source_cluster"])
    assert len(a["weight"]) == 4 and np.all(np.diff(a["source_cluster"]) > 0)
    assert len(sample_edges(edges, 50)["weight"]) == 10


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision_model("resnet18", "none").eval()


def test_resnet18_layer1_to_layer2(resnet18):
    rng = np.random.default_rng(0)
    clusters = {"layer1": rng.integers(0, 6, 64), "layer2": rng.integers(0, 8, 128)}
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    result = influence_edges(
        resnet18, ["layer1", "layer2"], clusters, x, 7, upper_clusters={"layer2": [0, 3, 5]}
    )
    e = result.edges
    assert result.no_dependency == ()
    assert len(e["weight"]) > 0 and np.all(np.isfinite(e["weight"])) and np.all(e["weight"] > 0)
    assert set(e["target_cluster"][e["target_layer"] == "layer2"]) <= {0, 3, 5}
    assert set(e["source_layer"][e["target_layer"] == PREDICTION]) == {"layer2"}
    sample = sample_edges(result, 6, seed=0)
    # and two edges into the prediction (their drop is the logit's)
    to_logit = np.flatnonzero(e["target_layer"] == PREDICTION)[:2]
    sample = {k: np.concatenate([v, e[k][to_logit]]) for k, v in sample.items()}
    rho, effects = ablation_faithfulness(
        resnet18, ["layer1", "layer2"], clusters, x, sample, class_index=7
    )
    # Each edge's drop is what zeroing its source cluster in a whole forward pass does to its
    # target (its members' summed spatial maxima, or the class's logit), averaged over the
    # images; rho ranks the weights against those drops.
    layers = ["layer1", "layer2"]
    members = {name: lambda c, name=name: np.flatnonzero(clusters[name] == c) for name in layers}
    want = []
    for source, c_source, target, c_target in zip(
        sample["source_layer"],
        sample["source_cluster"],
        sample["target_layer"],
        sample["target_cluster"],
        strict=True,
    ):
        units = members[source](c_source)
        if target == PREDICTION:
            before = ref.ablated_logits(resnet18, layers, source, [], x)[:, 7]
            after = ref.ablated_logits(resnet18, layers, source, units, x)[:, 7]
        else:
            m = members[target](c_target)
            before = ref.ablated_activation(resnet18, layers, source, [], target, m, x)
            after = ref.ablated_activation(resnet18, layers, source, units, target, m, x)
        want.append(before.mean() - after.mean())
    assert list(sample["target_layer"]).count(PREDICTION) == 2
    np.testing.assert_allclose(effects["drop"], want, rtol=1e-4, atol=1e-5)
    ranks = [np.argsort(np.argsort(v)) for v in (sample["weight"], np.array(want))]
    assert rho == pytest.approx(np.corrcoef(*ranks)[0, 1], abs=1e-9)


def test_batched_backward_equals_one_pass_per_cluster():
    """One vectorized backward per layer pair gives the loop's edges, on googlenet's
    inception blocks (branches, concatenation, max pooling) and on the wired network."""
    torch.manual_seed(0)
    model = torchvision_model("googlenet", "none").eval()
    layers = ["inception3a", "inception3b", "inception4a"]
    rng = np.random.default_rng(0)
    clusters = {"inception3a": rng.integers(0, 12, 256), "inception3b": rng.integers(0, 20, 480)}
    clusters["inception4a"] = rng.integers(0, 20, 512)
    x = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    upper = {"inception3b": [0, 4, 7, 19], "inception4a": [1, 2, 3]}
    loop = influence_edges(model, layers, clusters, x, 5, upper, batched_backward=False)
    batched = influence_edges(model, layers, clusters, x, 5, upper, batched_backward=True)
    assert len(loop.edges["weight"]) > 20
    for column in ("source_layer", "source_cluster", "target_layer", "target_cluster"):
        assert np.array_equal(loop.edges[column], batched.edges[column])
    np.testing.assert_allclose(batched.edges["signed_weight"], loop.edges["signed_weight"],
                               rtol=1e-4, atol=1e-7)  # fmt: skip
    wired = influence_edges(Wired(), ["lower", "upper"], IDENTITY, positive_images(), 0)
    wired_loop = influence_edges(
        Wired(), ["lower", "upper"], IDENTITY, positive_images(), 0, batched_backward=False
    )
    assert edge_dict(wired) == pytest.approx(edge_dict(wired_loop))
