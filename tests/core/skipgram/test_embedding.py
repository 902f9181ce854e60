"""Skip-gram trainer, cosine neighbours and the 2-D projection."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from carto_assets.core.projection.neighbors import nearest_neighbors
from carto_assets.core.projection.umap2d import Projection, project_2d
from carto_assets.core.skipgram.trainer import (
    SkipGram,
    _alias_table,
    _sample_alias,
    skipgram_batch_gradients,
    train_skipgram_sentences,
)


def planted_top_images(n_groups=10, group_size=30, top_k=10, pool=40, p_noise=0.2, seed=0):
    rng = np.random.default_rng(seed)
    group = rng.permutation(np.repeat(np.arange(n_groups), group_size))
    group = np.r_[group, -1, -1]  # two neurons with private images only
    neuron_ids, image_ids = [], []
    for neuron, g in enumerate(group):
        if g < 0:
            images = 1_000_000 + neuron * top_k + np.arange(top_k)
        else:
            n_noise = rng.binomial(top_k, p_noise)
            images = np.r_[
                g * pool + rng.choice(pool, top_k - n_noise, replace=False),
                10_000 + rng.choice(200, n_noise, replace=False),
            ]
        neuron_ids.append(np.full(top_k, neuron))
        image_ids.append(images)
    return np.concatenate(neuron_ids), np.concatenate(image_ids), group


@pytest.fixture(scope="module")
def planted():
    neuron_ids, image_ids, group = planted_top_images()
    return (
        neuron_ids,
        image_ids,
        group,
        train_skipgram_sentences(neuron_ids, image_ids, group.size, seed=0),
    )


def neighbour_precision(vectors, group, k=10):
    idx, _ = nearest_neighbors(vectors, k)
    return float((group[idx] == group[:, None]).mean())


# --- gradients -------------------------------------------------------------------------


def autograd_loss(w_in, w_out, centres, contexts, negatives):
    """The documented loss written directly, per example, for autograd."""
    per_group = centres.numel() // negatives.shape[0]
    neg = negatives.repeat_interleave(per_group, dim=0)
    v = w_in[centres]
    keep = (neg != contexts[:, None]).to(w_in.dtype)
    positive = F.logsigmoid((v * w_out[contexts]).sum(1))
    negative = F.logsigmoid(-(w_out[neg] * v[:, None, :]).sum(2)) * keep
    return -(positive.sum() + negative.sum())


@pytest.mark.parametrize("n_groups", [12, 4, 1])
def test_gradients_match_autograd(n_groups):
    gen = torch.Generator().manual_seed(n_groups)
    n, dim, batch = 6, 5, 12
    w_in = torch.randn(n, dim, dtype=torch.float64, generator=gen, requires_grad=True)
    w_out = torch.randn(n, dim, dtype=torch.float64, generator=gen, requires_grad=True)
    centres = torch.randint(0, n, (batch,), generator=gen)
    contexts = torch.randint(0, n, (batch,), generator=gen)
    negatives = torch.randint(0, n, (n_groups, 3), generator=gen)
    negatives[0, 0] = contexts[0]  # exercise the skipped negative == context case

    grads = skipgram_batch_gradients(w_in.detach(), w_out.detach(), centres, contexts, negatives)
    loss = autograd_loss(w_in, w_out, centres, contexts, negatives)
    loss.backward()

    dense_in = torch.zeros_like(w_in).index_add_(0, centres, grads.grad_centres)
    dense_out = (
        torch.zeros_like(w_out)
        .index_add_(0, contexts, grads.grad_contexts)
        .index_add_(0, negatives.reshape(-1), grads.grad_negatives.reshape(-1, dim))
    )
    torch.testing.assert_close(grads.loss, loss.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dense_in, w_in.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dense_out, w_out.grad, rtol=1e-10, atol=1e-12)


def test_gradients_reject_uneven_groups():
    w = torch.zeros(4, 2)
    idx = torch.zeros(5, dtype=torch.int64)
    with pytest.raises(ValueError, match="multiple of the number of negative groups 2"):
        skipgram_batch_gradients(w, w, idx, idx, torch.zeros(2, 3, dtype=torch.int64))


def test_alias_sampler_matches_weights_and_skips_zeros():
    weights = np.array([0.0, 1.0, 3.0, 0.0, 6.0, 0.5])
    prob, alias = (torch.from_numpy(x) for x in _alias_table(weights))
    draws = _sample_alias(prob, alias, (200_000,), torch.Generator().manual_seed(0))
    freq = np.bincount(draws.numpy(), minlength=weights.size) / draws.numel()
    np.testing.assert_allclose(freq, weights / weights.sum(), atol=0.005)
    assert freq[0] == 0 and freq[3] == 0


# --- training ----------------------------------------------------------------------------


def test_planted_groups_are_recovered_and_isolated_flagged(planted):
    _, _, group, result = planted
    assert result.vectors.shape == (group.size, 30) and result.vectors.dtype == np.float32
    assert result.isolated.tolist() == (group < 0).tolist()
    grouped = group >= 0
    assert neighbour_precision(result.vectors[grouped], group[grouped]) >= 0.9
    assert len(result.epoch_losses) == 10
    assert result.epoch_losses[-1] < result.epoch_losses[0]


def test_same_seed_is_bit_identical_and_seed_matters(planted):
    neuron_ids, image_ids, group, result = planted
    again = train_skipgram_sentences(neuron_ids, image_ids, group.size, seed=0)
    np.testing.assert_array_equal(again.vectors, result.vectors)
    assert again.epoch_losses == result.epoch_losses
    other = train_skipgram_sentences(neuron_ids, image_ids, group.size, SkipGram(epochs=1), seed=1)
    assert not np.array_equal(other.vectors, result.vectors)


def test_isolated_neurons_get_finite_small_vectors(planted):
    _, _, _, result = planted
    assert np.isfinite(result.vectors).all()
    norms = np.linalg.norm(result.vectors, axis=1)
    assert np.all(norms[result.isolated] > 0)
    assert norms[result.isolated].max() < np.median(norms[~result.isolated])


def test_no_sentences_at_all_and_progress_callback():
    # Every image is one neuron's alone: no sentence of two.
    result = train_skipgram_sentences(np.array([0, 1]), np.array([0, 1]), 4, SkipGram(dim=3))
    assert result.vectors.shape == (4, 3) and np.isfinite(result.vectors).all()
    assert result.isolated.all() and result.epoch_losses == []

    calls = []
    before = torch.get_num_threads()
    out = train_skipgram_sentences(
        np.array([0, 1, 1, 2, 0]),
        np.array([7, 7, 8, 8, 8]),
        5,
        SkipGram(epochs=3, batch_size=3),
        negative_group_size=2,
        progress=lambda epoch, loss: calls.append((epoch, loss)),
    )
    assert [epoch for epoch, _ in calls] == [1, 2, 3]
    assert [loss for _, loss in calls] == out.epoch_losses
    np.testing.assert_array_equal(out.isolated, [False, False, False, True, True])
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 0}, "dim must be an integer >= 1, got 0"),
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"learning_rate": 0.0}, "learning_rate must be a finite number > 0, got 0.0"),
        ({"learning_rate": float("nan")}, "learning_rate must be a finite number > 0"),
        ({"negatives": 0}, "negatives must be an integer >= 1"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"negative_group_size": 0}, "negative_group_size must be an integer >= 1"),
        ({"num_threads": 0}, "num_threads must be an integer >= 1, got 0"),
        ({"window": 0}, "window must be an integer >= 1, got 0"),
        ({"n_neurons": -1}, "n_neurons must be an integer >= 0, got -1"),
        ({"n_neurons": 2}, "neuron_ids must be < n_neurons=2, got 2"),
    ],
)
def test_train_rejects_bad_arguments(kwargs, message):
    args = {"neuron_ids": np.array([0, 1, 2]), "image_ids": np.array([5, 5, 5]), "n_neurons": 3}
    settings = {k: kwargs.pop(k) for k in list(kwargs) if k in SkipGram.__dataclass_fields__}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        train_skipgram_sentences(**args, settings=SkipGram(**settings))


# --- nearest neighbours ---------------------------------------------------------------------


def brute_force_neighbors(vectors, k):
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-300)
    sims = unit @ unit.T
    n = len(vectors)
    sims = sims.astype(np.float32)  # ranking resolution documented by nearest_neighbors
    idx = np.empty((n, min(k, n - 1)), dtype=np.int64)
    for i in range(n):
        order = sorted((j for j in range(n) if j != i), key=lambda j: (-sims[i, j], j))
        idx[i] = order[: idx.shape[1]]
    return idx, np.take_along_axis(sims, idx, 1)


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 1000])
def test_nearest_neighbors_match_brute_force(chunk_size):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(60, 8))
    vectors[10] = vectors[3]  # ties are broken by the smaller index
    vectors[20] = vectors[3]
    vectors[30] = 2.5 * vectors[3]
    idx, sim = nearest_neighbors(vectors, 10, chunk_size=chunk_size)
    want_idx, want_sim = brute_force_neighbors(vectors, 10)
    assert idx.dtype == np.int64 and sim.dtype == np.float32
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(sim, want_sim, atol=1e-6)
    assert list(idx[3, :3]) == [10, 20, 30]


def test_nearest_neighbors_small_n_and_zero_rows():
    idx, sim = nearest_neighbors(np.eye(3), k=10)
    assert idx.shape == (3, 2) and sim.shape == (3, 2)
    np.testing.assert_array_equal(idx, [[1, 2], [0, 2], [0, 1]])  # all ties at 0
    assert nearest_neighbors(np.ones((1, 4)), k=5)[0].shape == (1, 0)
    vectors = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.1]])
    idx, sim = nearest_neighbors(vectors, k=2)
    np.testing.assert_array_equal(idx[0], [1, 2])
    np.testing.assert_allclose(sim[0], [0.0, 0.0])
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        nearest_neighbors(vectors, k=0)
    with pytest.raises(ValueError, match="vectors must be finite"):
        nearest_neighbors(np.array([[0.0, np.nan]]), k=1)


# --- projection ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_projection_of_tiny_inputs_skips_umap(n):
    layout = project_2d(np.random.default_rng(n).normal(size=(n, 30)))
    assert layout.shape == (n, 2) and layout.dtype == np.float32
    assert np.isfinite(layout).all()
    if n == 2:
        assert not np.allclose(layout[0], layout[1])


def test_projection_with_umap_covers_every_neuron(planted):
    # The only two UMAP runs of the suite: 5 neurons (n_neighbors clamped) and a
    # trained embedding whose isolated neurons must still get finite positions.
    tiny = project_2d(np.random.default_rng(0).normal(size=(5, 30)), seed=0)
    assert tiny.shape == (5, 2) and np.isfinite(tiny).all()
    _, _, group, result = planted
    layout = project_2d(result.vectors, Projection(n_neighbors=15), seed=0)
    assert layout.shape == (group.size, 2) and layout.dtype == np.float32
    assert np.isfinite(layout).all()
    # Planted groups stay together in 2-D: most 2-D neighbours share the group.
    points, labels = layout[group >= 0], group[group >= 0]
    dist = ((points[:, None] - points[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    idx = np.argsort(dist, axis=1)[:, :5]
    assert (labels[idx] == labels[:, None]).mean() >= 0.8


@pytest.mark.parametrize(
    ("vectors", "kwargs", "message"),
    [
        (np.array([[0.0, np.inf], [1.0, 0.0]]), {}, "vectors must be finite; 1 row"),
        (np.zeros(3), {}, "vectors must be 2-D"),
        (np.zeros((5, 2)), {"n_neighbors": 1}, "n_neighbors must be an integer >= 2, got 1"),
        (np.zeros((5, 2)), {"min_dist": -0.5}, r"min_dist must be a number in \[0, 1\]"),
    ],
)
def test_projection_rejects_bad_input(vectors, kwargs, message):
    with pytest.raises(ValueError, match=message):
        project_2d(vectors, Projection(**kwargs))
