"""Skip-gram on image sentences with word2vec's dynamic window: sampling and training."""

import itertools
from fractions import Fraction

import numpy as np
import pytest

from carto_assets.core.skipgram.sentences import (
    Sentences,
    expected_window_weight,
    image_sentences,
    window_examples,
)
from carto_assets.core.skipgram.trainer import SkipGram, train_skipgram_sentences


def word2vec_reference(sentence: list[int], reduced: list[int]) -> list[tuple[int, int]]:
    """word2vec's skip-gram loop over one (already shuffled) sentence, written plainly."""
    examples = []
    for i, centre in enumerate(sentence):
        b = reduced[i]
        for j in range(max(0, i - b), min(len(sentence), i + b + 1)):
            if j != i:
                examples.append((centre, sentence[j]))
    return examples


def exact_weight(length: int, window: int) -> Fraction:
    """E[examples of the ordered pair (0, 1)] by enumerating every order and reduced window."""
    total, cases = Fraction(0), 0
    for order in itertools.permutations(range(length)):
        for reduced in itertools.product(range(1, window + 1), repeat=length):
            total += word2vec_reference(list(order), list(reduced)).count((0, 1))
            cases += 1
    return total / cases


@pytest.mark.parametrize("length", [2, 3, 4, 5])
@pytest.mark.parametrize("window", [1, 2, 3])
def test_expected_weight_matches_exhaustive_word2vec(length, window):
    if length == 5 and window == 3:
        pytest.skip("5! x 3^5 cases: covered by the smaller ones")
    assert expected_window_weight(length, window) == pytest.approx(
        float(exact_weight(length, window)), rel=1e-12
    )


def test_expected_weight_limits():
    # A pair alone in its image is trained once per epoch in each direction, as all-pairs does.
    assert expected_window_weight(2, 5) == pytest.approx(1.0)
    # Long sentences: about (window + 1) / L per ordered pair, so (window + 1) per token.
    lengths = np.array([200, 1000])
    assert np.allclose(expected_window_weight(lengths, 5) * lengths, 6.0, rtol=0.03)
    with pytest.raises(ValueError, match="window"):
        expected_window_weight(3, 0)
    with pytest.raises(ValueError, match=">= 2"):
        expected_window_weight(1, 3)


def test_sampled_pair_counts_match_expected_weights_and_reference_loop():
    """Average counts per ordered pair over many epochs: vectorized sampler, plain word2vec
    loop and the formula agree, for sentences of several lengths sharing neurons."""
    neuron_ids = np.array([0, 1, 0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 7, 3, 5, 9])
    image_ids = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 4])  # image 4: alone
    sentences = image_sentences(neuron_ids, image_ids)
    assert sentences.lengths.tolist() == [2, 3, 8, 2]
    window, epochs, n = 3, 4000, 10
    rng = np.random.default_rng(0)
    sampled = np.zeros((n, n))
    for _ in range(epochs):
        centres, contexts = window_examples(sentences, window, rng)
        np.add.at(sampled, (centres, contexts), 1)
    sampled /= epochs

    reference = np.zeros((n, n))
    starts = np.r_[0, np.cumsum(sentences.lengths)[:-1]]
    for _ in range(epochs):
        for start, length in zip(starts, sentences.lengths):
            sentence = rng.permutation(sentences.neurons[start : start + length]).tolist()
            reduced = rng.integers(1, window + 1, length).tolist()
            for c, o in word2vec_reference(sentence, reduced):
                reference[c, o] += 1
    reference /= epochs

    expected = np.zeros((n, n))
    for start, length in zip(starts, sentences.lengths):
        members = sentences.neurons[start : start + length]
        weight = expected_window_weight(int(length), window)
        for a, b in itertools.permutations(members, 2):
            expected[a, b] += weight
    assert expected[9].sum() == 0 and expected[:, 9].sum() == 0  # alone in image 4
    assert expected[0, 1] == pytest.approx(
        1 + expected_window_weight(3, window) + expected_window_weight(8, window)
    )
    # 4,000 epochs: standard errors are below 0.016 for every pair.
    assert np.abs(sampled - expected).max() < 0.06
    assert np.abs(reference - expected).max() < 0.06


def test_window_work_is_linear_in_tokens():
    rng = np.random.default_rng(1)
    for length in [10, 100, 1000]:
        sentences = Sentences(
            np.arange(length), np.zeros(length, np.int64), np.array([length], np.int64)
        )
        centres, _ = window_examples(sentences, 5, rng)
        assert centres.size <= 2 * 5 * length  # never more than 2 * window per token
        # Each token is the centre of about window + 1 examples (fewer near the ends).
        assert centres.size / length == pytest.approx(6.0, rel=0.15 if length > 10 else 0.5)


def test_image_sentences_drop_singletons_and_duplicates():
    s = image_sentences(np.array([3, 1, 1, 2, 5]), np.array([7, 7, 7, 9, 4]))
    assert s.neurons.tolist() == [1, 3]
    assert s.sentence.tolist() == [0, 0]
    assert s.lengths.tolist() == [2]
    with pytest.raises(ValueError, match="equal lengths"):
        image_sentences(np.array([1, 2]), np.array([1]))


def test_sentence_trainer_validates():
    with pytest.raises(ValueError, match="window"):
        train_skipgram_sentences(np.array([0, 1]), np.array([0, 0]), 2, SkipGram(window=0))
    with pytest.raises(ValueError, match="n_neurons"):
        train_skipgram_sentences(np.array([0, 5]), np.array([0, 0]), 2)
    empty = train_skipgram_sentences(np.array([0, 1]), np.array([0, 1]), 3, SkipGram(dim=4))
    assert empty.isolated.all() and empty.epoch_losses == [] and empty.vectors.shape == (3, 4)
