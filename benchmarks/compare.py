"""Comparisons measured on ground truth (issue 23): what `carto compare` finds where the answer is
known, and how unit matching scales.

1. **Permuted copy.** The final built-in network with the channels of every block permuted
   (weights moved, so it computes the same function); both run over the study's images, their
   units matched: the share matched with Jaccard 1.0 (mutually) and the share whose match
   undoes the permutation exactly.
2. **Checkpoints, seeds, untrained.** Five studies of the same world and images: the final
   network (training seed 0), the same training after epoch 1 (``training.checkpoint_epoch``),
   a second training seed (``training.seed: 1``), the untrained initial weights the final
   network started from (``checkpoint_epoch: 0``) and those of the second seed (an untrained
   network independent of the final one). Each is compared with the final network
   (``carto compare``'s assets, in process): per layer, the share of units with a mutual
   match in the same layer, the shuffled-image null and linear CKA; whether the first and
   last layers share more than the middle ones (Li et al. 2015, two seeds) and whether layers
   settle bottom-up (SVCCA, Raghu et al. 2017: epoch 1 against final); the concepts only one
   model has, with the shapes world's labels.
3. **Scaling.** Matching 2 x 6,860 units (the paper's neuron count; top-100 sets over
   ImageNet's 1,281,167 image ids) and 4x and 16x as many: seconds, and at 1x the best matches
   of exact all pairs (a sparse product) against LSH's.

    python benchmarks/compare.py                      # demo-size studies in data/bench-compare
    python benchmarks/compare.py --size 1000 --epochs 3 --folder /tmp/small
    python benchmarks/compare.py --only scaling       # or: permuted, studies

Studies already in the folder are reused (``--fresh`` re-runs them).

Measured (2026-12-04, defaults, a shared 2-core machine): the permuted copy 100% matched with
Jaccard 1.0, mutual, permutation undone 240/240; same-layer shares block1..block4, epoch 1 vs
final 0.56, 0.06, 0.02, 0.00 (CKA 0.84, 0.80, 0.30, 0.23), seed 1 vs seed 0 0.09, 0.08, 0.05,
0.04 (CKA 0.83, 0.62, 0.87, 0.90), another seed's untrained weights vs final 0.03, 0.02, 0.00,
0.00, shuffled null 0.000; matching 2 x 6,860 / 27,440 / 109,760 units 0.9 / 2.5 / 9.1 s
(exact sparse product 0.17 / 3.0 / 87 s).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import scipy.sparse as sp
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference.compare import permute_builtin_channels

from carto_assets.cli.compare import run_comparison
from carto_assets.cli.run import materialize_all
from carto_assets.core.comparison.matching import match_units, unit_sets
from carto_assets.core.network.recorder import Batch, activation_pass
from carto_assets.core.network.zoo import BuiltinCNN
from carto_assets.stages.images import load_manifest, source_for_manifest
from carto_assets.stages.prepared import open_comparison_store
from carto_assets.stages.stored_model import load_model
from carto_assets.storage.store import CartoStore
from carto_assets.study import DEMO_STUDY, load_study

#: The four studies: name -> training overrides (every other field is the demo's).
STUDIES = {
    "final": {},
    "epoch1": {"checkpoint_epoch": 1},
    "seed1": {"seed": 1},
    "untrained": {"checkpoint_epoch": 0},
    "untrained_seed1": {"seed": 1, "checkpoint_epoch": 0},
}
#: Each compared with the final network.
PAIRS = [
    ("epoch1", "final"),
    ("seed1", "final"),
    ("untrained", "final"),
    ("untrained_seed1", "final"),
]
PAPER_UNITS = 6860
IMAGENET = 1_281_167


# ---- studies ------------------------------------------------------------------------------
def study_files(folder: Path, size: int, epochs: int) -> dict[str, Path]:
    files = {}
    for name, training in STUDIES.items():
        raw = {k: v for k, v in DEMO_STUDY.items() if k != "features"}
        raw.update(
            name=f"bench-{name}",
            dataset={**DEMO_STUDY["dataset"], "size": size},
            training={"epochs": epochs, **training},
            database=f"{name}.duckdb",
        )
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        files[name] = path
    return files


def run_studies(files: dict[str, Path], instance: dg.DagsterInstance, fresh: bool) -> None:
    for name, path in files.items():
        study = load_study(path)
        if study.database_path.exists() and not fresh:
            print(f"  {name}: reusing {study.database_path}")
            continue
        start = time.perf_counter()
        materialize_all(str(path), instance, say=lambda m: None)
        print(f"  {name}: mapped in {time.perf_counter() - start:.0f} s")


def compare(folder: Path, a: str, b: str, instance: dg.DagsterInstance) -> CartoStore:
    path = folder / f"{a}-vs-{b}.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": f"{a}-vs-{b}", "studies": [f"{a}.yaml", f"{b}.yaml"], "cka_images": 500}
        )
    )
    start = time.perf_counter()
    comparison = run_comparison(str(path), instance, say=lambda m: None)
    print(f"  {a} vs {b}: compared in {time.perf_counter() - start:.0f} s")
    return open_comparison_store(comparison)


def report_pair(store: CartoStore, a: str, b: str) -> pl.DataFrame:
    layers = store.query(
        "SELECT layer, layer_index, units, mutual, share, null_share, cka FROM layer_matches "
        "WHERE study = ? AND other_study = ? AND layer = other_layer ORDER BY layer_index",
        [f"bench-{a}", f"bench-{b}"],
    )
    anywhere = store.query(
        "SELECT layer, sum(mutual) / any_value(units) AS anywhere FROM layer_matches "
        "WHERE study = ? AND other_study = ? GROUP BY layer",
        [f"bench-{a}", f"bench-{b}"],
    )
    layers = layers.join(anywhere, on="layer").sort("layer_index")
    print(f"\n{a} against {b}: units of {a}'s layer with a mutual match in {b}'s same layer")
    print(f"  {'layer':<8} {'units':>5} {'share':>7} {'null':>7} {'any layer':>9} {'CKA':>6}")
    for r in layers.iter_rows(named=True):
        print(
            f"  {r['layer']:<8} {r['units']:>5} {r['share']:>7.3f} {r['null_share']:>7.4f} "
            f"{r['anywhere']:>9.3f} {r['cka']:>6.3f}"
        )
    total = store.query(
        "SELECT sum(mutual)::DOUBLE / sum(units) FILTER (WHERE layer = other_layer) AS share, "
        "sum(null_share * units) / sum(units) FILTER (WHERE layer = other_layer) AS null "
        "FROM layer_matches WHERE study = ? AND other_study = ?",
        [f"bench-{a}", f"bench-{b}"],
    ).row(0, named=True)
    print(
        f"  all units: {total['share']:.3f} with a mutual match (shuffled null {total['null']:.4f})"
    )
    return layers


def shape_of(shares: list[float]) -> str:
    """Li et al.'s and SVCCA's questions, answered from the per-layer shares."""
    first, last, middle = shares[0], shares[-1], float(np.mean(shares[1:-1]))
    u_shape = first > middle and last > middle
    decreasing = all(x >= y for x, y in itertools.pairwise(shares))
    return (
        f"first {first:.3f}, middle mean {middle:.3f}, last {last:.3f}: "
        f"{'both ends above the middle (U-shape)' if u_shape else 'no U-shape'}; "
        f"{'non-increasing with depth (settled bottom-up)' if decreasing else 'not monotone'}"
    )


def report_concepts(store: CartoStore, a: str, b: str, limit: int = 6) -> None:
    """Concepts shared and only in one model: by words where both studies have them
    (``matched_by = 'formula'``; a partial match shares a term), else by images (a namesake
    leads with the same term)."""
    for s, o in ((a, b), (b, a)):
        rows = store.query(
            "SELECT layer, size, label, formula, auc, same_label_elsewhere FROM concept_matches "
            "WHERE study = ? AND other_study = ? AND status = 'only' "
            "ORDER BY size DESC, layer, cluster_id",
            [f"bench-{s}", f"bench-{o}"],
        )
        counts = store.query(
            "SELECT count(*) FILTER (WHERE status IS NOT NULL) AS n, "
            "count(*) FILTER (WHERE status IS NULL) AS none, "
            "count(*) FILTER (WHERE status = 'shared') AS shared, "
            "count(*) FILTER (WHERE label_changed) AS changed, "
            "any_value(matched_by) AS matched_by FROM concept_matches "
            "WHERE study = ? AND other_study = ?",
            [f"bench-{s}", f"bench-{o}"],
        ).row(0, named=True)
        words = counts["matched_by"] == "formula"
        new = rows.filter(~pl.col("same_label_elsewhere"))
        if words:
            print(
                f"  concepts of {s} (clusters with words, matched by formula): {counts['n']} "
                f"({counts['none']} clusters without words); {counts['shared']} shared with "
                f"{o}; {len(rows)} only in {s}, of which {len(rows) - len(new)} share a term "
                f"with a concept of {o} and {len(new)} share none"
            )
        else:
            print(
                f"  concepts of {s} (matched by images): {counts['n']}; {counts['shared']} "
                f"shared with {o} ({counts['changed']} with another leading label); {len(rows)} "
                f"only in {s}, of which {len(rows) - len(new)} have a namesake in {o} (other "
                f"images) and {len(new)} lead with a term no concept of {o} leads with"
            )
        by_layer = rows.group_by("layer").len().sort("layer")
        print("    only-in by layer: " + ", ".join(f"{r[0]} {r[1]}" for r in by_layer.rows()))
        other = "a term in " if words else "namesake in "
        for r in rows.filter(pl.col("size") > 1).head(limit).iter_rows(named=True):
            name = f"{r['formula']} · {r['auc']:.2f}" if words else r["label"]
            seen = other + o if r["same_label_elsewhere"] else "none in " + o
            print(f"    {r['layer']:<8} size {r['size']}: {name} [{seen}]")
        for r in new.head(limit).iter_rows(named=True):
            name = f"{r['formula']} · {r['auc']:.2f}" if words else r["label"]
            print(f"    nothing like it in {o}: {r['layer']} size {r['size']}: {name}")


# ---- permuted copy -------------------------------------------------------------------------
def top_k_of(module, layers, study, k: int) -> dict:
    images, class_names = load_manifest(study)
    source = source_for_manifest(study, images, class_names)
    bundle_norm = load_model(study)[0].normalize
    ids = images["image_id"].to_numpy()

    def batches():
        for lo in range(0, ids.size, 256):
            pixels, _ = source.load_many(ids[lo : lo + 256].tolist())
            yield Batch(
                torch.from_numpy(ids[lo : lo + 256].copy()),
                torch.from_numpy(pixels),
                torch.zeros(len(pixels), dtype=torch.long),
            )

    return activation_pass(
        module, layers, batches(), k=k, n_classes=1, mass_fraction=0.03, preprocess=bundle_norm
    ).top_k


def permuted_copy(study_file: Path) -> None:
    study = load_study(study_file)
    bundle, layers, info = load_model(study)
    rng = np.random.default_rng(0)
    perms = {i.name: rng.permutation(i.channels) for i in layers}
    copy = BuiltinCNN(int(info.n_classes or 0)).eval()
    copy.load_state_dict(permute_builtin_channels(bundle.module.state_dict(), perms))
    start = time.perf_counter()
    tops = [top_k_of(m, layers, study, study.top_k) for m in (bundle.module.eval(), copy)]
    n = sum(i.channels for i in layers)
    offsets = np.cumsum([0] + [i.channels for i in layers])
    truth = np.concatenate([offsets[j] + perms[i.name] for j, i in enumerate(layers)])
    units = unit_sets(
        np.concatenate([np.asarray(t["neuron_id"]) + j * n for j, t in enumerate(tops)]),
        np.concatenate([t["image_id"] for t in tops]),
        np.concatenate([t["rank"] for t in tops]),
        np.repeat([0, 1], n),
    )
    _, best = match_units(units, threshold=0.3)
    a = best.unit < n
    duplicated = units.duplicate_index()[:n] > 0
    lists = {}
    for u in range(n):
        s, e = units.indptr[u], units.indptr[u + 1]
        lists.setdefault(tuple(units.images[s:e][np.argsort(units.ranks[s:e])]), []).append(u)
    alike = np.zeros(n, dtype=bool)
    for members in lists.values():
        if len(members) > 1:
            alike[members] = True
    exact = best.match[a] - n == truth
    print(
        f"\npermuted copy of '{study.name}' ({n} units, top {study.top_k} of "
        f"{len(load_manifest(study)[0])} images; both passes and matching "
        f"{time.perf_counter() - start:.0f} s):"
    )
    print(
        f"  matched with Jaccard 1.0: {np.mean(best.jaccard[a] == 1.0):.1%}; mutual: "
        f"{np.mean(best.mutual[a]):.1%}; permutation undone exactly: {np.mean(exact):.1%} "
        f"({int(exact.sum())}/{n})"
    )
    print(
        f"  units whose top-k list (images and order) repeats another unit's of the same "
        f"network: {int(alike.sum())} (indistinguishable; {int(duplicated.sum())} beyond the "
        f"first of each group); exact among the others: {np.mean(exact[~alike]):.1%}"
    )


# ---- scaling -------------------------------------------------------------------------------
def synthetic_models(n: int, k: int, rng: np.random.Generator):
    """Model A: random top-k sets over ImageNet's ids; model B: 70% noisy copies of A's units
    (keeping 30-90% of the images), 30% unrelated."""
    a = rng.integers(0, IMAGENET, size=(n, k))
    b = rng.integers(0, IMAGENET, size=(n, k))
    copies = rng.random(n) < 0.7
    source = rng.integers(0, n, size=n)
    keep = rng.uniform(0.3, 0.9, size=n)
    mask = rng.random((n, k)) < keep[:, None]
    b = np.where(copies[:, None] & mask, a[source], b)
    rows = np.repeat(np.arange(2 * n), k)
    images = np.concatenate([a.ravel(), b.ravel()])
    ranks = np.tile(np.arange(1, k + 1), 2 * n)
    return rows, images, ranks


def exact_best(rows, images, n) -> tuple[np.ndarray, np.ndarray]:
    """Each A unit's best B unit by exact Jaccard (sparse product), or -1 below 0.3."""
    x = sp.csr_array(
        (np.ones(images.size, dtype=np.int32), (rows, images)), shape=(2 * n, IMAGENET)
    )
    x.data[:] = 1
    x.sum_duplicates()
    x.data[:] = 1
    sizes = np.asarray(x.sum(axis=1)).ravel()
    inter = (x[:n] @ x[n:].T).tocoo()
    jac = inter.data / (sizes[inter.row] + sizes[n + inter.col] - inter.data)
    order = np.lexsort((inter.col, -jac, inter.row))
    first = np.ones(order.size, dtype=bool)
    first[1:] = inter.row[order][1:] != inter.row[order][:-1]
    best = np.full(n, -1)
    best_j = np.zeros(n)
    chosen = order[first]
    best[inter.row[chosen]] = n + inter.col[chosen]
    best_j[inter.row[chosen]] = jac[chosen]
    best[best_j < 0.3] = -1
    return best, best_j


def scaling(k: int = 100) -> None:
    print(f"\nmatching 2 x n units (top-{k} sets over {IMAGENET:,} image ids), threshold 0.3:")
    print(
        f"  {'n':>7} {'seconds':>8} {'us/unit':>8} {'matched':>8}   (exact: scipy sparse X_A X_B')"
    )
    seconds = {}
    for scale in (1, 4, 16):
        n = PAPER_UNITS * scale
        rng = np.random.default_rng(scale)
        rows, images, ranks = synthetic_models(n, k, rng)
        start = time.perf_counter()
        units = unit_sets(rows, images, ranks, np.repeat([0, 1], n))
        pairs, best = match_units(units, threshold=0.3)
        seconds[scale] = time.perf_counter() - start
        matched = np.mean(best.match[best.unit < n] >= 0)
        per_unit = 1e6 * seconds[scale] / (2 * n)
        start = time.perf_counter()
        exact, _ = exact_best(rows, images, n)
        exact_s = time.perf_counter() - start
        lsh = best.match[best.unit < n]
        agree = np.mean(lsh[exact >= 0] == exact[exact >= 0])
        print(
            f"  {n:>7} {seconds[scale]:>8.2f} {per_unit:>8.1f} {matched:>8.1%} "
            f"{pairs.n_candidates:>10}   exact all "
            f"pairs {exact_s:.2f} s; LSH's best match = exact's for {agree:.2%} of the "
            f"{int((exact >= 0).sum())} units with one; none where exact has none: "
            f"{bool(np.all(lsh[exact < 0] < 0))}"
        )
    print(
        f"  time ratio 4x/1x {seconds[4] / seconds[1]:.1f}, 16x/1x {seconds[16] / seconds[1]:.1f} "
        "(linear: 4 and 16)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", default="data/bench-compare", help="where the studies live")
    ap.add_argument("--size", type=int, default=4000, help="images in the shapes world")
    ap.add_argument("--epochs", type=int, default=5, help="training epochs of the final network")
    ap.add_argument("--only", choices=["permuted", "studies", "scaling"], default=None)
    ap.add_argument("--fresh", action="store_true", help="re-run studies found in the folder")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    folder = Path(args.folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    files = study_files(folder, args.size, args.epochs)
    home = folder / ".dagster"
    home.mkdir(exist_ok=True)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        if args.only in (None, "permuted", "studies"):
            print(f"studies ({args.size} images, {args.epochs} epochs) in {folder}:")
            run_studies(
                files if args.only != "permuted" else {"final": files["final"]},
                instance,
                args.fresh,
            )
        if args.only in (None, "permuted"):
            permuted_copy(files["final"])
        if args.only in (None, "studies"):
            shares = {}
            for a, b in PAIRS:
                store = compare(folder, a, b, instance)
                layers = report_pair(store, a, b)
                shares[a] = layers["share"].to_list()
                print("  " + shape_of(shares[a]))
                report_concepts(store, a, b)
    if args.only in (None, "scaling"):
        scaling()


if __name__ == "__main__":
    main()
