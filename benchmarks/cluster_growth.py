"""Clusters as the dataset grows: the top-k sets (before) against the sample's sets (after).

Issue 30: on the shapes world, units in multi-unit clusters fell from 22% at 4,000 images to
5% at 100,000 with ``top_k: 50``. This benchmark maps the shapes world at several sizes (the
built-in CNN trained one epoch, top 50, no features, as the issue measured) and clusters each
study's units twice, with the pipeline's own functions:

* ``before`` (``clustering.sets: top_k``): Jaccard of each unit's top 50 over all images;
* ``after`` (``clustering.sets: sample``, the default): Jaccard of each unit's top
  ``clustering.top_fraction`` (1.25%) of the labels' sample (``labels.sample_images``, 20,000
  images drawn with the study's seed; every image in a smaller study), at least ``top_k``.

Both are scored with ``cluster_quality``'s statistic on the units' ``top_images`` (the same
images for both, so their gains compare): per layer the coverage (share of units in
multi-unit clusters), the clusters' mean concept gain against random groups of the same sizes
and layers, and confirmed pairs; per study LSH pair recall against the exact pairs of the same
sets. ``same model, 4,000 images`` clusters the top 50 of a seeded 4,000 of the sample's
images with the same network: the clusters a 4,000-image study of that network would find,
which tells the dataset's size apart from the network's training. ``pairs drift`` follows the
pairs confirmed there (Jaccard >= the threshold) to the whole dataset: their median Jaccard
at top 50 of all images and on the after sets, and the Spearman correlation of their
activations over the sample.

    python benchmarks/cluster_growth.py                            # 4,000 and 40,000 images
    python benchmarks/cluster_growth.py --sizes 4000,40000,400000,1281167 --workdir /data/cg

Studies are kept in ``--workdir`` (default: a folder under the system's temporary folder) and
reused: a second run with the same sizes only clusters again. Studies up to ``--full-max``
images keep every image's unit maxima (``labels.sample_images: null``); the after sets are
then drawn from the 20,000 images the default sample would hold (``sample_image_ids``, the
pass's own draw), so they are the sets the default pipeline would cluster.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import yaml

# Allow ``python benchmarks/cluster_growth.py`` from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carto_assets.core.sae.dictionaries import sample_image_ids
from carto_assets.core.similarity.linkage import clustering_agreement
from carto_assets.core.similarity.pairs import pair_agreement
from carto_assets.core.similarity.sets import (
    NeuronSets,
    pair_jaccard,
    sample_set_size,
    top_sets_of_matrix,
)
from carto_assets.stages.cluster_quality import quality
from carto_assets.stages.clustering import find_clusters, load_neuron_sets
from carto_assets.stages.label_sample import read_sample_maxima
from carto_assets.stages.prepared import PreparedStudy
from carto_assets.study import ClusteringConfig, LabelsConfig, load_study

SHARD_IMAGES = 4000
DEFAULT_SAMPLE = LabelsConfig().sample_images


def write_study(workdir: Path, n: int, epochs: int, top_k: int, full_max: int) -> Path:
    """The shapes world at ``n`` images as issue 30 measured it; returns the file."""
    path = workdir / f"shapes-{n}.yaml"
    raw = {
        "name": f"shapes-{n}",
        "model": "builtin",
        "dataset": {"kind": "shapes", "size": n, "image_size": 64},
        "layers": "auto",
        "batch_size": 128,
        "shards": max(1, n // SHARD_IMAGES),
        "top_k": top_k,
        "seed": 0,
        "training": {"epochs": epochs},
        "labels": {"sample_images": None if n <= full_max else DEFAULT_SAMPLE},
        "audit": {"enabled": False},
        "database": f"shapes-{n}.duckdb",
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def materialize(study_file: Path) -> None:
    """Images, model, activation shards (those not up to date) and ``top_images``: what
    clustering reads. The later summaries are not needed here."""
    import dagster as dg

    from carto_assets.assets.events import QUIET_RUN_CONFIG
    from carto_assets.cli.run import up_to_date_shards
    from carto_assets.definitions import ACTIVATIONS_JOB, PREPARE_JOB, build_definitions
    from carto_assets.stages.top_images import merge_top_images
    from carto_assets.storage.sharding import shard_key

    defs = build_definitions(str(study_file))
    instance = dg.DagsterInstance.ephemeral()

    def execute(job: str, key: str | None = None) -> None:
        result = defs.resolve_job_def(job).execute_in_process(
            instance=instance, partition_key=key, run_config=QUIET_RUN_CONFIG
        )
        if not result.success:
            raise RuntimeError(f"{job} {key or ''} failed")

    t0 = time.perf_counter()
    execute(PREPARE_JOB)
    study = load_study(study_file)
    fresh = up_to_date_shards(PreparedStudy.open(study))
    todo = [s for s in range(study.shards) if s not in fresh]
    for s in todo:
        execute(ACTIVATIONS_JOB, shard_key(s))
    merge_top_images(PreparedStudy.open(study))
    print(
        f"  {study.name}: {len(todo)} of {study.shards} shards computed, "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )


def layer_figures(sets, labels, pairs, store, cfg, score_sets, names) -> dict[str, dict]:
    """Per layer (and ``all``): coverage, clusters, mean gain and random gain, pairs."""
    report = quality(score_sets, labels, pairs, store, cfg, cluster_sets=None)
    table = report.table.filter(pl.col("kind") == "concept") if len(report.table) else None
    multi = np.bincount(labels)[labels] >= 2
    row_layer = np.array([names[int(sets.layer_values[c])] for c in sets.layers])
    out: dict[str, dict] = {}
    for layer in dict.fromkeys(row_layer):
        rows = row_layer == layer
        clusters = np.unique(labels[rows & multi])
        gains = (
            table.filter(pl.col("cluster_id").is_in(clusters.tolist()))
            if table is not None
            else None
        )
        out[layer] = {
            "coverage": float(multi[rows].mean()),
            "clusters": int(clusters.size),
            "gain": float(gains["gain"].mean()) if gains is not None and len(gains) else np.nan,
            "random": float(gains["random_gain"].mean())
            if gains is not None and len(gains)
            else np.nan,
            "pairs": int(rows[pairs.i].sum()),
        }
    gain = report.gains["concept"]
    out["all"] = {
        "coverage": report.coverage,
        "clusters": report.n_multi_neuron_clusters,
        "gain": gain.cluster_gain,
        "random": gain.random_gain,
        "pairs": pairs.n_pairs,
    }
    return out


def cluster(sets: NeuronSets, cfg: ClusteringConfig):
    """The study's method (LSH) and its recall and ARI against exact all-pairs."""
    lsh = find_clusters(sets, cfg, method="lsh")
    exact = find_clusters(sets, cfg, method="exact")
    recall = pair_agreement(exact.pairs, lsh.pairs).recall
    ari = clustering_agreement(exact.clustering.labels, lsh.clustering.labels)
    return lsh, recall, ari


def measure(study_file: Path, top_fraction: float) -> dict:
    """Before, after and same-model-4,000 clusterings of one study, with the pairs' drift."""
    study = load_study(study_file)
    prepared = PreparedStudy.open(study)
    store, cfg = prepared.store, study.clustering
    neurons = store.query("SELECT neuron_id, layer_index, layer FROM neurons ORDER BY neuron_id")
    names = dict(zip(neurons["layer_index"].to_list(), neurons["layer"].to_list()))
    top = load_neuron_sets(store)
    image_ids, maxima = read_sample_maxima(prepared)
    # The default study's sample: the pass draws it with this function over every image.
    all_ids = store.query("SELECT image_id FROM images ORDER BY image_id")["image_id"].to_numpy()
    sample = np.isin(image_ids, sample_image_ids(all_ids, DEFAULT_SAMPLE, study.seed))
    ids_s, max_s = image_ids[sample], maxima[sample]
    if ids_s.size != min(DEFAULT_SAMPLE, all_ids.size):
        raise RuntimeError(f"{study.name}: the kept maxima do not hold the default sample")
    k = sample_set_size(study.top_k, top_fraction, ids_s.size)
    unit_ids, layers = neurons["neuron_id"].to_numpy(), neurons["layer_index"].to_numpy()
    after_sets = top_sets_of_matrix(max_s, ids_s, k, neuron_ids=unit_ids, layers=layers)
    few = np.isin(ids_s, sample_image_ids(ids_s, SHARD_IMAGES, study.seed))
    small_sets = top_sets_of_matrix(
        max_s[few], ids_s[few], study.top_k, neuron_ids=unit_ids, layers=layers
    )
    result: dict = {"name": study.name, "n": int(all_ids.size), "k_after": k}
    for key, sets in (("before", top), ("after", after_sets), ("model4k", small_sets)):
        run, recall, ari = cluster(sets, cfg)
        labels, pairs = run.clustering.labels, run.pairs
        result[key] = layer_figures(sets, labels, pairs, store, cfg, top, names)
        result[key]["all"].update(recall=recall, ari=ari)
        result[key + "_pairs"] = pairs
    # Pairs drift: pairs confirmed on the same network's 4,000 images, on the bigger sets.
    pairs = result["model4k_pairs"]
    rank = np.argsort(np.argsort(max_s, axis=0), axis=0).astype(np.float64)
    rank -= rank.mean(axis=0)
    a, b = small_sets.neuron_ids[pairs.i], small_sets.neuron_ids[pairs.j]
    norms = np.sqrt((rank**2).sum(axis=0))
    spearman = (rank[:, a] * rank[:, b]).sum(axis=0) / (norms[a] * norms[b])
    row_layer = np.array([names[int(small_sets.layer_values[c])] for c in small_sets.layers])
    drift = {}
    for layer in dict.fromkeys(row_layer):
        m = row_layer[pairs.i] == layer
        if not m.any():
            continue
        drift[layer] = {
            "pairs": int(m.sum()),
            "j_4k": float(np.median(pairs.jaccard[m])),
            "j_before": float(np.median(pair_jaccard(top, pairs.i[m], pairs.j[m]))),
            "j_after": float(np.median(pair_jaccard(after_sets, pairs.i[m], pairs.j[m]))),
            "kept_before": float(
                np.mean(pair_jaccard(top, pairs.i[m], pairs.j[m]) >= cfg.threshold)
            ),
            "kept_after": float(
                np.mean(pair_jaccard(after_sets, pairs.i[m], pairs.j[m]) >= cfg.threshold)
            ),
            "spearman": float(np.median(spearman[m])),
        }
    result["drift"] = drift
    return result


def _cell(d: dict) -> str:
    gain = "   -/-  " if np.isnan(d["gain"]) else f"{d['gain']:.2f}/{d['random']:.2f}"
    return f"{d['coverage']:>4.0%} {d['clusters']:>3} {gain:>9} {d['pairs']:>5}"


def report(results: list[dict], threshold: float) -> None:
    head = "coverage clusters gain/random pairs"
    print(
        f"\nthreshold {threshold}; gains on each study's top 50 (concept ground truth); "
        "cells: coverage, multi-unit clusters, mean gain / random same-size groups, pairs"
    )
    print(
        f"{'images':>9} {'layer':<7} | {'before: top 50 of all':<25} | "
        f"{'after: top 1.25% of sample':<25} | {'same model, 4,000 images':<25}"
    )
    print(f"{'':>9} {'':<7} | {head:<25} | {head:<25} | {head:<25}")
    for r in results:
        for layer in r["before"]:
            print(
                f"{r['n']:>9,} {layer:<7} | {_cell(r['before'][layer]):<25} | "
                f"{_cell(r['after'][layer]):<25} | {_cell(r['model4k'][layer]):<25}"
            )
        b, a, m = r["before"]["all"], r["after"]["all"], r["model4k"]["all"]
        print(
            f"{'':>9} {'recall':<7} | LSH vs exact {b['recall']:.3f} (ARI {b['ari']:.3f})"
            f"{'':<2} | {a['recall']:.3f} (ARI {a['ari']:.3f}), k = {r['k_after']:<6}"
            f" | {m['recall']:.3f} (ARI {m['ari']:.3f})"
        )
    print(
        "\npairs drift: pairs with Jaccard >= threshold among the same network's top 50 of "
        "4,000 images, followed to the whole dataset (median Jaccard; share still >= threshold)"
    )
    for r in results:
        for layer, d in r["drift"].items():
            print(
                f"{r['n']:>9,} {layer:<7} {d['pairs']:>5} pairs: 4,000 images {d['j_4k']:.2f} -> "
                f"before {d['j_before']:.2f} ({d['kept_before']:.0%}), after {d['j_after']:.2f} "
                f"({d['kept_after']:.0%}); Spearman over the sample {d['spearman']:.2f}"
            )
    if len(results) > 1:
        base = results[0]
        print(f"\nagainst {base['n']:,} images (coverage and gain - random, all layers):")
        for r in results[1:]:
            parts = []
            for key in ("before", "after"):
                c0, c1 = base[key]["all"]["coverage"], r[key]["all"]["coverage"]
                g0 = base[key]["all"]["gain"] - base[key]["all"]["random"]
                g1 = r[key]["all"]["gain"] - r[key]["all"]["random"]
                parts.append(
                    f"{key} coverage {c1:.0%} vs {c0:.0%}, gain margin {g1:.2f} vs {g0:.2f}"
                )
            print(f"  {r['n']:>9,}: " + "; ".join(parts))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="4000,40000", help="images per study, comma-separated")
    parser.add_argument("--workdir", type=Path, default=None, help="keep and reuse studies here")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs of the CNN")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument(
        "--top-fraction",
        type=float,
        default=ClusteringConfig().top_fraction,
        help="the after method's clustering.top_fraction",
    )
    parser.add_argument(
        "--full-max",
        type=int,
        default=100_000,
        help="studies up to this size keep every image's unit maxima (for the drift)",
    )
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < SHARD_IMAGES:
        parser.error(f"--sizes must be at least {SHARD_IMAGES} images each, got {args.sizes!r}")
    workdir = args.workdir or Path(tempfile.gettempdir()) / "carto-cluster-growth"
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"studies in {workdir}")
    results = []
    for n in sorted(sizes):
        study_file = write_study(workdir, n, args.epochs, args.top_k, args.full_max)
        materialize(study_file)
        results.append(measure(study_file, args.top_fraction))
    report(results, ClusteringConfig().threshold)
    print(f"\nbenchmark wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
