"""Skip-gram trainer, cosine neighbours and the 2-D projection."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from carto_assets.core.cooccurrence import cooccurrence_counts
from carto_assets.core.projection.neighbors import nearest_neighbors
from carto_assets.core.projection.umap2d import project_2d
from carto_assets.core.skipgram.trainer import (
    _alias_table,
    _sample_alias,
    skipgram_batch_gradients,
    train_skipgram,
)


def planted_pairs(n_groups=10, group_size=30, top_k=10, pool=40, p_noise=0.2, n_isolated=6, seed=0):
    """Co-occurrences of neurons whose top images come mostly from their group's pool.

    The last ``n_isolated`` neurons get private images only, so they co-occur with nobody.
    """
    rng = np.random.default_rng(seed)
    n_grouped = n_groups * group_size
    group = np.concatenate([np.repeat(np.arange(n_groups), group_size), -np.ones(n_isolated, int)])
    group = group[np.r_[rng.permutation(n_grouped), np.arange(n_grouped, group.size)]]
    neuron_ids, image_ids = [], []
    noise_images = 10_000 + np.arange(200)
    for neuron, g in enumerate(group):
        if g < 0:
            images = 1_000_000 + neuron * top_k + np.arange(top_k)
        else:
            n_noise = rng.binomial(top_k, p_noise)
            images = np.concatenate(
                [
                    g * pool + rng.choice(pool, top_k - n_noise, replace=False),
                    rng.choice(noise_images, n_noise, replace=False),
                ]
            )
        neuron_ids.append(np.full(top_k, neuron))
        image_ids.append(images)
    a, b, count = cooccurrence_counts(np.concatenate(neuron_ids), np.concatenate(image_ids))
    return a, b, count, group


@pytest.fixture(scope="module")
def planted():
    a, b, count, group = planted_pairs()
    return a, b, count, group, train_skipgram(a, b, count, group.size, seed=0)


def test_planted_groups_with_word2vec_negative_counts():
    a, b, count, group = planted_pairs(seed=1)
    weights = np.bincount(np.r_[a, b], minlength=group.size) ** 0.5  # any frequencies
    weights[-1] = 0.0  # isolated and weightless
    result = train_skipgram(a, b, count, group.size, negative_counts=weights, seed=0)
    grouped = group >= 0
    assert neighbour_precision(result.vectors[grouped], group[grouped]) >= 0.9


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


def test_planted_groups_are_recovered(planted):
    _, _, _, group, result = planted
    grouped = group >= 0
    assert result.vectors.shape == (group.size, 30) and result.vectors.dtype == np.float32
    assert neighbour_precision(result.vectors[grouped], group[grouped]) >= 0.9
    assert len(result.epoch_losses) == 10
    assert result.epoch_losses[-1] < result.epoch_losses[0]


def test_same_seed_is_bit_identical_and_seed_matters(planted):
    a, b, count, group, result = planted
    again = train_skipgram(a, b, count, group.size, seed=0)
    np.testing.assert_array_equal(again.vectors, result.vectors)
    assert again.epoch_losses == result.epoch_losses
    other = train_skipgram(a, b, count, group.size, seed=1, epochs=1)
    assert not np.array_equal(other.vectors, result.vectors)


def test_isolated_neurons_get_finite_flagged_vectors(planted):
    _, _, _, group, result = planted
    np.testing.assert_array_equal(result.isolated, group < 0)
    assert np.isfinite(result.vectors).all()
    norms = np.linalg.norm(result.vectors, axis=1)
    assert np.all(norms[result.isolated] > 0)
    assert norms[result.isolated].max() < np.median(norms[~result.isolated])


def test_no_pairs_at_all_and_progress_callback():
    empty = np.array([], dtype=np.int64)
    result = train_skipgram(empty, empty, empty, 4, dim=3)
    assert result.vectors.shape == (4, 3) and np.isfinite(result.vectors).all()
    assert result.isolated.all() and result.epoch_losses == []

    calls = []
    before = torch.get_num_threads()
    out = train_skipgram(
        np.array([0, 1]),
        np.array([1, 2]),
        np.array([3, 1]),
        5,
        epochs=3,
        batch_size=3,
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
        ({"neuron_b": np.array([1])}, "equal lengths"),
        ({"neuron_a": np.array([-1, 0])}, "neuron_a must be non-negative, got -1"),
        ({"neuron_b": np.array([1, 3])}, "neuron_b must be < n_neurons=3, got 3"),
        ({"count": np.array([1, 0])}, "count must be >= 1, got 0"),
        ({"neuron_b": np.array([0, 2])}, "neuron 0 paired with itself"),
        ({"count": np.array([1.0, 2.0])}, "count must have an integer dtype"),
        ({"n_neurons": -1}, "n_neurons must be an integer >= 0, got -1"),
        (
            {"negative_counts": np.ones(2)},
            r"negative_counts must have shape \(n_neurons,\) = \(3,\)",
        ),
        (
            {"negative_counts": np.array([1.0, -1.0, 1.0])},
            "negative_counts must be finite and >= 0",
        ),
        ({"negative_counts": np.zeros(3)}, "positive for at least one co-occurring neuron"),
    ],
)
def test_train_rejects_bad_arguments(kwargs, message):
    args = {
        "neuron_a": np.array([0, 1]),
        "neuron_b": np.array([1, 2]),
        "count": np.array([1, 2]),
        "n_neurons": 3,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        train_skipgram(**args)


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
    _, _, _, group, result = planted
    layout = project_2d(result.vectors, n_neighbors=15, seed=0)
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
        project_2d(vectors, **kwargs)
