"""Streaming top-k, spatial max/argmax and the Summit top-mass rule against simple references."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from carto_assets.core.network import recorder
from carto_assets.core.network.layers import LayerInfo, probe_layers, resolve_layers
from carto_assets.core.network.recorder import (
    ClassStats,
    LayerRecorder,
    StreamingTopK,
    spatial_max,
    top_mass_mask,
    top_mass_masks,
)


def reference_topk(values: np.ndarray, k: int) -> list[list[tuple[float, int]]]:
    """Full sort per neuron by (activation desc, image id asc)."""
    n_images, n_neurons = values.shape
    out = []
    for j in range(n_neurons):
        order = sorted(range(n_images), key=lambda i: (-values[i, j], i))[:k]
        out.append([(float(values[i, j]), i) for i in order])
    return out


def stream(values: np.ndarray, k: int, batch_sizes, id_order=None) -> StreamingTopK:
    ids = np.arange(len(values)) if id_order is None else id_order
    topk = StreamingTopK(values.shape[1], k)
    lo = 0
    rng = np.random.default_rng(0)
    while lo < len(values):
        b = int(rng.choice(batch_sizes))
        sel = ids[lo : lo + b]
        v = torch.from_numpy(values[sel])
        topk.update(
            v,
            torch.from_numpy(sel),
            torch.zeros_like(v, dtype=torch.long),
            torch.zeros_like(v, dtype=torch.long),
        )
        lo += b
    return topk


@pytest.mark.parametrize("k", [1, 5, 40])
def test_streaming_topk_equals_full_sort_with_ties(k):
    rng = np.random.default_rng(k)
    # Few distinct values -> many ties (like ReLU zeros), across many batches.
    values = rng.integers(0, 4, size=(300, 12)).astype(np.float32)
    values[:, 0] = 0.0  # a dead neuron: all ties
    res = stream(values, k, batch_sizes=[1, 7, 32, 64]).result()
    ref = reference_topk(values, k)
    for j in range(values.shape[1]):
        mask = res["neuron_id"] == j
        got = list(zip(res["activation"][mask].tolist(), res["image_id"][mask].tolist()))
        assert got == ref[j]
        assert res["rank"][mask].tolist() == list(range(1, k + 1))


@pytest.mark.parametrize("k", [1, 3, 50])
@pytest.mark.parametrize("rising", [False, True])
def test_streaming_topk_keeps_each_candidates_position_late_in_a_long_stream(k, rising):
    """Long streams, where few of a batch's images beat a neuron's k-th (the merge then sorts
    only those): the kept values, ids and positions equal a full sort's, ties included. With
    ``rising``, one neuron's every image enters (the merge sorts whole batches again)."""
    rng = np.random.default_rng(k)
    n_images, n_neurons = 3000, 9
    values = rng.normal(size=(n_images, n_neurons)).astype(np.float32).round(2)
    values[:, 0] = 0.0  # every image ties
    values[:, 1] = np.maximum(values[:, 1], 0.0)  # ReLU: half the images tie at 0
    values[:, 2] = values[:, 2].round(1)  # ties above the k-th
    if rising:
        values[:, 3] = np.arange(n_images, dtype=np.float32)
    ys = (np.arange(n_images)[:, None] * 7 + np.arange(n_neurons)[None, :]) % 13
    xs = (np.arange(n_images)[:, None] * 3 + np.arange(n_neurons)[None, :] * 5) % 11
    streams = [StreamingTopK(n_neurons, k), StreamingTopK(n_neurons, k, prefilter=False)]
    for lo in range(0, n_images, 128):
        sel = slice(lo, lo + 128)
        for topk in streams:
            topk.update(
                torch.from_numpy(values[sel]),
                torch.arange(lo, min(lo + 128, n_images)),
                torch.from_numpy(ys[sel]),
                torch.from_numpy(xs[sel]),
            )
    res, unfiltered = (topk.result() for topk in streams)
    for column, got in res.items():
        assert np.array_equal(got, unfiltered[column])
    # The fast path ran where it can (late batches: few images beat a k-th), and only there.
    if rising:  # neuron 3's every image enters: each batch is merged whole
        assert streams[0].prefiltered == {"part": 0, "skipped": 0}
    else:
        assert streams[0].prefiltered["part"] > 0
    assert streams[1].prefiltered == {"part": 0, "skipped": 0}
    ref = reference_topk(values, k)
    for j in range(n_neurons):
        mask = res["neuron_id"] == j
        ids = res["image_id"][mask]
        assert list(zip(res["activation"][mask].tolist(), ids.tolist())) == ref[j]
        assert res["y"][mask].tolist() == ys[ids, j].tolist()
        assert res["x"][mask].tolist() == xs[ids, j].tolist()


def test_streaming_topk_skips_a_batch_none_of_whose_values_can_enter():
    topk = StreamingTopK(2, 2)
    zeros = torch.zeros((2, 2), dtype=torch.long)
    topk.update(torch.tensor([[5.0, 6.0], [4.0, 7.0]]), torch.tensor([0, 1]), zeros, zeros)
    # Equal to the k-th is not above it: a later id ranks after it.
    topk.update(torch.tensor([[4.0, 6.0], [1.0, 2.0]]), torch.tensor([2, 3]), zeros, zeros)
    assert topk.prefiltered == {"part": 0, "skipped": 1}
    topk.update(torch.tensor([[9.0, 0.0]]), torch.tensor([4]), zeros[:1], zeros[:1])
    assert topk.prefiltered == {"part": 0, "skipped": 1}  # one image: merged whole
    res = topk.result()  # rows are images, columns units
    assert res["neuron_id"].tolist() == [0, 0, 1, 1]
    assert res["image_id"].tolist() == [4, 0, 1, 0]
    assert res["activation"].tolist() == [9.0, 5.0, 7.0, 6.0]


def test_streaming_topk_of_no_units_takes_batches():
    topk = StreamingTopK(0, 3)
    for lo in (0, 2):
        topk.update(
            torch.zeros((2, 0)),
            torch.tensor([lo, lo + 1]),
            torch.zeros((2, 0), dtype=torch.long),
            torch.zeros((2, 0), dtype=torch.long),
        )
    assert len(topk.result()["neuron_id"]) == 0


def test_streaming_topk_out_of_order_batches_match_full_sort():
    rng = np.random.default_rng(3)
    values = rng.integers(0, 3, size=(200, 5)).astype(np.float32)
    shuffled = rng.permutation(200)
    res = stream(values, 10, batch_sizes=[16], id_order=shuffled).result()
    ref = reference_topk(values, 10)
    for j in range(5):
        mask = res["neuron_id"] == j
        assert list(zip(res["activation"][mask].tolist(), res["image_id"][mask].tolist())) == ref[j]


def test_shard_merge_equals_single_stream():
    """Top-k per shard, then top-k of the union, equals one pass (how top_images merges)."""
    rng = np.random.default_rng(5)
    values = rng.normal(size=(500, 8)).astype(np.float32).round(1)
    k = 15
    cands = []
    for lo in range(0, 500, 125):
        part = stream(values[lo : lo + 125], k, [10, 50]).result()
        part["image_id"] = part["image_id"] + lo
        cands.append(part)
    for j in range(8):
        pool = []
        for part in cands:
            m = part["neuron_id"] == j
            pool += list(zip(part["activation"][m].tolist(), part["image_id"][m].tolist()))
        merged = sorted(pool, key=lambda t: (-t[0], t[1]))[:k]
        assert merged == reference_topk(values, k)[j]


def test_topk_when_fewer_images_than_k():
    values = np.arange(6, dtype=np.float32).reshape(3, 2)
    res = stream(values, 10, [2]).result()
    assert (res["neuron_id"] == 0).sum() == 3
    assert res["rank"][res["neuron_id"] == 1].tolist() == [1, 2, 3]


def test_spatial_max_and_argmax_positions():
    x = torch.zeros(2, 3, 5, 7)
    x[0, 0, 4, 6] = 9.0
    x[0, 1, 0, 0] = 2.0
    x[1, 2, 2, 3] = -0.5
    x[1, 2] -= 1.0
    x[1, 2, 2, 3] = 1.5
    v, y, xx = spatial_max(x)
    assert v[0, 0] == 9.0 and (y[0, 0], xx[0, 0]) == (4, 6)
    assert (y[0, 1], xx[0, 1]) == (0, 0)
    assert v[1, 2] == 1.5 and (y[1, 2], xx[1, 2]) == (2, 3)
    tokens = torch.zeros(1, 4, 3)
    tokens[0, 2, 1] = 5.0
    v, y, xx = spatial_max(tokens)
    assert v.shape == (1, 3) and v[0, 1] == 5.0 and y[0, 1] == 2 and xx[0, 1] == 0


@pytest.mark.parametrize("layout", ["maps", "channels_last", "tokens"])
def test_spatial_max_with_a_floor_finds_the_positions_at_or_above_it(layout):
    rng = np.random.default_rng(3)
    # Few distinct values: ties everywhere, the first position must win as without a floor.
    shape = (9, 6, 7) if layout == "tokens" else (9, 6, 5, 7)
    output = torch.from_numpy(rng.integers(0, 4, size=shape).astype(np.float32))
    if layout == "channels_last":
        output = output.contiguous(memory_format=torch.channels_last)
    channels = output.shape[2] if layout == "tokens" else output.shape[1]
    floor = torch.from_numpy(rng.integers(0, 5, size=channels).astype(np.float32))
    values, ys, xs = spatial_max(output)
    got_values, got_ys, got_xs = spatial_max(output, floor)
    assert torch.equal(got_values, values)
    found = values >= floor
    assert 0 < int(found.sum()) < found.numel()
    assert torch.equal(got_ys[found], ys[found]) and torch.equal(got_xs[found], xs[found])
    assert (got_ys[~found] == -1).all() and (got_xs[~found] == -1).all()


def test_a_recorder_with_a_floor_finds_only_the_positions_that_can_enter():
    from carto_assets.core.network.zoo import BuiltinCNN

    torch.manual_seed(0)
    model = BuiltinCNN(4).eval()
    layers = resolve_layers(probe_layers(model, 32), "auto", "builtin")
    x = torch.randn(8, 3, 32, 32)
    with LayerRecorder(model, layers) as rec, torch.no_grad():
        model(x)
        values, ys, xs = rec.collect()
        rec.floor = values.median(dim=0).values
        model(x)
        _, floor_ys, floor_xs = rec.collect()
    found = values >= rec.floor
    assert torch.equal(floor_ys[found], ys[found]) and torch.equal(floor_xs[found], xs[found])
    assert (floor_ys[~found] == -1).all() and (~found).any()


def test_a_floor_compares_values_as_the_top_k_keeps_them_in_float32():
    # Just below 1 in float64, exactly 1 in float32: the top-k would keep it as 1.0 and an
    # image with a smaller id ties at the floor and enters, so its position is needed.
    output = torch.zeros(1, 1, 2, 3, dtype=torch.float64)
    output[0, 0, 1, 2] = 1 - 2.0**-30
    _, ys, xs = spatial_max(output, torch.ones(1))
    assert (ys[0, 0], xs[0, 0]) == (1, 2)


def test_the_floor_of_an_ascending_batch_is_the_next_float_above_the_kth():
    topk = StreamingTopK(2, k=2)
    assert topk.floor() is None
    values = torch.tensor([[3.0, 1.0], [2.0, 1.0], [1.0, 1.0]])
    zeros = torch.zeros_like(values, dtype=torch.long)
    topk.update(values, torch.tensor([4, 5, 6]), zeros, zeros)
    assert topk.floor().tolist() == [2.0, 1.0]
    # Ids above every id merged: an equal value cannot enter (a larger id ranks after it).
    strict = topk.floor(torch.tensor([7, 9]))
    assert torch.equal(strict, torch.nextafter(torch.tensor([2.0, 1.0]), torch.tensor(9.0)))
    # A smaller id, or ids out of order: an equal value can enter, the floor is the k-th.
    assert topk.floor(torch.tensor([1, 2])).tolist() == [2.0, 1.0]
    assert topk.floor(torch.tensor([9, 8])).tolist() == [2.0, 1.0]


def test_derived_units_without_a_floor_are_reduced_as_before_floors_existed():
    """A DerivedUnits whose reduce takes the output alone still works where no floor is set."""
    from carto_assets.core.network.zoo import BuiltinCNN

    class Negated:
        name, source, channels = "block1:neg", "block1", 32

        def reduce(self, output):
            return spatial_max(-output)

    torch.manual_seed(0)
    model = BuiltinCNN(4).eval()
    layers = resolve_layers(probe_layers(model, 32), "auto", "builtin")
    x = torch.randn(2, 3, 32, 32)
    with LayerRecorder(model, layers, [Negated()]) as rec, torch.no_grad():
        model(x)
        values, _, _ = rec.collect()
    from carto_assets.core.network.hooks import capture

    with capture(model, ["block1"]) as outputs, torch.no_grad():
        model(x)
    # The derived units follow their source's 32 channels, reduced by the one-argument reduce.
    assert values.shape[1] == sum(int(i.channels) for i in layers) + 32
    assert torch.equal(values[:, 32:64], (-outputs["block1"]).amax(dim=(2, 3)))


class InPlaceNet(nn.Module):
    """The hooked conv's output is overwritten in place by the next op."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        with torch.no_grad():
            self.conv.weight[:] = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)

    def forward(self, x):
        return self.relu(self.conv(x[:, :1])).sum()


def test_recorder_is_not_fooled_by_in_place_ops():
    net = InPlaceNet()
    infos = probe_layers(net, 4)
    layers = resolve_layers(infos, ["conv"], "x")
    img = torch.zeros(1, 3, 4, 4)
    img[0, 0, 1, 2] = -3.0  # channel 1 sees +3 at (1,2) before ReLU; channel 0 sees -3 there
    with LayerRecorder(net, layers) as rec, torch.no_grad():
        net(img)
        values, ys, xs = rec.collect()
    # Channel 0 = x: max 0 elsewhere; channel 1 = -x: max +3 at (1, 2). ReLU(inplace) later
    # would clamp channel 0's -3 to 0, which does not change the max; check channel 1's value
    # and that a negative max survives when every position is negative.
    assert values[0, 1] == 3.0 and (ys[0, 1], xs[0, 1]) == (1, 2)
    neg = torch.full((1, 3, 4, 4), 2.0)
    with LayerRecorder(net, layers) as rec, torch.no_grad():
        net(neg)
        values, _, _ = rec.collect()
    assert values[0, 1] == -2.0  # before the in-place ReLU turned it into 0


def test_top_mass_mask_follows_summit_rule():
    v = torch.tensor([[0.50, 0.30, 0.15, 0.05, -1.0]])
    assert top_mass_mask(v, 0.5).tolist() == [[True, False, False, False, False]]
    assert top_mass_mask(v, 0.6).tolist() == [[True, True, False, False, False]]
    assert top_mass_mask(v, 0.96).tolist() == [[True, True, True, True, False]]
    assert not top_mass_mask(torch.zeros(1, 3), 0.03).any()


@pytest.mark.parametrize("fraction", [0.03, 0.2, 0.6])
@pytest.mark.parametrize("head", [1, 3, 8])
@pytest.mark.parametrize("bounds", [[0, 40], [0, 40, 49, 81, 121]])
def test_top_mass_masks_equal_the_whole_sort_in_each_block(fraction, head, bounds):
    rng = np.random.default_rng(int(fraction * 100) + head)
    values = torch.from_numpy(rng.normal(size=(400, bounds[-1])).astype(np.float32))
    values[::5] = torch.round(values[::5] * 2) / 2  # equal shares, some across the cut
    values[::7] = 1.0 + values[::7].abs() / 100  # flat rows: the rule goes past a small head
    values[3] = -1.0  # no positive mass: nothing taken
    mask, past = top_mass_masks(values, bounds, fraction, head)
    blocks = list(itertools.pairwise(bounds))
    reference = [top_mass_mask(values[:, lo:hi], fraction) for lo, hi in blocks]
    assert torch.equal(mask, torch.cat(reference, dim=1))
    # Rows of blocks the rule takes more than the head from were ordered whole, and only those.
    assert past == sum(int((r.sum(dim=1) > head).sum()) for r in reference)
    if fraction == 0.03:
        assert past < len(values) // 2
    if fraction == 0.6 or head == 1:
        assert past > 0


def test_top_mass_masks_break_a_tie_across_the_cut_by_channel():
    values = torch.zeros(1, 40)
    values[0, [30, 7, 19]] = torch.tensor([5.0, 5.0, 1.0])  # the two 5s straddle a 10% cut
    mask, past = top_mass_masks(values, [0, 40], 0.1, head=4)
    assert torch.nonzero(mask[0]).flatten().tolist() == [7] and past == 0
    assert torch.equal(mask, top_mass_mask(values, 0.1))


def test_class_stats_order_more_shares_where_the_rule_needs_them():
    widths = [12, 64]
    layers = [LayerInfo(f"l{i}", "Conv2d", (w, 1, 1), 1, 0, 1) for i, w in enumerate(widths)]
    stats = ClassStats(layers, n_classes=2, fraction=0.5)
    rng = np.random.default_rng(0)
    values = torch.from_numpy(rng.random(size=(64, 76)).astype(np.float32))
    labels = torch.arange(64) % 2
    for lo in range(0, 64, 16):
        stats.update(values[lo : lo + 16], labels[lo : lo + 16])
    # Half of a flat layer's mass is many channels: the head doubled until it held them.
    assert stats.head > recorder.TOP_MASS_HEAD
    mask = torch.cat([top_mass_mask(values[:, :12], 0.5), top_mass_mask(values[:, 12:], 0.5)], 1)
    counts = stats.result()["top_mass_count"].reshape(2, 76)
    for label in range(2):
        assert counts[label].tolist() == mask[labels == label].sum(dim=0).tolist()


def test_class_stats_counts_per_class():
    layer = LayerInfo("l", "Conv2d", (3, 1, 1), 1, 0, 1)
    stats = ClassStats([layer], n_classes=3, fraction=0.03)
    values = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 4.0, 1.0]])
    stats.update(values, torch.tensor([0, 2, 2]))
    res = stats.result()
    assert sorted(set(res["label"].tolist())) == [0, 2]
    row = lambda lbl, n: int(np.flatnonzero((res["label"] == lbl) & (res["neuron_id"] == n))[0])  # noqa: E731
    assert res["top_mass_count"][row(2, 1)] == 2
    assert res["top_mass_count"][row(0, 0)] == 1
    assert res["activation_sum"][row(2, 1)] == pytest.approx(6.0)
    assert res["n_images"][row(2, 2)] == 2


def _small_setup():
    from carto_assets.core.network.recorder import Batch
    from carto_assets.core.network.zoo import BuiltinCNN

    torch.manual_seed(0)
    model = BuiltinCNN(4).eval()
    layers = resolve_layers(probe_layers(model, 32), "auto", "builtin")
    gen = torch.Generator().manual_seed(1)
    raw = torch.randint(0, 256, (48, 32, 32, 3), dtype=torch.uint8, generator=gen)

    def preprocess(x):
        return (x.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25

    batches = [
        Batch(torch.arange(lo, lo + 16), raw[lo : lo + 16], torch.arange(lo, lo + 16) % 4)
        for lo in range(0, 48, 16)
    ]
    return model, layers, batches, preprocess


def _small_pass(batches=None, **kwargs):
    from carto_assets.core.network.recorder import activation_pass

    model, layers, own, preprocess = _small_setup()
    batches = own if batches is None else batches
    return activation_pass(
        model,
        layers,
        batches,
        k=5,
        n_classes=4,
        mass_fraction=0.03,
        preprocess=preprocess,
        **kwargs,
    )


def test_passes_stepped_batch_by_batch_beside_a_bare_forward_pass_equal_one_pass_alone():
    """What benchmarks/activations.py --study does: two passes and a bare forward pass, each on
    its own copy of the model, stepped in turn on each batch."""
    import copy

    from carto_assets.core.network.recorder import ActivationPass

    model, layers, batches, preprocess = _small_setup()
    twin, bare = copy.deepcopy(model), copy.deepcopy(model)
    settings = {"k": 5, "n_classes": 4, "mass_fraction": 0.03, "preprocess": preprocess}
    first = ActivationPass(model, layers, **settings)
    second = ActivationPass(twin, layers, **settings)
    with pytest.raises(RuntimeError, match="inside its `with` block"):
        first.step(batches[0])
    with first, second:
        for batch in batches:
            first.step(batch)
            with torch.inference_mode():
                bare(preprocess(batch.images))
            second.step(batch)
    assert first.done == second.done == 48
    # The hooks are gone with the block.
    assert not any(m._forward_hooks for net in (model, twin) for m in net.modules())
    alone = _small_pass()
    for run in (first.result(), second.result()):
        for name in alone.top_k:
            np.testing.assert_array_equal(run.top_k[name], alone.top_k[name])
        for name in alone.class_stats:
            np.testing.assert_array_equal(run.class_stats[name], alone.class_stats[name])
        np.testing.assert_array_equal(run.predictions["predicted"], alone.predictions["predicted"])


def test_a_pass_finding_the_positions_that_can_enter_equals_finding_them_all(monkeypatch):
    floors = []
    plain = recorder.max_and_position

    def spy(flat, dim, width, floor=None):
        floors.append(floor is not None)
        return plain(flat, dim, width, floor)

    monkeypatch.setattr(recorder, "max_and_position", spy)
    every = _small_pass(all_positions=True)
    assert not any(floors)
    few = _small_pass()  # on CPU: the few
    assert any(floors) and not all(floors)  # a floor once the top-k were full
    for name in every.top_k:
        np.testing.assert_array_equal(few.top_k[name], every.top_k[name])
    assert (few.top_k["y"] >= 0).all()
    for name in every.class_stats:
        np.testing.assert_array_equal(few.class_stats[name], every.class_stats[name])


def test_ties_at_the_floor_from_smaller_ids_enter_as_when_finding_every_position():
    """Batches in descending id order over duplicated images: values tie at the floor and the
    smaller ids enter, the case a floor equal to the k-th value (not above it) is for."""
    from carto_assets.core.network.recorder import Batch

    _, _, batches, _ = _small_setup()
    twins = torch.cat([batches[0].images, batches[0].images, batches[1].images])
    ids = torch.arange(48)
    backwards = [
        Batch(ids[lo : lo + 8], twins[lo : lo + 8], ids[lo : lo + 8] % 4)
        for lo in range(40, -1, -8)
    ]
    runs = {every: _small_pass(batches=backwards, all_positions=every) for every in (False, True)}
    for name in runs[True].top_k:
        np.testing.assert_array_equal(runs[False].top_k[name], runs[True].top_k[name])
    top = runs[True].top_k
    assert (top["image_id"] < 16).any() and (top["y"] >= 0).all()


def test_an_activation_pass_that_fails_to_start_leaves_no_hooks_and_runs_once():
    from carto_assets.core.network.recorder import ActivationPass

    model, layers, batches, preprocess = _small_setup()
    settings = {"k": 5, "n_classes": 4, "mass_fraction": 0.03, "preprocess": preprocess}
    failing = ActivationPass(model, layers, device="meta", precision="bf16", **settings)
    with pytest.raises(RuntimeError):
        failing.over([])
    assert not any(m._forward_hooks for m in model.modules())
    assert not torch.is_inference_mode_enabled()
    run = ActivationPass(model, layers, **settings)
    run.over(batches)
    with pytest.raises(RuntimeError, match="runs once"):
        run.over(batches)
    assert run.done == 48


def test_channels_last_and_bf16_match_fp32():
    ref = _small_pass()
    cl = _small_pass(channels_last=True)
    np.testing.assert_allclose(
        cl.top_k["activation"], ref.top_k["activation"], rtol=1e-4, atol=1e-5
    )
    assert (cl.top_k["image_id"] == ref.top_k["image_id"]).mean() > 0.99
    bf = _small_pass(precision="bf16")
    # bf16 keeps 8 bits of mantissa: values agree to ~1%, rankings up to near-ties.
    np.testing.assert_allclose(
        bf.top_k["activation"], ref.top_k["activation"], rtol=0.05, atol=0.05
    )
    assert (bf.top_k["image_id"] == ref.top_k["image_id"]).mean() > 0.6
    with pytest.raises(ValueError, match="precision must be one of"):
        _small_pass(precision="fp8")


def test_non_finite_activations_are_refused_with_the_layer_named():
    from carto_assets.core.network.recorder import Batch, activation_pass

    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.conv(x) / 0.0

    model = Bad()
    layers = resolve_layers(probe_layers(model, 8), ["conv"], "x")
    # Division happens after the hooked conv; make the conv itself produce inf.
    with torch.no_grad():
        model.conv.weight.fill_(float("inf"))
    batch = Batch(torch.arange(2), torch.ones(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(FloatingPointError, match=r"layer\(s\) \['conv'\]"):
        activation_pass(model, layers, [batch], k=1, n_classes=1, mass_fraction=0.03)


@pytest.mark.parametrize(
    "wanted",
    [
        np.array([47, 3, 16, 15, 30, 99]),  # any order; 99 is never streamed
        np.arange(48),  # every image: whole batches are kept
    ],
)
def test_sampled_maxima_are_each_units_spatial_max_from_a_plain_forward_pass(wanted):
    """The kept rows equal a plain forward pass's per-image, per-channel maxima (hooks on
    the layers, amax over space), in neuron order; ids outside the stream are ignored."""
    from carto_assets.core.network.zoo import BuiltinCNN

    result = _small_pass(sample_ids=wanted)
    kept = result.unit_maxima
    assert kept["image_id"].tolist() == sorted(set(wanted.tolist()) & set(range(48)))
    assert kept["maxima"].dtype == np.float32

    torch.manual_seed(0)
    model = BuiltinCNN(4).eval()
    layers = resolve_layers(probe_layers(model, 32), "auto", "builtin")
    gen = torch.Generator().manual_seed(1)
    raw = torch.randint(0, 256, (48, 32, 32, 3), dtype=torch.uint8, generator=gen)
    x = (raw[kept["image_id"]].permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25
    outputs: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[info.name].register_forward_hook(
            lambda _m, _i, out, name=info.name: outputs.__setitem__(name, out.clone())
        )
        for info in layers
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    reference = torch.cat([outputs[i.name].amax(dim=(2, 3)) for i in layers], dim=1).numpy()
    assert kept["maxima"].shape == reference.shape
    np.testing.assert_allclose(kept["maxima"], reference, rtol=1e-5, atol=1e-6)
    # Keeping the sample changes nothing else the pass returns.
    plain = _small_pass()
    assert plain.unit_maxima is None
    for name in plain.top_k:
        np.testing.assert_array_equal(plain.top_k[name], result.top_k[name])


def test_predictions_keep_each_images_top_output_and_its_labels_logit():
    from carto_assets.core.network.recorder import Predictions

    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.5, 3.0]])
    labels, ids = torch.tensor([2, 0]), torch.tensor([7, 9])
    kept = Predictions(n_classes=3)
    kept.update(logits, labels, ids)
    kept.update(torch.zeros(2, 3, 4, 4), labels, ids)  # not logits: nothing recorded
    got = kept.result()
    assert got is not None
    assert got["image_id"].tolist() == [7, 9] and got["predicted"].tolist() == [1, 0]
    assert got["logit"].tolist() == [2.0, 3.0] and got["label_logit"].tolist() == [-1.0, 3.0]
    # A head that is not the study's classes: the label's logit is unknown.
    other = Predictions(n_classes=2)
    other.update(logits, torch.tensor([1, 1]), ids)
    assert np.isnan(other.result()["label_logit"]).all()
    assert Predictions(n_classes=3).result() is None
