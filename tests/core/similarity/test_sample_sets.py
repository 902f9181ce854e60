"""Sets measured on a sample (``clustering.sets: sample``): each unit's top share of a matrix of
activations, against a written-out reference, and the size rule."""

import numpy as np
import pytest
from reference.clustering import top_sets_reference

from carto_assets.core.similarity.sets import sample_set_size, top_sets_of_matrix


def _rows(sets) -> list[list[int]]:
    return [sets.indices[a:b].tolist() for a, b in zip(sets.indptr[:-1], sets.indptr[1:])]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 3, 7, 40])
def test_top_sets_match_the_reference_with_ties_and_dead_units(seed, k):
    rng = np.random.default_rng(seed)
    n_images, n_units = 40, 13
    # Few distinct values: many ties, broken by the smaller image id as top_images does.
    maxima = rng.integers(0, 4, size=(n_images, n_units)).astype(np.float32)
    maxima[:, 0] = 0.0  # a dead unit: its top-k is the tie-break alone
    maxima[:3, 1] = 9.0  # a unit whose top 3 are equal but not its whole top-k when k > 3
    image_ids = rng.permutation(1000)[:n_images]  # unsorted, not contiguous
    sets = top_sets_of_matrix(
        maxima,
        image_ids,
        k,
        neuron_ids=np.arange(100, 100 + n_units),
        layers=np.repeat([0, 1], [6, 7]),
        block_units=5,  # several blocks
    )
    assert _rows(sets) == top_sets_reference(maxima, image_ids.tolist(), k)
    assert sets.neuron_ids.tolist() == list(range(100, 100 + n_units))
    assert sets.layers.tolist() == [0] * 6 + [1] * 7
    assert np.diff(sets.indptr)[0] == 0


def test_on_every_image_the_sets_are_the_top_k():
    rng = np.random.default_rng(7)
    maxima = rng.random((200, 9)).astype(np.float32)
    sets = top_sets_of_matrix(
        maxima, np.arange(200), 10, neuron_ids=np.arange(9), layers=np.zeros(9)
    )
    for unit, row in enumerate(_rows(sets)):
        assert row == sorted(np.argsort(-maxima[:, unit])[:10].tolist())


def test_set_size_is_a_share_of_the_sample_at_least_top_k():
    assert sample_set_size(50, 0.0125, 4000) == 50  # the demo: its top 50 of 4,000
    assert sample_set_size(50, 0.0125, 20_000) == 250  # any study past the sample's size
    assert sample_set_size(8, 0.0125, 240) == 8  # a small study keeps top_k
    assert sample_set_size(50, 0.0125, 30) == 30  # never more than the sample
    assert sample_set_size(1, 0.5, 3) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((50, 0.0, 100), "fraction must be in (0, 1], got 0.0"),
        ((0, 0.1, 100), "top_k must be at least 1, got 0"),
        ((5, 0.1, 0), "n_sample must be at least 1, got 0"),
    ],
)
def test_set_size_refuses_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sample_set_size(*args)


def test_bad_matrices_are_named():
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\]"):
        top_sets_of_matrix(np.zeros((4, 2)), np.arange(4), 5, neuron_ids=[0, 1], layers=[0, 0])
    with pytest.raises(ValueError, match="maxima must be"):
        top_sets_of_matrix(np.zeros((4, 2)), np.arange(3), 1, neuron_ids=[0, 1], layers=[0, 0])
    with pytest.raises(ValueError, match="image_ids must be unique"):
        top_sets_of_matrix(np.zeros((2, 2)), [1, 1], 1, neuron_ids=[0, 1], layers=[0, 0])
