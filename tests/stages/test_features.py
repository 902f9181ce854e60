"""Dictionary features as units: the activation pass against a dense reference, the neurons
table's pseudo-layers, the sampling pass, and the features-vs-channels figures."""

import numpy as np
import pytest
import torch

from carto_assets.core.network.layers import probe_layers, resolve_layers
from carto_assets.core.network.recorder import Batch, activation_pass, spatial_max
from carto_assets.core.network.zoo import BuiltinCNN
from carto_assets.core.sae.autoencoder import SparseAutoencoder, encode
from carto_assets.core.sae.dictionaries import Sampling, pick_positions, sample_activations
from carto_assets.core.sae.layer import (
    FEATURE_SUFFIX,
    FeatureLayer,
    feature_maxima,
    position_rows,
    source_layer,
)
from carto_assets.stages.dictionary import features_vs_channels
from carto_assets.stages.top_images import neurons_frame

N_IMAGES, BATCH, K = 40, 16, 6


def random_sae(d: int, m: int, k: int, seed: int) -> SparseAutoencoder:
    rng = np.random.default_rng(seed)
    w_dec = rng.normal(size=(d, m)).astype(np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=0, keepdims=True)
    return SparseAutoencoder(
        W_enc=rng.normal(size=(m, d)).astype(np.float32),
        b_enc=rng.normal(scale=0.1, size=m).astype(np.float32),
        W_dec=w_dec,
        b_dec=rng.normal(scale=0.1, size=d).astype(np.float32),
        k=k,
    )


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    model = BuiltinCNN(3).eval()
    layers = resolve_layers(probe_layers(model, 32), "auto", "builtin")
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(N_IMAGES, 3, 32, 32, generator=gen)
    return model, layers, images


def _batches(images):
    return [
        Batch(
            torch.arange(lo, min(lo + BATCH, N_IMAGES)),
            images[lo : lo + BATCH],
            torch.arange(lo, min(lo + BATCH, N_IMAGES)) % 3,
        )
        for lo in range(0, N_IMAGES, BATCH)
    ]


def _dense_outputs(model, images, names):
    from carto_assets.core.network.hooks import capture

    with capture(model, names, keep=lambda _n, out: out.detach().clone()) as outs:
        with torch.no_grad():
            model(images)
    return dict(outs)


def test_feature_top_k_equals_encoding_everything_and_sorting(tiny_net):
    model, layers, images = tiny_net
    source = layers[2]
    sae = random_sae(int(source.channels), 4 * int(source.channels), 3, seed=1)
    feature = FeatureLayer(source.name, sae)
    assert (feature.name, feature.channels) == (f"{source.name}{FEATURE_SUFFIX}", sae.n_features)
    plain = activation_pass(model, layers, _batches(images), k=K, n_classes=3, mass_fraction=0.03)
    result = activation_pass(
        model,
        layers,
        _batches(images),
        k=K,
        n_classes=3,
        mass_fraction=0.03,
        derived=[feature.on("cpu")],
    )
    widths = [int(i.channels) for i in layers]
    before = sum(widths[:3])  # block1..block3 channels, then block3's features
    m = sae.n_features
    # Dense reference: every position of every image encoded, max over space, full sort.
    out = _dense_outputs(model, images, [source.name])[source.name]  # (B, C, H, W)
    z = encode(sae, out.permute(0, 2, 3, 1).reshape(-1, out.shape[1]))
    maps = z.reshape(out.shape[0], out.shape[2], out.shape[3], m).permute(0, 3, 1, 2)
    values, ys, xs = (t.numpy() for t in spatial_max(maps))
    top = result.top_k
    for j in range(m):
        expected = sorted(range(N_IMAGES), key=lambda i: (-values[i, j], i))[:K]
        rows = np.flatnonzero(top["neuron_id"] == before + j)
        assert top["image_id"][rows].tolist() == expected
        np.testing.assert_allclose(top["activation"][rows], values[expected, j], rtol=1e-5)
        assert top["y"][rows].tolist() == ys[expected, j].tolist()
        assert top["x"][rows].tolist() == xs[expected, j].tolist()
    # Channels keep their top-k; those after the features move by the dictionary's size.
    shift = np.where(plain.top_k["neuron_id"] >= before, m, 0)
    for name in ("image_id", "activation", "y", "x"):
        keep = np.isin(result.top_k["neuron_id"], plain.top_k["neuron_id"] + shift)
        np.testing.assert_array_equal(result.top_k[name][keep], plain.top_k[name])
    assert result.top_k["neuron_id"].max() == sum(widths) + m - 1
    # Class statistics: the top-mass rule runs among the features alone.
    stats = result.class_stats
    n_units = sum(widths) + m
    assert len(stats["neuron_id"]) == 3 * n_units
    mask_counts = stats["top_mass_count"].reshape(3, n_units)[:, before : before + m]
    vals = torch.from_numpy(values)
    from carto_assets.core.network.recorder import top_mass_mask

    mask = top_mass_mask(vals, 0.03).numpy()
    labels = np.arange(N_IMAGES) % 3
    for label in range(3):
        np.testing.assert_array_equal(mask_counts[label], mask[labels == label].sum(axis=0))


def test_feature_maxima_in_chunks_equal_one_chunk(tiny_net):
    model, layers, images = tiny_net
    out = _dense_outputs(model, images[:7], [layers[1].name])[layers[1].name]
    sae = random_sae(out.shape[1], 2 * out.shape[1], 4, seed=3)
    whole = feature_maxima(sae, out)
    chunked = feature_maxima(sae, out, max_elements=1)  # one image at a time
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b)
    assert whole[0].shape == (7, sae.n_features)


@pytest.mark.parametrize("max_elements", [1, 1 << 24])
def test_feature_maxima_with_a_floor_find_the_positions_at_or_above_it(tiny_net, max_elements):
    model, layers, images = tiny_net
    out = _dense_outputs(model, images[:9], [layers[1].name])[layers[1].name]
    sae = random_sae(out.shape[1], 2 * out.shape[1], 4, seed=3)
    values, ys, xs = feature_maxima(sae, out)
    floor = values.median(dim=0).values
    got, got_ys, got_xs = feature_maxima(sae, out, floor=floor, max_elements=max_elements)
    found = values >= floor
    assert torch.equal(got, values) and (~found).any()
    assert torch.equal(got_ys[found], ys[found]) and torch.equal(got_xs[found], xs[found])
    assert (got_ys[~found] == -1).all() and (got_xs[~found] == -1).all()


def test_feature_positions_found_at_the_floor_only_equal_finding_every_one(tiny_net):
    """Features through the pass, batches in descending id order over duplicated images (ties
    at the floor from smaller ids): finding positions at the floor only changes nothing."""
    model, layers, images = tiny_net
    feature = FeatureLayer(layers[2].name, random_sae(int(layers[2].channels), 32, 3, seed=2))
    twins = torch.cat([images[:20], images[:20]])
    ids = torch.arange(N_IMAGES)
    backwards = [
        Batch(ids[lo : lo + 8], twins[lo : lo + 8], ids[lo : lo + 8] % 3)
        for lo in range(N_IMAGES - 8, -1, -8)
    ]
    runs = [
        activation_pass(
            model,
            layers,
            backwards,
            k=K,
            n_classes=3,
            mass_fraction=0.03,
            derived=[feature.on("cpu")],
            all_positions=every,
        )
        for every in (False, True)
    ]
    for name in runs[1].top_k:
        np.testing.assert_array_equal(runs[0].top_k[name], runs[1].top_k[name])
    assert (runs[0].top_k["y"] >= 0).all()


def test_derived_units_need_a_recorded_source(tiny_net):
    model, layers, images = tiny_net
    orphan = FeatureLayer("nope", random_sae(4, 2, 1, seed=0))
    with pytest.raises(ValueError, match=r"nope:features.*not recorded"):
        activation_pass(
            model, layers, _batches(images), k=2, n_classes=3, mass_fraction=0.1, derived=[orphan]
        )


def test_sampling_reads_each_layer_through_the_hook_helper(tiny_net):
    model, layers, images = tiny_net
    chosen = [layers[1], layers[2]]
    batches = [images[:10], images[10:20]]
    sample = sample_activations(model, chosen, batches, Sampling(10_000), seed=0)
    outs = _dense_outputs(model, images[:20], [i.name for i in chosen])
    for info in chosen:
        out = outs[info.name]
        rows = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1]).numpy()
        got = sample.samples[info.name]
        assert got.shape == rows.shape  # capacity above the positions: every row kept
        np.testing.assert_allclose(np.sort(got, axis=0), np.sort(rows, axis=0), rtol=1e-5)
    assert sample.n_images == 20


def reference_strongest(output: torch.Tensor, n: int) -> np.ndarray:
    """Per image, the ``n`` rows of ``position_rows`` with the largest norm, in row order."""
    channels = output.shape[-1] if output.ndim == 3 else output.shape[1]
    per_image = position_rows(output).numpy().reshape(output.shape[0], -1, channels)
    rows = []
    for vectors in per_image:
        top = np.sort(np.argsort(-np.linalg.norm(vectors, axis=1), kind="stable")[:n])
        rows.append(vectors[top])
    return np.concatenate(rows)


@pytest.mark.parametrize("n", [1, 3, 20, None])
def test_pick_positions_strongest_match_a_per_image_sort(n):
    output = torch.randn(5, 4, 3, 4, generator=torch.Generator().manual_seed(8))
    got = pick_positions(output, n).numpy()
    want = reference_strongest(output, 12 if n is None else n)
    np.testing.assert_array_equal(got, want)
    tokens = output.flatten(2).transpose(1, 2)  # (B, T, C) holds the same positions
    np.testing.assert_array_equal(pick_positions(tokens, n).numpy(), want)


def test_pick_positions_draws_the_others_uniformly_from_the_rest():
    b, p, strongest, others, runs = 4, 12, 3, 2, 600
    # Channel 0 names the position; channel 1 sets the norms (random order per image).
    ids = torch.arange(p, dtype=torch.float32).expand(b, p)
    loud = 10 * torch.rand(b, p, generator=torch.Generator().manual_seed(9))
    tokens = torch.stack([ids, loud], dim=2)  # (B, T, 2)
    strong = reference_strongest(tokens, strongest)[:, 0].reshape(b, strongest).astype(int)
    counts = np.zeros((b, p))
    for seed in range(runs):
        rows = pick_positions(tokens, strongest, others, torch.Generator().manual_seed(seed))
        picked = rows[:, 0].numpy().astype(int).reshape(b, strongest + others)
        np.testing.assert_array_equal(picked[:, :strongest], strong)
        for i, drawn in enumerate(picked[:, strongest:]):
            assert list(drawn) == sorted(set(drawn)) and not set(drawn) & set(strong[i])
            counts[i, drawn] += 1
    assert (counts[np.arange(b)[:, None], strong] == 0).all()
    expected = runs * others / (p - strongest)
    rest = counts[counts > 0]
    assert rest.size == b * (p - strongest)
    assert np.abs(rest - expected).max() < 5 * np.sqrt(expected)


def test_sampling_offers_each_images_strongest_and_random_positions(tiny_net):
    model, layers, images = tiny_net
    chosen = [layers[1], layers[2]]
    names = [i.name for i in chosen]
    batches = [images[:10], images[10:20]]
    strongest = sample_activations(
        model, chosen, batches, Sampling(10_000, strongest_per_image=3), 0
    )
    assert strongest.positions_seen == {name: 20 * 3 for name in names}
    dense = _dense_outputs(model, images[:20], names)
    for name in names:
        np.testing.assert_allclose(
            strongest.samples[name], reference_strongest(dense[name], 3), rtol=1e-5, atol=1e-6
        )
    mixed = sample_activations(
        model, chosen, batches, Sampling(10_000, strongest_per_image=3, random_per_image=2), 0
    )
    assert mixed.positions_seen == {name: 20 * 5 for name in names}
    channels = mixed.samples[names[1]].shape[1]
    per_image = mixed.samples[names[1]].reshape(20, 5, channels)
    np.testing.assert_array_equal(
        per_image[:, :3].reshape(-1, channels), strongest.samples[names[1]]
    )


def test_sampling_rejects_bad_position_counts(tiny_net):
    model, layers, _ = tiny_net
    with pytest.raises(ValueError, match="strongest_per_image must be an integer >= 1, got 0"):
        sample_activations(model, layers[:1], [], Sampling(5, strongest_per_image=0), 0)
    with pytest.raises(ValueError, match="random_per_image must be an integer >= 0, got -1"):
        sample_activations(model, layers[:1], [], Sampling(5, random_per_image=-1), 0)


def test_feature_maxima_stay_float32_under_autocast():
    sae = random_sae(4, m=12, k=3, seed=10)
    output = torch.randn(6, 4, 5, 3, generator=torch.Generator().manual_seed(10))
    plain = feature_maxima(sae, output)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = feature_maxima(sae, output)
    for a, b in zip(plain, cast, strict=True):
        assert b.dtype == a.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_neurons_frame_inserts_pseudo_layers_after_their_source(tiny_net):
    _, layers, _ = tiny_net
    sae3 = random_sae(int(layers[2].channels), 8, 2, seed=0)
    sae4 = random_sae(int(layers[3].channels), 5, 2, seed=0)
    features = [
        FeatureLayer(layers[2].name, sae3),
        FeatureLayer(layers[3].name, sae4),
    ]
    frame = neurons_frame(layers, features)
    names = [i.name for i in layers]
    assert frame["layer"].unique(maintain_order=True).to_list() == [
        names[0],
        names[1],
        names[2],
        f"{names[2]}:features",
        names[3],
        f"{names[3]}:features",
    ]
    assert frame["neuron_id"].to_list() == list(range(len(frame)))
    assert frame["layer_index"].unique(maintain_order=True).to_list() == list(range(6))
    feats = frame.filter(frame["kind"] == "feature")
    assert len(feats) == 13 and feats["channel"].to_list() == [*range(8), *range(5)]
    block3 = frame.filter(frame["layer"] == f"{names[2]}:features")
    assert block3["map_height"][0] == layers[2].map_size[0]
    assert set(frame.filter(frame["kind"] == "channel")["layer"]) == set(names)
    assert neurons_frame(layers)["kind"].unique().to_list() == ["channel"]


def test_features_vs_channels_pairs_each_pseudo_layer_with_its_source():
    gains = {"block3": 0.5, "block3:features": 0.7, "block4": 0.6}
    shares = {"block3": 0.2, "block3:features": 0.4, "block4": 0.3}
    assert features_vs_channels(gains, shares) == {
        "block3": {
            "channels": 0.5,
            "features": 0.7,
            "delta": 0.2,
            "channels_share_0_8": 0.2,
            "features_share_0_8": 0.4,
        }
    }
    assert source_layer("block3:features") == "block3" and source_layer("block3") == "block3"
