"""Skip-gram with negative sampling on neuron co-occurrences: the concept embedding's trainer.

Neurons that share top-activating images co-occur like words in a sentence (NeuroCartography,
IEEE TVCG 2022). A skip-gram model with negative sampling, trained on the co-occurrences,
places neurons that detect related concepts close together. :func:`train_skipgram_sentences`
trains on one sentence per image with word2vec's dynamic window
(:mod:`carto_assets.core.skipgram.sentences`); its SGD loop (:func:`sgd_epochs`) also drives the
all-pairs trainer that ``benchmarks/embedding.py`` compares it with.
Neighbours are :mod:`carto_assets.core.projection.neighbors`, the 2-D map
:mod:`carto_assets.core.projection.umap2d`.

Pure numpy/torch; no orchestration imports.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from carto_assets.core.skipgram.sentences import image_sentences, window_examples
from carto_assets.core.validate import check_float, check_int

__all__ = [
    "BatchGradients",
    "SkipGramResult",
    "sgd_epochs",
    "skipgram_batch_gradients",
    "train_skipgram_sentences",
]

# word2vec's exponent for the negative-sampling distribution.
UNIGRAM_POWER = 0.75
# word2vec decays the learning rate linearly to this fraction of its start value.
MIN_LR_FRACTION = 1e-4


@dataclass(frozen=True)
class SkipGramResult:
    """Output of :func:`train_skipgram_sentences`.

    Attributes
    ----------
    vectors : np.ndarray
        float32 array (n_neurons, dim): the input ("centre") vectors, the
        embedding used downstream, as in word2vec.
    epoch_losses : list[float]
        Mean negative-sampling loss per positive example, one entry per epoch
        (empty when there are no co-occurrence pairs).
    isolated : np.ndarray
        bool array (n_neurons,): True for neurons without any co-occurrence.
        Their vectors are their untrained random initialisation, so their
        neighbours and map positions carry no meaning.
    """

    vectors: np.ndarray
    epoch_losses: list[float]
    isolated: np.ndarray


class BatchGradients(NamedTuple):
    """Loss and gradients of one skip-gram mini-batch.

    Attributes
    ----------
    loss : torch.Tensor
        Scalar, the summed negative-sampling loss of the batch.
    grad_centres : torch.Tensor
        (B, dim): gradient of ``loss`` w.r.t. ``w_in[centres[i]]`` from example
        ``i``; scatter-adding over ``centres`` gives the dense gradient.
    grad_contexts : torch.Tensor
        (B, dim): gradient w.r.t. ``w_out[contexts[i]]`` from example ``i``.
    grad_negatives : torch.Tensor
        (G, K, dim): gradient w.r.t. ``w_out[negatives[g, k]]``, already summed
        over the examples of group ``g``.
    """

    loss: torch.Tensor
    grad_centres: torch.Tensor
    grad_contexts: torch.Tensor
    grad_negatives: torch.Tensor


def skipgram_batch_gradients(
    w_in: torch.Tensor,
    w_out: torch.Tensor,
    centres: torch.Tensor,
    contexts: torch.Tensor,
    negatives: torch.Tensor,
) -> BatchGradients:
    """Negative-sampling loss and its analytic gradients for one mini-batch.

    The ``B`` examples form ``G`` consecutive groups of ``S = B // G`` examples;
    all examples of group ``g`` use the ``K`` negatives ``negatives[g]``
    (``G == B`` gives every example its own negatives, as in word2vec). For
    example ``i`` in group ``g`` with centre ``c`` and context ``o`` the loss is
    ``-log s(u_o . v_c) - sum_k m_ik log s(-u_{n_gk} . v_c)``, with ``v = w_in``,
    ``u = w_out``, ``s`` the logistic sigmoid and ``m_ik = 0`` when
    ``n_gk == o`` (word2vec skips a negative equal to the true context), else 1.
    Each negative's gradient uses its own score ``u_{n_gk} . v_c``.

    Parameters
    ----------
    w_in, w_out : torch.Tensor
        (n_neurons, dim) float tensors of input and output (context) vectors.
    centres, contexts : torch.Tensor
        (B,) int64 neuron indices.
    negatives : torch.Tensor
        (G, K) int64 neuron indices; ``B`` must be a multiple of ``G``.

    Returns
    -------
    BatchGradients
        Summed loss and gradient rows; see :class:`BatchGradients`.

    Raises
    ------
    ValueError
        If ``negatives`` is not 2-D or ``B`` is not a multiple of its row count.
    """
    if negatives.dim() != 2:
        raise ValueError(f"negatives must be 2-D (groups, K), got shape {tuple(negatives.shape)}")
    n_groups, _ = negatives.shape
    batch = centres.numel()
    if n_groups < 1 or batch % n_groups:
        raise ValueError(
            f"the batch size {batch} must be a positive multiple of the number of negative "
            f"groups {n_groups}"
        )
    dim = w_in.shape[1]
    v = w_in.index_select(0, centres)
    u_pos = w_out.index_select(0, contexts)
    u_neg = w_out.index_select(0, negatives.reshape(-1)).view(n_groups, -1, dim)
    v_grouped = v.view(n_groups, -1, dim)
    score_pos = (v * u_pos).sum(1)
    score_neg = torch.bmm(v_grouped, u_neg.transpose(1, 2))
    keep = (negatives.unsqueeze(1) != contexts.view(n_groups, -1, 1)).to(score_neg.dtype)
    # d loss / d score is sigmoid(s) - 1 for the context and sigmoid(s) for a negative.
    coeff_pos = torch.sigmoid(score_pos).sub_(1.0).unsqueeze(1)
    coeff_neg = torch.sigmoid(score_neg).mul_(keep)
    grad_centres = torch.bmm(coeff_neg, u_neg).view(batch, dim).add_(coeff_pos * u_pos)
    grad_contexts = coeff_pos * v
    grad_negatives = torch.bmm(coeff_neg.transpose(1, 2), v_grouped)
    # -log sigmoid(x) == softplus(-x)
    loss = F.softplus(-score_pos).sum() + F.softplus(score_neg).mul_(keep).sum()
    return BatchGradients(loss, grad_centres, grad_contexts, grad_negatives)


def check_hyperparameters(
    dim: int,
    epochs: int,
    learning_rate: float,
    negatives: int,
    batch_size: int,
    negative_group_size: int,
    num_threads: int | None,
) -> None:
    check_int("dim", dim, minimum=1)
    check_int("epochs", epochs, minimum=1)
    check_float("learning_rate", learning_rate, low=0, low_open=True)
    check_int("negatives", negatives, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_int("negative_group_size", negative_group_size, minimum=1)
    if num_threads is not None:
        check_int("num_threads", num_threads, minimum=1)


def _alias_table(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias table for exact O(1) sampling proportional to ``weights``.

    Entries with zero weight are never drawn: their acceptance probability is 0
    and their alias points to an entry with positive weight.
    """
    n = weights.size
    prob = weights * (n / weights.sum())
    alias = np.arange(n, dtype=np.int64)
    small = np.flatnonzero(prob < 1.0).tolist()
    large = np.flatnonzero(prob >= 1.0).tolist()
    while small and large:
        lo, hi = small.pop(), large.pop()
        alias[lo] = hi
        prob[hi] -= 1.0 - prob[lo]
        (small if prob[hi] < 1.0 else large).append(hi)
    # Leftovers are off from 1 only by rounding; a zero-weight one must still
    # never be accepted.
    for i in small + large:
        if weights[i] > 0:
            prob[i] = 1.0
        else:
            alias[i] = int(np.argmax(weights))
    return prob, alias


def _sample_alias(
    prob: torch.Tensor, alias: torch.Tensor, shape: tuple[int, ...], gen: torch.Generator
) -> torch.Tensor:
    column = torch.randint(0, prob.numel(), shape, generator=gen)
    accept = torch.rand(shape, generator=gen, dtype=torch.float64) < prob[column]
    return torch.where(accept, column, alias[column])


def sgd_epochs(
    w_in: torch.Tensor,
    w_out: torch.Tensor,
    epoch_examples: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    frequency: np.ndarray,
    isolated: np.ndarray,
    *,
    epochs: int,
    learning_rate: float,
    negatives: int,
    batch_size: int,
    negative_group_size: int,
    num_threads: int | None,
    gen: torch.Generator,
    progress: Callable[[int, float], None] | None,
) -> list[float]:
    """The SGD loop of the trainers (the sentence trainer here, the all-pairs one in
    ``benchmarks/all_pairs.py``); ``epoch_examples(e)`` gives the (shuffled)
    centre and context ids of epoch ``e``. Returns the mean loss per example per epoch."""
    dim = w_in.shape[1]
    alias_prob, alias_idx = (
        torch.from_numpy(arr) for arr in _alias_table(frequency.astype(np.float64) ** UNIGRAM_POWER)
    )
    batch_size = int(min(batch_size, 2 * np.count_nonzero(~isolated)))
    epoch_losses: list[float] = []

    def sgd_step(centres: torch.Tensor, contexts: torch.Tensor, n_groups: int, lr: float) -> float:
        negative_ids = _sample_alias(alias_prob, alias_idx, (n_groups, negatives), gen)
        grads = skipgram_batch_gradients(w_in, w_out, centres, contexts, negative_ids)
        # scatter_add_ with an expanded index is deterministic on CPU and much
        # faster than index_add_ for many short rows.
        w_in.scatter_add_(0, centres.unsqueeze(1).expand(-1, dim), grads.grad_centres.mul_(-lr))
        targets = torch.cat([contexts, negative_ids.reshape(-1)])
        updates = torch.cat([grads.grad_contexts, grads.grad_negatives.reshape(-1, dim)])
        w_out.scatter_add_(0, targets.unsqueeze(1).expand(-1, dim), updates.mul_(-lr))
        return float(grads.loss)

    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        with torch.no_grad():
            total_steps = 0
            step = 0
            for epoch in range(epochs):
                centres_all, contexts_all = epoch_examples(epoch)
                n_examples = centres_all.numel()
                if epoch == 0:
                    # The learning rate decays over the expected number of steps; sampled
                    # epochs differ in size only by chance, and the floor covers overruns.
                    total_steps = max(1, epochs * math.ceil(n_examples / batch_size))
                loss_sum = 0.0
                for start in range(0, n_examples, batch_size):
                    lr = learning_rate * max(MIN_LR_FRACTION, 1.0 - step / total_steps)
                    centres = centres_all[start : start + batch_size].long()
                    contexts = contexts_all[start : start + batch_size].long()
                    # A final batch that is not a multiple of negative_group_size
                    # ends with one smaller group.
                    size = centres.numel()
                    whole = size - size % negative_group_size
                    if whole:
                        loss_sum += sgd_step(
                            centres[:whole], contexts[:whole], whole // negative_group_size, lr
                        )
                    if whole < size:
                        loss_sum += sgd_step(centres[whole:], contexts[whole:], 1, lr)
                    step += 1
                mean_loss = loss_sum / max(n_examples, 1)
                epoch_losses.append(mean_loss)
                if progress is not None:
                    progress(epoch + 1, mean_loss)
    finally:
        torch.set_num_threads(previous_threads)
    return epoch_losses


def finish_training(
    w_in: torch.Tensor,
    losses: list[float],
    isolated: np.ndarray,
    learning_rate: float,
    batch_size: int,
) -> SkipGramResult:
    vectors = w_in.numpy()
    if not np.isfinite(vectors).all():
        raise FloatingPointError(
            f"skip-gram training diverged (non-finite vectors) with learning_rate={learning_rate} "
            f"and batch_size={batch_size}; lower the learning rate"
        )
    return SkipGramResult(vectors, losses, isolated)


class SkipGramSettings(Protocol):
    """The trainer's settings (:func:`train_skipgram_sentences` documents each): a study's
    embedding block, which a comparison's joint embedding shares, has them, as has
    :class:`SkipGram`."""

    @property
    def window(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def epochs(self) -> int: ...
    @property
    def learning_rate(self) -> float: ...
    @property
    def negatives(self) -> int: ...
    @property
    def batch_size(self) -> int: ...


@dataclass(frozen=True)
class SkipGram:
    """:class:`SkipGramSettings` with the trainer's defaults (a study's embedding block's too),
    for callers without a study."""

    window: int = 5
    dim: int = 30
    epochs: int = 10
    learning_rate: float = 0.07
    negatives: int = 5
    batch_size: int = 16384


def train_skipgram_sentences(
    neuron_ids: np.ndarray,
    image_ids: np.ndarray,
    n_neurons: int,
    settings: SkipGramSettings = SkipGram(),
    *,
    negative_group_size: int = 16,
    num_threads: int | None = 1,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> SkipGramResult:
    """Skip-gram with negative sampling on one sentence per image, word2vec's dynamic window.

    The work per epoch is linear in the top-k entries: each token (a neuron in an
    image's list) is the centre of about ``window + 1`` examples
    (:func:`window_examples`), however many neurons share the image, where
    :func:`train_skipgram` trains all ``L (L - 1)`` ordered pairs of a sentence of
    ``L`` neurons (quadratic: googlenet's 5,488 neurons with k=50 on 2,000 images
    give sentences of ~140 neurons and 19x more examples at ``window=5``).

    Parameters
    ----------
    neuron_ids, image_ids : np.ndarray
        The ``top_images`` rows: image ``image_ids[i]`` is among the top images of
        neuron ``neuron_ids[i]``; ids non-negative, neuron ids ``< n_neurons``.
    n_neurons : int
        Number of neurons; every id in ``[0, n_neurons)`` gets a vector.
    settings : SkipGramSettings
        ``window``, ``dim``, ``epochs``, ``learning_rate``, ``negatives`` and ``batch_size``
        (a study's embedding block, or :class:`SkipGram`):
    window : int
        Largest centre-context distance in a shuffled sentence, >= 1. The default 5
        is word2vec's: in ``benchmarks/embedding.py`` it matches the all-pairs
        trainer's neighbour precision (sentences up to 6 long are trained on all
        their pairs, on average) at a fraction of its cost on long sentences; the
        cost grows linearly with it. See
        :func:`carto_assets.core.skipgram.sentences.expected_window_weight` for the
        expected weight of each pair.
    dim : int
        Embedding dimension, >= 1.
    epochs : int
        Passes over all examples, >= 1.
    learning_rate : float
        Initial SGD step, > 0; it decays linearly to ``1e-4`` of itself over
        all steps, as in word2vec.
    negatives : int
        Negative samples per example, >= 1.
    batch_size : int
        Most examples per vectorised SGD step, >= 1. The step uses at most
        ``2 * (number of co-occurring neurons)`` examples: a row that recurs many
        times in one batch receives the sum of all its updates at once, one huge
        step (16384 examples over 300 neurons destroyed the planted groups in the
        tests, while 512 recovered them).
    negative_group_size : int
        Consecutive examples of a (shuffled) batch that share one draw of
        ``negatives`` negatives, >= 1. Each example still has ``negatives``
        unigram^0.75 negatives; sharing turns the per-example dot products into
        small matrix products and cuts the rows to update. 1 reproduces word2vec's
        independent draws (about 3x slower, same quality in the benchmark).
    num_threads : int or None
        torch intra-op threads while training (restored afterwards); None keeps
        the process setting. The default 1 is deliberate: the per-batch tensors
        are small, and with several threads OpenMP barrier stalls made training
        up to 100x slower whenever other processes were busy on the same CPUs.
    seed : int
        Seeds the initialisation, shuffling, windows and negative sampling.
    progress : callable, optional
        Called after each epoch as ``progress(epoch, mean_loss)``, epoch 1-based.

    Negatives follow word2vec: unigram^0.75 of how many sentences (images) each neuron is in.

    Returns
    -------
    SkipGramResult
        ``isolated`` marks neurons in no sentence (sharing no top image).

    Raises
    ------
    ValueError
        On a bad hyper-parameter or neuron id (see messages).
    FloatingPointError
        If training diverges to non-finite vectors (learning rate far too high).

    Notes
    -----
    Each epoch draws new shuffles and windows, then shuffles all its examples before
    cutting batches. Memory is O(n_neurons x dim + tokens x window).

    Separate input and output vectors as in word2vec: input vectors start
    uniform in ``[-1/dim, 1/dim)`` (gensim's initialisation), output vectors at
    zero, and the input vectors are returned. Gradients are analytic
    (:func:`skipgram_batch_gradients`, checked against autograd in the tests)
    and applied with ``scatter_add_``, so a row that occurs several times in a
    batch receives the sum of its updates, computed from the batch's starting
    parameters.

    Defaults (10 epochs from a learning rate of 0.07) come from
    ``benchmarks/embedding.py``. Top-k co-occurrences give each neuron few
    examples (tens per epoch), and then word2vec's 5 epochs at 0.025 leave the
    vectors at their initialisation (neighbour precision near chance), while
    training much longer fits chance co-occurrences and lowers precision
    gradually. Too little training is the worse failure, so the defaults sit a
    little past the best setting of the benchmark's noisiest data. If most
    neurons' neighbours look random, raise ``epochs``; if concepts blur, lower it.

    Isolated neurons (in no sentence) are never a centre or context, so their
    vector stays its random initialisation: finite, non-zero, short compared to
    trained vectors and uncorrelated with everything (they are not drawn as
    negatives either).
    They are flagged in ``isolated`` so callers can grey them out or leave them
    off the map; their neighbours and positions mean nothing.

    The same inputs and seed give
    bit-identical vectors for a given torch build and thread count: all
    randomness comes from a local ``torch.Generator`` and CPU ``scatter_add_``
    is deterministic.
    """
    window, dim, epochs = settings.window, settings.dim, settings.epochs
    learning_rate, negatives, batch_size = (
        settings.learning_rate,
        settings.negatives,
        settings.batch_size,
    )
    check_hyperparameters(
        dim, epochs, learning_rate, negatives, batch_size, negative_group_size, num_threads
    )
    check_int("window", window, minimum=1)
    check_int("n_neurons", n_neurons, minimum=0)
    sentences = image_sentences(neuron_ids, image_ids)
    if sentences.neurons.size and sentences.neurons.max() >= n_neurons:
        raise ValueError(
            f"neuron_ids must be < n_neurons={n_neurons}, got {int(sentences.neurons.max())}"
        )
    gen = torch.Generator().manual_seed(int(seed))
    w_in = (torch.rand(n_neurons, dim, generator=gen) * 2.0 - 1.0) / dim
    w_out = torch.zeros(n_neurons, dim)
    frequency = np.bincount(sentences.neurons, minlength=n_neurons)
    isolated = frequency == 0
    if sentences.neurons.size == 0:
        return SkipGramResult(w_in.numpy(), [], isolated)
    rng = np.random.default_rng([int(seed), 1])
    id_dtype = np.int32 if n_neurons <= np.iinfo(np.int32).max else np.int64

    def windowed(_epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        centres, contexts = window_examples(sentences, window, rng)
        order = rng.permutation(centres.size)
        return (
            torch.from_numpy(centres[order].astype(id_dtype)),
            torch.from_numpy(contexts[order].astype(id_dtype)),
        )

    losses = sgd_epochs(
        w_in,
        w_out,
        windowed,
        frequency,
        isolated,
        epochs=epochs,
        learning_rate=learning_rate,
        negatives=negatives,
        batch_size=batch_size,
        negative_group_size=negative_group_size,
        num_threads=num_threads,
        gen=gen,
        progress=progress,
    )
    return finish_training(w_in, losses, isolated, learning_rate, batch_size)
