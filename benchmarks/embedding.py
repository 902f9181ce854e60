"""Benchmark the torch skip-gram trainer against gensim's Word2Vec on planted data.

Run: ``.venv/bin/python benchmarks/embedding.py`` (needs ``pip install gensim``; about
5 minutes on an idle 2-core machine). ``--quick`` runs the small data set only; ``--torch-threads``
adds a row for our trainer on torch's process-wide thread setting instead of its
single-thread default.

Data. Neurons belong to planted groups (concepts). Each neuron's top-k images are
drawn mostly from its group's image pool, the rest from a set of "popular" images
that many unrelated neurons share (chance co-occurrences across groups) and from a
large image set where collisions are rare; a few neurons have only private images
and co-occur with nobody. Co-occurrences come from
:func:`all_pairs.cooccurrence_counts` (the table `cooccurrence` holds the same counts).

Fairness. Both trainers get the same dimension, epochs, negatives, initial learning
rate (linear decay) and the same (centre, context) examples: gensim gets one sentence
per image listing the neurons that have that image in their top-k (the paper's
construction), with ``window`` = the longest sentence, ``shrink_windows=False`` and
``sample=0`` so each epoch trains every ordered pair of neurons in a sentence once --
the ``2 * count.sum()`` examples our trainer visits per epoch. gensim uses
``workers=2`` (this machine has 2 cores); our trainer uses its default of one torch
thread. Both draw negatives from sentence counts^0.75 (``shared_image_counts``; the
row ``negative_counts=None`` shows our pairs-only default). Remaining differences:
gensim trains the pairs of one image back to back in a fixed sentence order, we
reshuffle all pairs each epoch; our default shares each negative draw among 16
examples (the row ``negative_group_size=1`` shows word2vec's independent draws).
Times are the best of ``--repeats`` runs, training only (gensim's vocabulary build is
shown separately; sentence and pair construction are excluded for both). Precision is the share of a
neuron's 10 nearest cosine neighbours from its own planted group, over all neurons
that co-occur with someone.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

# Same convention as the other benchmarks: run from a checkout without installing.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from all_pairs import cooccurrence_counts, shared_image_counts, train_skipgram

from carto_assets.core.projection.neighbors import nearest_neighbors
from carto_assets.core.skipgram.sentences import image_sentences as sentence_lists
from carto_assets.core.skipgram.trainer import SkipGram, train_skipgram_sentences

# The product defaults are what is benchmarked.
_DEFAULTS = {k: v.default for k, v in inspect.signature(train_skipgram).parameters.items()}
DIM = _DEFAULTS["dim"]
EPOCHS = _DEFAULTS["epochs"]
LEARNING_RATE = _DEFAULTS["learning_rate"]
NEGATIVES = _DEFAULTS["negatives"]
WINDOW = SkipGram.window
GENSIM_WORKERS = 2


@dataclass(frozen=True)
class PlantedSpec:
    name: str
    n_neurons: int
    top_k: int
    group_size: tuple[int, int]
    pool_factor: float
    p_popular: float
    p_random: float
    n_popular: int
    n_images: int = 1_200_000
    isolated_fraction: float = 0.02


SPECS = {
    "sparse-5k": PlantedSpec("sparse-5k", 5_000, 10, (20, 80), 2.0, 0.10, 0.20, 3_000),
    "noisy-10k": PlantedSpec("noisy-10k", 10_000, 20, (20, 80), 4.0, 0.20, 0.30, 5_000),
    "clean-20k": PlantedSpec("clean-20k", 20_000, 20, (15, 60), 3.0, 0.15, 0.25, 10_000),
}


def planted_top_images(spec: PlantedSpec, seed: int = 0):
    """(neuron_ids, image_ids, group) with group -1 for neurons without shared images."""
    rng = np.random.default_rng(seed)
    n_isolated = round(spec.isolated_fraction * spec.n_neurons)
    n_grouped = spec.n_neurons - n_isolated
    sizes: list[int] = []
    while sum(sizes) < n_grouped:
        sizes.append(int(rng.integers(spec.group_size[0], spec.group_size[1] + 1)))
    sizes[-1] -= sum(sizes) - n_grouped
    if sizes[-1] < spec.group_size[0]:
        last = sizes.pop()
        sizes[-1] += last
    group = np.full(spec.n_neurons, -1)
    members = rng.permutation(spec.n_neurons)[:n_grouped]
    group[members] = np.repeat(np.arange(len(sizes)), sizes)

    next_image = spec.n_images  # ids below are the "large image set"
    pools = []
    for size in sizes:
        pool = max(spec.top_k, int(spec.pool_factor * size))
        pools.append(np.arange(next_image, next_image + pool))
        next_image += pool
    popular = np.arange(next_image, next_image + spec.n_popular)
    private = next_image + spec.n_popular

    neuron_ids, image_ids = [], []
    for neuron in range(spec.n_neurons):
        g = group[neuron]
        if g < 0:
            images = private + neuron * spec.top_k + np.arange(spec.top_k)
        else:
            n_pop = rng.binomial(spec.top_k, spec.p_popular)
            n_rand = rng.binomial(spec.top_k - n_pop, spec.p_random / (1 - spec.p_popular))
            images = np.concatenate(
                [
                    rng.choice(pools[g], spec.top_k - n_pop - n_rand, replace=False),
                    rng.choice(popular, n_pop, replace=False),
                    rng.integers(0, spec.n_images, n_rand),
                ]
            )
        neuron_ids.append(np.full(images.size, neuron))
        image_ids.append(images)
    return np.concatenate(neuron_ids), np.concatenate(image_ids), group


def image_sentences(neuron_ids: np.ndarray, image_ids: np.ndarray, seed: int = 0):
    """One sentence per image shared by >= 2 neurons: the neurons having it in top-k."""
    pairs = np.unique(np.stack([image_ids, neuron_ids], axis=1), axis=0)
    bounds = np.flatnonzero(np.diff(pairs[:, 0])) + 1
    sentences = [s for s in np.split(pairs[:, 1], bounds) if s.size > 1]
    order = np.random.default_rng(seed).permutation(len(sentences))
    return [[str(x) for x in sentences[i]] for i in order]


def precision_at_10(vectors: np.ndarray, group: np.ndarray) -> float:
    idx, _ = nearest_neighbors(vectors, 10)
    return float((group[idx] == group[:, None]).mean())


def best_time(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - start
        if elapsed < best:
            best, result = elapsed, out
    return best, result


def run_dataset(spec: PlantedSpec, repeats: int, torch_threads_row: bool) -> list[dict]:
    from gensim.models import Word2Vec

    neuron_ids, image_ids, group = planted_top_images(spec)
    start = time.perf_counter()
    a, b, count = cooccurrence_counts(neuron_ids, image_ids)
    cooc_s = time.perf_counter() - start
    n = spec.n_neurons
    examples = 2 * int(count.sum())
    print(
        f"\n[{spec.name}] {n} neurons, {group.max() + 1} planted groups, top-{spec.top_k} images; "
        f"{a.size} co-occurring pairs, {examples} examples/epoch "
        f"({examples / n:.0f} per neuron); cooccurrence_counts {cooc_s:.2f}s",
        flush=True,
    )
    rows = []

    def record(label: str, seconds: float, result) -> None:
        keep = (group >= 0) & ~result.isolated
        rows.append(
            {
                "method": label,
                "train_s": seconds,
                "extra": "",
                "precision": precision_at_10(result.vectors[keep], group[keep]),
            }
        )
        print(f"  {label}: {seconds:.2f}s", flush=True)

    def ours(label: str, **kwargs) -> None:
        seconds, result = best_time(
            lambda: train_skipgram(
                a, b, count, n, dim=DIM, epochs=EPOCHS, learning_rate=LEARNING_RATE,
                negatives=NEGATIVES, seed=0, **kwargs,
            ),
            repeats,
        )  # fmt: skip
        record(label, seconds, result)

    sentence_counts = shared_image_counts(neuron_ids, image_ids, n)
    ours("ours", negative_counts=sentence_counts)
    if torch_threads_row:
        import torch

        ours(
            f"ours, torch threads={torch.get_num_threads()}",
            negative_counts=sentence_counts,
            num_threads=None,
        )
    ours("ours, negative_group_size=1", negative_counts=sentence_counts, negative_group_size=1)
    ours("ours, negative_counts=None")

    def windowed(label: str, window: int) -> None:
        seconds, result = best_time(
            lambda: train_skipgram_sentences(
                neuron_ids, image_ids, n,
                SkipGram(window=window, dim=DIM, epochs=EPOCHS, learning_rate=LEARNING_RATE,
                         negatives=NEGATIVES),
                seed=0,
            ),
            repeats,
        )  # fmt: skip
        record(label, seconds, result)

    windowed(f"ours, window={WINDOW} (product)", WINDOW)

    sentences = image_sentences(neuron_ids, image_ids)
    window = max(len(s) for s in sentences)
    for alpha, label, win, shrink in [
        (LEARNING_RATE, f"gensim alpha={LEARNING_RATE}", window, False),
        (0.025, "gensim alpha=0.025 (its default)", window, False),
        (LEARNING_RATE, f"gensim window={WINDOW}", WINDOW, True),
    ]:

        def gensim_run(alpha=alpha, win=win, shrink=shrink):
            model = Word2Vec(
                vector_size=DIM, window=win, min_count=1, sg=1, hs=0, negative=NEGATIVES,
                sample=0, shrink_windows=shrink, alpha=alpha, min_alpha=alpha * 1e-4,
                workers=GENSIM_WORKERS, seed=0, epochs=EPOCHS,
            )  # fmt: skip
            start = time.perf_counter()
            model.build_vocab(sentences)
            vocab_s = time.perf_counter() - start
            start = time.perf_counter()
            model.train(sentences, total_examples=len(sentences), epochs=EPOCHS)
            return time.perf_counter() - start, vocab_s, model

        best = None
        for _ in range(repeats):
            out = gensim_run()
            if best is None or out[0] < best[0]:
                best = out
        train_s, vocab_s, model = best
        keys = np.array([int(k) for k in model.wv.index_to_key])
        keep = group[keys] >= 0
        vectors = model.wv.vectors[keep]
        rows.append(
            {
                "method": label,
                "train_s": train_s,
                "extra": f"+{vocab_s:.2f}s vocab",
                "precision": precision_at_10(vectors, group[keys[keep]]),
            }
        )
        print(f"  {label}: {train_s:.2f}s", flush=True)
    for row in rows:
        row["dataset"] = spec.name
    return rows


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'dataset':<10} {'method':<34} {'train s':>8} {'':<13} {'prec@10':>8} "
        f"{'gensim s / ours s':>18} {'prec - gensim':>14}"
    )
    print("\n" + header)
    print("-" * len(header))
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        subset = [r for r in rows if r["dataset"] == dataset]
        reference = next(r for r in subset if r["method"].startswith("gensim alpha="))
        for r in subset:
            speedup = reference["train_s"] / r["train_s"]
            delta = r["precision"] - reference["precision"]
            print(
                f"{dataset:<10} {r['method']:<34} {r['train_s']:>8.2f} {r['extra']:<13} "
                f"{r['precision']:>8.3f} {speedup:>17.2f}x {delta:>+14.3f}"
            )
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        subset = {r["method"]: r for r in rows if r["dataset"] == dataset}
        win = subset[f"ours, window={WINDOW} (product)"]
        print(
            f"{dataset}: window={WINDOW} vs all-pairs: precision "
            f"{win['precision'] - subset['ours']['precision']:+.3f} (target within 0.02); "
            f"speed vs gensim at window={WINDOW}: "
            f"{subset[f'gensim window={WINDOW}']['train_s'] / win['train_s']:.2f}x (target >= 1)"
        )
    print(
        f"\nAll runs: dim={DIM}, epochs={EPOCHS}, negatives={NEGATIVES}; "
        f"reference row per dataset: gensim alpha={LEARNING_RATE}, workers={GENSIM_WORKERS}. "
        f"Ratios > 1x mean ours is faster."
    )


def rehearsal_shape(database: str | None, repeats: int) -> None:
    """Time per epoch at the shape of issue 12's rehearsal: all pairs vs the dynamic window.

    Top-k sets of 5,488 neurons (googlenet's 9 auto layers) with k = 50 over 2,000 images
    (~137 neurons per image), then over 1,000 images (neurons per image doubled). The all-pairs
    trainer runs one epoch (its epochs cost the same); the windowed trainer and gensim at the
    same window run the full default training. ``--database`` uses a study's real
    ``top_images`` instead of the generated sets (first row only).
    """
    from gensim.models import Word2Vec

    n, k = 5488, 50
    rng = np.random.default_rng(0)
    cases = []
    if database:
        import duckdb

        con = duckdb.connect(database, read_only=True)
        top = con.execute("SELECT neuron_id, image_id FROM top_images").fetchnumpy()
        n = int(con.execute("SELECT count(*) FROM neurons").fetchone()[0])
        con.close()
        cases.append((f"{database}", top["neuron_id"], top["image_id"]))
    for n_images in (2000, 1000):
        neuron_ids = np.repeat(np.arange(n), k)
        image_ids = np.concatenate([rng.choice(n_images, k, replace=False) for _ in range(n)])
        cases.append((f"generated, {n_images} images", neuron_ids, image_ids))
    print(
        f"\n[rehearsal shape] {n} neurons, top-{k}; {EPOCHS} epochs, window={WINDOW}; "
        "all-pairs timed on 1 epoch"
    )
    header = (
        f"{'case':<34} {'nrn/img':>7} {'all-pairs ex/ep':>15} {'all-pairs s/ep':>14} "
        f"{'window ex/ep':>12} {'window s':>9} {'s/ep':>6} {'gensim s':>9} {'all-pairs/window':>16}"
    )
    print(header)
    print("-" * len(header))
    per_epoch = {}
    for label, neuron_ids, image_ids in cases:
        sentences = sentence_lists(neuron_ids, image_ids)
        lengths = sentences.lengths
        a, b, count = cooccurrence_counts(neuron_ids, image_ids)
        pairs_s, _ = best_time(
            lambda a=a, b=b, count=count: train_skipgram(a, b, count, n, epochs=1, seed=0), 1
        )
        win_s, _ = best_time(
            lambda ni=neuron_ids, ii=image_ids: train_skipgram_sentences(ni, ii, n, seed=0),
            repeats,
        )
        sentences_txt = image_sentences(neuron_ids, image_ids)
        model = Word2Vec(
            vector_size=DIM, window=WINDOW, min_count=1, sg=1, hs=0, negative=NEGATIVES,
            sample=0, alpha=LEARNING_RATE, min_alpha=LEARNING_RATE * 1e-4,
            workers=GENSIM_WORKERS, seed=0, epochs=EPOCHS,
        )  # fmt: skip
        model.build_vocab(sentences_txt)
        start = time.perf_counter()
        model.train(sentences_txt, total_examples=len(sentences_txt), epochs=EPOCHS)
        gensim_s = time.perf_counter() - start
        from carto_assets.core.skipgram.sentences import window_examples

        window_ex = window_examples(sentences, WINDOW, np.random.default_rng(0))[0].size
        per_epoch[label] = win_s / EPOCHS
        print(
            f"{label[-34:]:<34} {lengths.mean():>7.0f} {2 * int(count.sum()):>15,} "
            f"{pairs_s:>14.1f} {window_ex:>12,} {win_s:>9.1f} {win_s / EPOCHS:>6.2f} "
            f"{gensim_s:>9.1f} {pairs_s / (win_s / EPOCHS):>15.1f}x"
        )
    base, doubled = per_epoch["generated, 2000 images"], per_epoch["generated, 1000 images"]
    print(
        f"neurons per image doubled (2,000 -> 1,000 images): windowed time x{doubled / base:.2f} "
        "(target <= 2: at most linear); 'all-pairs/window' compares one epoch of each."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the 10k-neuron data set")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per row (best kept)")
    parser.add_argument(
        "--torch-threads", action="store_true", help="add a row with torch's own thread count"
    )
    parser.add_argument(
        "--rehearsal", action="store_true", help="only the rehearsal-shape timing (issue 12)"
    )
    parser.add_argument("--database", help="a study database whose top_images to time too")
    args = parser.parse_args()
    import gensim
    import torch

    print(
        f"gensim {gensim.__version__}, torch {torch.__version__} "
        f"(process threads {torch.get_num_threads()}), {os.cpu_count()} CPUs"
    )
    if not args.rehearsal:
        names = ["noisy-10k"] if args.quick else list(SPECS)
        rows = []
        for name in names:
            rows += run_dataset(SPECS[name], args.repeats, args.torch_threads)
        print_table(rows)
    rehearsal_shape(args.database, 1 if args.quick else args.repeats)


if __name__ == "__main__":
    main()
