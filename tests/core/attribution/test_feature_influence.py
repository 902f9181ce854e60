"""Concept-graph edges into and out of SAE features, against plain autograd on routed models."""

import numpy as np
import pytest
import torch
from torch import nn

from carto_assets.core.attribution.ablation import ablation_faithfulness
from carto_assets.core.attribution.features import graph_pairs
from carto_assets.core.attribution.influence import influence_edges
from carto_assets.core.sae.autoencoder import SparseAutoencoder, encode
from carto_assets.core.sae.layer import FeatureLayer
from carto_assets.schema import PREDICTION, PREDICTION_CLUSTER

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MID_F, UP_F = "mid:features", "upper:features"


class Net(nn.Module):
    """lower (3 -> 4, ReLU) -> mid (4 -> 5, 3x3) -> upper (5 -> 4, 1x1) -> pooled linear head.

    ``mid`` has no ReLU after it and the rest is linear, so the logits are linear in ``mid``'s
    output (ablations there have exactly their first-order effect on the logits).
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lower = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
        self.mid = nn.Conv2d(4, 5, 3, padding=1)
        self.upper = nn.Conv2d(5, 4, 1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.upper(self.mid(self.lower(x))))


def hand_sae(d: int, m: int, k: int, seed: int) -> SparseAutoencoder:
    rng = np.random.default_rng(seed)
    w_dec = rng.normal(size=(d, m)).astype(np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=0, keepdims=True)
    return SparseAutoencoder(
        W_enc=(w_dec.T + 0.3 * rng.normal(size=(m, d))).astype(np.float32),
        b_enc=(0.1 * rng.normal(size=m)).astype(np.float32),
        W_dec=w_dec,
        b_dec=(0.1 * rng.normal(size=d)).astype(np.float32),
        k=k,
    )


def plain_sae(w_dec: np.ndarray) -> SparseAutoencoder:
    """An SAE whose decoder is ``w_dec`` and whose encoder is the identity on its first
    ``m`` channels (``W_enc`` (m, d) = the identity's first rows, zero biases, all ``m``
    features kept): ``w_dec`` as given, whatever its shape, for the checks of malformed ones."""
    w_dec = np.asarray(w_dec, dtype=np.float32)
    d = w_dec.shape[0]
    m = w_dec.shape[1] if w_dec.ndim == 2 else d
    return SparseAutoencoder(
        W_enc=np.eye(m, d, dtype=np.float32),
        b_enc=np.zeros(m, dtype=np.float32),
        W_dec=w_dec,
        b_dec=np.zeros(d, dtype=np.float32),
        k=m,
    )


SAES = {MID_F: hand_sae(5, 8, 3, seed=1), UP_F: hand_sae(4, 6, 2, seed=2)}
SPECS = {
    MID_F: FeatureLayer("mid", SAES[MID_F]),
    UP_F: FeatureLayer("upper", SAES[UP_F]),
}
CLUSTERS = {
    "lower": np.array([0, 1, 1, 2]),
    "mid": np.array([0, 1, 2, 2, 3]),
    "upper": np.array([0, 1, 2, 2]),
    MID_F: np.array([0, 0, 1, 2, 2, 3, 4, -1]),
    UP_F: np.array([0, 1, 1, 2, 3, 3]),
}
LAYERS = ["lower", "mid", "upper", MID_F, UP_F]


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


def members(layer: str) -> dict[int, np.ndarray]:
    ids = CLUSTERS[layer]
    return {int(c): np.flatnonzero(ids == c) for c in np.unique(ids) if c >= 0}


def feature_maps(sae: SparseAutoencoder, out: torch.Tensor) -> torch.Tensor:
    """(B, d, H, W) -> (B, m, H, W), written out here independently of the module."""
    return encode(sae, out.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


SOURCE = {MID_F: "mid", UP_F: "upper"}


def routed(net: Net, x: torch.Tensor, rewrite: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The network run by hand, with every layer's features computed beside it; the output of
    a layer in ``rewrite`` is handed on as its own value written ``W_dec z + b_dec + error``
    with the error detached: the same values, and the gradient with respect to ``z`` goes
    through the decoder."""
    out = {"lower": net.lower(x)}
    out["mid"] = net.mid(out["lower"])
    out[MID_F] = feature_maps(SAES[MID_F], out["mid"])
    mid = _rewritten(SAES[MID_F], out["mid"], out[MID_F]) if "mid" in rewrite else out["mid"]
    out["upper"] = net.upper(mid)
    out[UP_F] = feature_maps(SAES[UP_F], out["upper"])
    up = out["upper"]
    if "upper" in rewrite:
        up = _rewritten(SAES[UP_F], up, out[UP_F])
    out["logits"] = net.head(up)
    return out


def _rewritten(sae: SparseAutoencoder, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    w_dec, b_dec = torch.from_numpy(sae.W_dec), torch.from_numpy(sae.b_dec)
    recon = torch.einsum("dm,bmhw->bdhw", w_dec, z) + b_dec[None, :, None, None]
    return recon + (x - recon).detach()


def objective(out: dict[str, torch.Tensor], upper: str, cluster: int, label: int):
    if upper == PREDICTION:
        return out["logits"][:, label].sum()
    idx = torch.as_tensor(members(upper)[cluster])
    return out[upper][:, idx].amax(dim=(2, 3)).sum()


def reference_edges(net, x, pairs, label) -> dict[tuple, float]:
    """Signed gradient x activation by plain autograd on the routed network."""
    edges = {}
    for lower, upper in pairs:
        targets = [PREDICTION_CLUSTER] if upper == PREDICTION else sorted(members(upper))
        for b in targets:
            # Through a feature layer's decoder for edges out of it; the plain network otherwise.
            out = routed(net, x, rewrite=(SOURCE[lower],) if lower in SOURCE else ())
            (grad,) = torch.autograd.grad(objective(out, upper, b, label), out[lower])
            per_unit = (grad * out[lower].detach()).sum(dim=(2, 3)).double().mean(dim=0)
            for a, m in members(lower).items():
                edges[(lower, a, upper, b)] = float(per_unit[m].sum())
    return edges


def signed(result) -> dict[tuple, float]:
    e = result.edges
    keys = zip(e["source_layer"], e["source_cluster"], e["target_layer"], e["target_cluster"])
    return {
        (sl, int(sc), tl, int(tc)): float(w)
        for (sl, sc, tl, tc), w in zip(keys, e["signed_weight"])
    }


def run(net, x, pairs, label=1, **kw):
    return influence_edges(
        net, LAYERS, CLUSTERS, x, label, features=SPECS, pairs=pairs, keep_nonpositive=True, **kw
    )


def assert_edges_match(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_routed_network_has_the_network_s_values():
    net, x = Net().eval(), images()
    for rewrite in ((), ("mid",), ("mid", "upper")):
        assert torch.allclose(routed(net, x, rewrite)["logits"], net(x), atol=1e-6)


@pytest.mark.parametrize("batched", [False, True])
def test_edges_into_features_are_gradient_x_activation_through_the_encoder(batched):
    net, x = Net().eval(), images()
    pairs = [("lower", MID_F), ("mid", UP_F), ("lower", UP_F)]
    result = run(net, x, pairs, batched_backward=batched)
    want = reference_edges(net, x, pairs, 1)
    assert_edges_match(signed(result), want)
    assert any(abs(v) > 1e-3 for v in want.values())
    assert result.no_dependency == ()


@pytest.mark.parametrize("batched", [False, True])
def test_edges_out_of_features_are_gradient_x_activation_of_the_features(batched):
    net, x = Net().eval(), images()
    pairs = [(MID_F, "upper"), (MID_F, UP_F), (UP_F, PREDICTION), (MID_F, PREDICTION)]
    result = run(net, x, pairs, batched_backward=batched)
    want = reference_edges(net, x, pairs, 1)
    assert_edges_match(signed(result), want)
    assert any(abs(v) > 1e-3 for v in want.values())


def test_channel_and_feature_pairs_into_one_layer_share_a_pass_and_keep_their_values():
    net, x = Net().eval(), images()
    pairs = [("mid", "upper"), (MID_F, "upper"), ("mid", UP_F), (MID_F, UP_F)]
    together = signed(run(net, x, pairs))
    for pair in pairs:
        alone = signed(run(net, x, [pair]))
        assert alone == pytest.approx({k: v for k, v in together.items() if k[::2] == pair})


def test_features_leave_the_channel_edges_exactly_as_they_were():
    net, x = Net().eval(), images()
    channels = ["lower", "mid", "upper"]
    plain = influence_edges(net, channels, CLUSTERS, x, 2)
    explicit = influence_edges(
        net, channels, CLUSTERS, x, 2, pairs=graph_pairs(channels, {}), batched_backward=False
    )
    with_features = influence_edges(
        net, LAYERS, CLUSTERS, x, 2, features=SPECS, pairs=graph_pairs(channels, SPECS)
    )
    e = with_features.edges
    is_channel = np.isin(e["source_layer"], channels) & ~np.isin(e["target_layer"], list(SPECS))
    for column, values in plain.edges.items():
        assert np.array_equal(values, explicit.edges[column])
        assert np.array_equal(values, with_features.edges[column][is_channel])
    assert plain.no_dependency == explicit.no_dependency


def test_graph_pairs_chain_channels_and_features_separately():
    specs = {
        "b4:features": FeatureLayer("b4", plain_sae(np.eye(2))),
        "b2:features": FeatureLayer("b2", plain_sae(np.eye(2))),
        "b1:features": FeatureLayer("b1", plain_sae(np.eye(2))),
    }
    layers = ["b1", "b2", "b3", "b4"]
    assert graph_pairs(layers, {}) == [("b1", "b2"), ("b2", "b3"), ("b3", "b4"), ("b4", PREDICTION)]
    # Channels as without features, then the feature chain (by source) with its entries.
    assert graph_pairs(layers, specs) == [
        *graph_pairs(layers, {}),
        ("b1", "b2:features"),
        ("b1:features", "b2:features"),
        ("b3", "b4:features"),
        ("b2:features", "b4:features"),
        ("b4:features", PREDICTION),
    ]
    assert PREDICTION not in {upper for _, upper in graph_pairs(layers, specs, prediction=False)}


@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (2, 7, 5), (3, 5)])
def test_feature_maps_encode_every_position(shape):
    sae = SAES[MID_F]
    spec = FeatureLayer("mid", sae)
    out = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    z = spec.maps(out)
    axis = 2 if len(shape) == 3 else 1
    vectors = out.movedim(axis, -1)
    assert torch.equal(z.movedim(axis, -1), encode(sae, vectors))
    # project: W_dec^T g per position, so sum_j project(g)_j z_j = g . (W_dec z) per position.
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    lhs = (spec.project(g) * z).sum(dim=axis)
    recon = encode(sae, vectors) @ torch.from_numpy(sae.W_dec).T
    assert torch.allclose(lhs, (g.movedim(axis, -1) * recon).sum(-1), atol=1e-5)
    every = np.arange(spec.n_features)
    assert torch.allclose(spec.decoded(z, every).movedim(axis, -1), recon, atol=1e-6)


def mean_objective(out, upper, cluster, label) -> float:
    return float(objective(out, upper, cluster, label).double()) / out["lower"].shape[0]


def test_ablating_a_feature_cluster_subtracts_its_decoder_contribution():
    net, x = Net().eval(), images()
    pairs = [(MID_F, "upper"), (MID_F, UP_F), ("lower", MID_F), (MID_F, PREDICTION)]
    result = run(net, x, pairs, label=0)
    rho, effects = ablation_faithfulness(
        net, LAYERS, CLUSTERS, x, result, features=SPECS, class_index=0
    )
    for i in range(len(effects["weight"])):
        source = (str(effects["source_layer"][i]), int(effects["source_cluster"][i]))
        target = (str(effects["target_layer"][i]), int(effects["target_cluster"][i]))
        with torch.no_grad():
            base = routed(net, x)
            if source[0] == MID_F:
                z = feature_maps(SAES[MID_F], base["mid"])
                removed = SPECS[MID_F].decoded(z, members(MID_F)[source[1]])
                upper = net.upper(base["mid"] - removed)
                after = {
                    "upper": upper,
                    UP_F: feature_maps(SAES[UP_F], upper),
                    "logits": net.head(upper),
                    "lower": base["lower"],
                }
            else:  # a channel cluster of lower: its channels zeroed, the features re-encoded
                low = base["lower"].clone()
                low[:, torch.as_tensor(members("lower")[source[1]])] = 0
                after = {MID_F: feature_maps(SAES[MID_F], net.mid(low)), "lower": low}
        assert effects["baseline"][i] == pytest.approx(mean_objective(base, *target, 0), rel=1e-5)
        assert effects["ablated"][i] == pytest.approx(mean_objective(after, *target, 0), rel=1e-5)
    # The logits are linear in mid's output: removing a feature cluster's decoder contribution
    # drops the logit by exactly its gradient x activation.
    pred = effects["target_layer"] == PREDICTION
    assert pred.sum() == len(members(MID_F))
    into_prediction = result.edges["target_layer"] == PREDICTION
    np.testing.assert_allclose(
        effects["drop"][pred], result.edges["signed_weight"][into_prediction], rtol=1e-4, atol=1e-6
    )
    assert np.isfinite(rho)


def test_feature_layers_are_validated():
    net, x = Net().eval(), images()
    nowhere = {"nope:features": FeatureLayer("nope", plain_sae(np.eye(5)))}
    with pytest.raises(ValueError, match=r"reads layer 'nope', which is not a captured layer"):
        influence_edges(
            net,
            ["lower", "mid", "nope:features"],
            {**CLUSTERS, "nope:features": np.arange(5)},
            x,
            0,
            features=nowhere,
        )
    wrong = {MID_F: FeatureLayer("mid", plain_sae(np.eye(4)))}
    with pytest.raises(ValueError, match=r"decoder has shape \(4, 4\) but its source 'mid' outp"):
        influence_edges(
            net, ["lower", "mid", MID_F], {**CLUSTERS, MID_F: np.arange(4)}, x, 0, features=wrong
        )
    flat = {MID_F: FeatureLayer("mid", plain_sae(np.ones(5)))}
    with pytest.raises(ValueError, match=r"decoder must be a \(d, n_features\) tensor"):
        influence_edges(net, LAYERS[:4], CLUSTERS, x, 0, features=flat)
    with pytest.raises(ValueError, match=r"has 8 entries but the layer has 6 features"):
        influence_edges(
            net, LAYERS, {**CLUSTERS, UP_F: CLUSTERS[MID_F]}, x, 0, features=SPECS, pairs=[]
        )
    with pytest.raises(ValueError, match=r"features name layer\(s\) \['upper:features'\]"):
        influence_edges(net, LAYERS[:4], CLUSTERS, x, 0, features=SPECS)
    with pytest.raises(ValueError, match="does not go up the network"):
        influence_edges(net, LAYERS, CLUSTERS, x, 0, features=SPECS, pairs=[(MID_F, "mid")])
    with pytest.raises(ValueError, match="does not go up the network"):
        influence_edges(net, LAYERS, CLUSTERS, x, 0, features=SPECS, pairs=[(UP_F, MID_F)])
    with pytest.raises(ValueError, match=r"names layer\(s\) \['nope'\]"):
        influence_edges(net, LAYERS, CLUSTERS, x, 0, features=SPECS, pairs=[("mid", "nope")])
    with pytest.raises(ValueError, match="both read layer 'mid'"):
        twice = {**SPECS, UP_F: SPECS[MID_F]}
        influence_edges(net, LAYERS, CLUSTERS, x, 0, features=twice)
    with pytest.raises(ValueError, match=r"features\['mid:features'\] is the feature layer 'upp"):
        swapped = {MID_F: SPECS[UP_F], UP_F: SPECS[MID_F]}
        influence_edges(net, LAYERS, CLUSTERS, x, 0, features=swapped)
    with pytest.raises(ValueError, match=r"features\['mid:features'\] must be a FeatureLayer"):
        influence_edges(net, LAYERS, CLUSTERS, x, 0, features={**SPECS, MID_F: SAES[MID_F]})
