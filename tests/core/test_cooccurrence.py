"""Neuron co-occurrence counts against a set-based brute force."""

import numpy as np
import pytest
from reference.cooccurrence import cooccurrence_counts_bruteforce

from carto_assets.core.cooccurrence import cooccurrence_counts, shared_image_counts


def random_top_images(seed: int, n_neurons: int, n_images: int, top_k: int):
    rng = np.random.default_rng(seed)
    neuron_ids = np.repeat(np.arange(n_neurons), top_k)
    image_ids = np.concatenate(
        [rng.choice(n_images, top_k, replace=False) for _ in range(n_neurons)]
    )
    order = rng.permutation(neuron_ids.size)
    return neuron_ids[order], image_ids[order]


def assert_same(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.int64
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize(
    ("seed", "n_neurons", "n_images", "top_k"),
    [(0, 40, 60, 5), (1, 80, 400, 10), (2, 25, 10, 3), (3, 120, 3000, 8)],
)
def test_matches_bruteforce_on_random_data(seed, n_neurons, n_images, top_k):
    neuron_ids, image_ids = random_top_images(seed, n_neurons, n_images, top_k)
    got = cooccurrence_counts(neuron_ids, image_ids)
    assert_same(got, cooccurrence_counts_bruteforce(neuron_ids, image_ids))
    a, b, count = got
    assert np.all(a < b) and np.all(count >= 1)
    assert np.all(np.diff(a * n_neurons + b) > 0), "sorted by (neuron_a, neuron_b), unique"


def test_sparse_large_ids_and_duplicate_rows():
    neuron_ids = np.array([7, 7, 3, 3, 3, 10**12, 10**12, 5, 7], dtype=np.int64)
    image_ids = np.array([2**40, 9, 2**40, 9, 9, 2**40, 1, 1, 2**40], dtype=np.int64)
    a, b, count = cooccurrence_counts(neuron_ids, image_ids)
    # 3 & 7 share 2**40 and 9 (duplicates count once); 5 & 10**12 share image 1.
    expected = [(3, 7, 2), (3, 10**12, 1), (5, 10**12, 1), (7, 10**12, 1)]
    assert list(zip(a.tolist(), b.tolist(), count.tolist(), strict=True)) == expected
    assert_same((a, b, count), cooccurrence_counts_bruteforce(neuron_ids, image_ids))


def test_no_sharing_and_empty_input():
    for neuron_ids, image_ids in [
        (np.arange(5), np.arange(5)),
        (np.array([], dtype=np.int64), np.array([], dtype=np.int64)),
        (np.array([4, 4]), np.array([1, 2])),
    ]:
        got = cooccurrence_counts(neuron_ids, image_ids)
        assert all(arr.size == 0 and arr.dtype == np.int64 for arr in got)


def test_scales_with_pairs_not_neurons_squared():
    # 300k neurons would need 45e9 pair slots densely; only 3 pairs co-occur.
    n = 300_000
    neuron_ids = np.arange(n)
    image_ids = np.arange(n) + 1_000
    neuron_ids = np.concatenate([neuron_ids, [0, 1, 2]])
    image_ids = np.concatenate([image_ids, [5, 5, 5]])
    a, b, count = cooccurrence_counts(neuron_ids, image_ids)
    assert list(zip(a.tolist(), b.tolist(), count.tolist(), strict=True)) == [
        (0, 1, 1),
        (0, 2, 1),
        (1, 2, 1),
    ]


@pytest.mark.parametrize(
    ("neuron_ids", "image_ids", "message"),
    [
        (np.array([0, 1]), np.array([0]), "same length"),
        (np.array([0, -1]), np.array([0, 1]), "neuron_ids must be non-negative"),
        (np.array([0, 1]), np.array([0, -3]), "image_ids must be non-negative"),
        (np.array([0.0, 1.0]), np.array([0, 1]), "integer dtype"),
        (np.zeros((2, 2), dtype=int), np.zeros((2, 2), dtype=int), "1-D"),
    ],
)
def test_rejects_bad_input(neuron_ids, image_ids, message):
    with pytest.raises(ValueError, match=message):
        cooccurrence_counts(neuron_ids, image_ids)


@pytest.mark.parametrize("seed", [0, 1])
def test_shared_image_counts_match_sets(seed):
    neuron_ids, image_ids = random_top_images(seed, 50, 150, 6)
    neuron_ids = np.concatenate([neuron_ids, [3, 3]])  # duplicate row counts once
    image_ids = np.concatenate([image_ids, image_ids[neuron_ids[:-2] == 3][:1].repeat(2)])
    holders: dict[int, set[int]] = {}
    for neuron, image in zip(neuron_ids.tolist(), image_ids.tolist(), strict=True):
        holders.setdefault(image, set()).add(neuron)
    want = np.zeros(55, dtype=np.int64)
    for neurons in holders.values():
        if len(neurons) > 1:
            for neuron in neurons:
                want[neuron] += 1
    got = shared_image_counts(neuron_ids, image_ids, 55)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    a, b, _ = cooccurrence_counts(neuron_ids, image_ids)
    np.testing.assert_array_equal(got > 0, np.isin(np.arange(55), np.r_[a, b]))


def test_shared_image_counts_rejects_bad_input():
    with pytest.raises(ValueError, match="neuron_ids must be < n_neurons=2, got 2"):
        shared_image_counts(np.array([0, 2]), np.array([1, 1]), 2)
    with pytest.raises(ValueError, match="n_neurons must be an integer >= 0, got -1"):
        shared_image_counts(np.array([0]), np.array([1]), -1)
    assert shared_image_counts(np.array([], dtype=int), np.array([], dtype=int), 3).tolist() == [
        0,
        0,
        0,
    ]
