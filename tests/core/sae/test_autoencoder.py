"""Reservoir sampling (fixed memory, uniform) and the top-k sparse autoencoder (recovers a
planted sparse dictionary)."""

from __future__ import annotations

import numpy as np
import pytest

from carto_assets.core.sae.autoencoder import ReservoirSampler, encode, train_sae


def _stream(sampler: ReservoirSampler, n: int, batch: int) -> None:
    ids = np.arange(n, dtype=np.float32)
    for lo in range(0, n, batch):
        sampler.offer(ids[lo : lo + batch, None])


def test_reservoir_memory_is_fixed():
    sampler = ReservoirSampler(dim=8, capacity=50, seed=0)
    before = sampler.nbytes
    rng = np.random.default_rng(0)
    for n in (10, 30, 200, 5000):
        sampler.offer(rng.normal(size=(n, 8)))
        assert sampler.nbytes == before == 50 * 8 * 4
    assert sampler.seen == 5240 and sampler.sample().shape == (50, 8)
    small = ReservoirSampler(dim=8, capacity=50)
    small.offer(rng.normal(size=(20, 8)))
    assert small.sample().shape == (20, 8)  # fewer rows than capacity: all of them


def test_reservoir_is_uniform_whatever_the_batches():
    n, capacity, runs = 600, 60, 400
    counts = np.zeros(n)
    for seed in range(runs):
        sampler = ReservoirSampler(dim=1, capacity=capacity, seed=seed)
        _stream(sampler, n, batch=(7, 64, 600)[seed % 3])
        kept = sampler.sample()[:, 0].astype(int)
        assert len(set(kept.tolist())) == capacity  # no row twice
        counts[kept] += 1
    freq = counts / runs
    expected = capacity / n
    sigma = np.sqrt(expected * (1 - expected) / runs)
    assert np.abs(freq - expected).max() < 5 * sigma
    # Early, middle and late rows are kept equally often.
    thirds = freq.reshape(3, -1).mean(axis=1)
    assert np.abs(thirds - expected).max() < 0.01


def test_reservoir_rejects_bad_rows():
    sampler = ReservoirSampler(dim=3, capacity=4)
    with pytest.raises(ValueError, match="rows of length 3"):
        sampler.offer(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="capacity"):
        ReservoirSampler(dim=3, capacity=0)


def _planted(n: int, d: int, m: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(m, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((n, m))
    for row in codes:
        row[rng.choice(m, size=k, replace=False)] = rng.uniform(0.5, 2.0, size=k)
    x = codes @ atoms + 0.01 * rng.normal(size=(n, d))
    return x.astype(np.float32), atoms


def test_sae_recovers_a_planted_dictionary():
    x, atoms = _planted(n=4000, d=24, m=48, k=3, seed=1)
    sae, report = train_sae(
        x, n_features=96, k=3, epochs=30, batch_size=512, learning_rate=1e-2, seed=0
    )
    learned = sae.W_dec / np.linalg.norm(sae.W_dec, axis=0, keepdims=True)
    best = (atoms @ learned).max(axis=1)  # each planted atom's closest feature
    assert (best > 0.9).mean() >= 0.9, np.sort(best)[:10]
    assert report.fvu < 0.1
    assert report.l0 <= 3
    assert len(report.losses) == 30 and report.losses[-1] < report.losses[0]
    z = encode(sae, x[:5])
    assert z.shape == (5, 96) and int((z > 0).sum(dim=1).max()) <= 3 and float(z.min()) >= 0


def test_sae_is_seeded_and_validates():
    x, _ = _planted(n=600, d=8, m=8, k=2, seed=2)
    a, _ = train_sae(x, n_features=16, k=2, epochs=2, seed=5)
    b, _ = train_sae(x, n_features=16, k=2, epochs=2, seed=5)
    np.testing.assert_array_equal(a.W_dec, b.W_dec)
    with pytest.raises(ValueError, match=r"k must be in 1\.\.n_features=16"):
        train_sae(x, n_features=16, k=17)
    with pytest.raises(ValueError, match="non-empty"):
        train_sae(np.zeros((0, 8)), n_features=16, k=2)
