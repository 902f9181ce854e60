"""Sentences and word2vec's dynamic window: the examples of the sentence skip-gram trainer.

One "sentence" per image: the neurons having the image among their top-k. Each epoch shuffles
every sentence and pairs each token with the tokens within a randomly reduced window, as
word2vec does (:func:`window_examples`); :func:`expected_window_weight` is how often a pair is
trained on average. :func:`carto_assets.core.skipgram.trainer.train_skipgram_sentences`
trains on them.

Pure numpy; no orchestration imports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carto_assets.core.validate import check_int

__all__ = ["Sentences", "expected_window_weight", "image_sentences", "window_examples"]


@dataclass(frozen=True)
class Sentences:
    """One "sentence" per image shared by >= 2 neurons: the neurons having it in their top-k.

    Attributes
    ----------
    neurons : np.ndarray
        int64 (T,): the tokens, grouped by sentence (in image id order, neuron ids
        ascending inside a sentence; the trainer shuffles them every epoch).
    sentence : np.ndarray
        int64 (T,): the sentence index of each token, non-decreasing.
    lengths : np.ndarray
        int64 (S,): tokens per sentence, all >= 2.
    """

    neurons: np.ndarray
    sentence: np.ndarray
    lengths: np.ndarray


def image_sentences(neuron_ids: np.ndarray, image_ids: np.ndarray) -> Sentences:
    """Group top-k rows ``(neuron_ids[i], image_ids[i])`` into one sentence per image.

    Images held by a single neuron form no pair and are dropped; repeated rows count once.
    """
    neuron_ids = np.asarray(neuron_ids, dtype=np.int64).ravel()
    image_ids = np.asarray(image_ids, dtype=np.int64).ravel()
    if neuron_ids.shape != image_ids.shape:
        raise ValueError(
            f"neuron_ids and image_ids must have equal lengths, got {neuron_ids.size} and "
            f"{image_ids.size}"
        )
    if neuron_ids.size == 0:
        empty = np.empty(0, np.int64)
        return Sentences(empty, empty, empty)
    if neuron_ids.min() < 0 or image_ids.min() < 0:
        raise ValueError("neuron_ids and image_ids must be non-negative")
    pairs = np.unique(np.stack([image_ids, neuron_ids], axis=1), axis=0)
    first = np.r_[True, pairs[1:, 0] != pairs[:-1, 0]]
    image_index = np.cumsum(first) - 1
    sizes = np.bincount(image_index)
    keep = sizes[image_index] > 1
    _, sentence = np.unique(image_index[keep], return_inverse=True)
    sentence = sentence.astype(np.int64)
    return Sentences(pairs[keep, 1].copy(), sentence, np.bincount(sentence).astype(np.int64))


def window_examples(
    sentences: Sentences, window: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of word2vec's skip-gram examples with a dynamic window.

    Every sentence is shuffled; each token draws a reduced window ``b`` uniform in
    ``1..window`` and is the centre of one example per token at most ``b``
    positions away in its sentence (word2vec, ``shrink_windows=True``). The work is
    O(tokens x window), linear in the top-k entries, whatever the sentence lengths.

    Parameters
    ----------
    sentences : Sentences
        From :func:`image_sentences`.
    window : int
        Largest distance between centre and context, >= 1.
    rng : np.random.Generator
        Source of the shuffles and reduced windows.

    Returns
    -------
    centres, contexts : np.ndarray
        int64 arrays of equal length, in sentence order (not shuffled across sentences).

    Notes
    -----
    In a sentence of length ``L`` the ordered pair (centre ``a``, context ``b``) is
    trained :func:`expected_window_weight` ``(L, window)`` times per epoch on average.
    """
    check_int("window", window, minimum=1)
    n_tokens = sentences.neurons.size
    if n_tokens == 0:
        empty = np.empty(0, np.int64)
        return empty, empty
    # Shuffle inside sentences: sort by (sentence, random key).
    order = np.lexsort((rng.random(n_tokens), sentences.sentence))
    tokens = sentences.neurons[order]
    sentence = sentences.sentence  # unchanged by the in-sentence shuffle
    starts = np.concatenate([[0], np.cumsum(sentences.lengths)[:-1]])
    position = np.arange(n_tokens) - starts[sentence]
    remaining = sentences.lengths[sentence] - 1 - position  # tokens after this one
    reduced = rng.integers(1, window + 1, n_tokens)
    centres, contexts = [], []
    for distance in range(1, window + 1):
        left = np.flatnonzero(remaining >= distance)  # pairs (left, left + distance)
        if left.size == 0:
            break
        right = left + distance
        forward = reduced[left] >= distance
        backward = reduced[right] >= distance
        centres += [tokens[left[forward]], tokens[right[backward]]]
        contexts += [tokens[right[forward]], tokens[left[backward]]]
    return np.concatenate(centres), np.concatenate(contexts)


def expected_window_weight(length: int | np.ndarray, window: int) -> np.ndarray:
    """Expected examples per epoch of one ordered pair (centre a, context b) of a sentence.

    With the sentence shuffled, ``a`` and ``b`` are ``d`` apart with probability
    ``2 (L - d) / (L (L - 1))``, and ``a``'s reduced window reaches ``d`` with
    probability ``(window - d + 1) / window``, so the weight is
    ``sum_{d=1}^{min(window, L-1)} 2 (L - d) (window - d + 1) / (L (L - 1) window)``.
    For ``L >> window`` it tends to ``(window + 1) / L``: a pair's weight per shared
    image falls with the number of neurons sharing the image, and every token is the
    centre of about ``window + 1`` examples per epoch. In a sentence of 2 the
    weight is 1, exactly as in the all-pairs trainer.

    Parameters
    ----------
    length : int or np.ndarray
        Sentence length(s) ``L``, >= 2.
    window : int
        The window, >= 1.

    Returns
    -------
    np.ndarray
        float64, the same shape as ``length``.
    """
    check_int("window", window, minimum=1)
    length = np.asarray(length, dtype=np.float64)
    if (length < 2).any():
        raise ValueError("sentence lengths must be >= 2")
    d = np.arange(1, window + 1, dtype=np.float64)
    terms = 2.0 * (length[..., None] - d) * (window - d + 1) / window
    terms = np.where(d <= length[..., None] - 1, terms, 0.0)
    return terms.sum(-1) / (length * (length - 1))
