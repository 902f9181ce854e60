"""The whole study at (a fraction of) the paper's scale: per-stage seconds, images/s, peak memory.

Generates an image folder of C classes x N images at 224 px (procedural: each class has its
own colour, stripe frequency and orientation, each image its own noise, phase and blob; no
download), writes a study file for a torchvision model (``weights: none``) and materializes
every asset of the graph, one asset (or partition) at a time in this process, recording:

* seconds per asset (partitioned assets: summed over their partitions, and the count);
* peak resident memory of each asset: the process's high-water mark (``VmHWM``) is reset
  before each asset through ``/proc/self/clear_refs`` (Linux), so each figure is that asset's
  own peak, including what the process held before it started;
* the bare forward pass over the same images (batch as in the study) in images/s, and the
  activation stage's ratio to it; for ``concept_graph``, seconds per class and their ratio to
  one forward + backward of ``graph.images_per_class`` images.

    python benchmarks/paper_scale.py                       # googlenet, 100 classes x 20, k=50
    python benchmarks/paper_scale.py --classes 20 --per-class 10   # a quick look
    # the paper's numbers, on a GPU machine (ImageNet-sized folder: ~1,300 per class):
    python benchmarks/paper_scale.py --paper --per-class 100 --device cuda --precision bf16 \
        --loader-workers 8 --shards 16 --batch-size 256

``--paper`` sets googlenet, 1,000 classes and k = 100 (the paper's study). The default
(googlenet, 100 classes x 20 images = 2,000, k = 50, 4 shards) is the "rehearsal" of issue 12
and finishes in well under 20 minutes on a 2-core CPU. ``--keep DIR`` keeps the folder, study
and database for inspection; ``--images-dir`` reuses an existing generated folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAPER = {"model": "googlenet", "classes": 1000, "top_k": 100}


def generate_images(root: Path, classes: int, per_class: int, size: int, seed: int = 0) -> None:
    """C class folders of N procedural JPEGs: class = colour + stripe frequency/orientation."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for c in range(classes):
        folder = root / f"class_{c:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = rng.uniform(0.1, 0.9, 3).astype(np.float32)
        freq = rng.uniform(2, 12)
        angle = rng.uniform(0, np.pi)
        for i in range(per_class):
            phase = rng.uniform(0, 2 * np.pi)
            stripes = 0.5 + 0.5 * np.sin(
                2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase
            )
            img = colour[None, None, :] * (0.4 + 0.6 * stripes[..., None])
            cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.25)
            blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
            img[blob] = rng.uniform(0, 1, 3)
            img += rng.normal(0, 0.06, img.shape).astype(np.float32)
            pixels = (np.clip(img, 0, 1) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


def write_study(path: Path, images_dir: Path, args: argparse.Namespace, database: Path) -> None:
    import yaml

    study = {
        "name": "paper-scale",
        "model": f"torchvision:{args.model}",
        "weights": "none",
        "dataset": {"kind": "imagefolder", "path": str(images_dir), "image_size": args.size},
        "layers": "auto",
        "device": args.device,
        "precision": args.precision,
        "loader_workers": args.loader_workers,
        "batch_size": args.batch_size,
        "shards": args.shards,
        "top_k": args.top_k,
        "seed": 0,
        "database": str(database),
    }
    path.write_text(yaml.safe_dump(study, sort_keys=False))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_gb() -> float:
    return _status_kib("VmHWM") / 2**20


def bare_forward(study, n_images: int) -> tuple[float, float]:
    """(images/s of the bare forward pass, seconds of one forward+backward of a class batch)."""
    import torch

    from carto_assets.stages.manifest import load_manifest, source_for_manifest
    from carto_assets.stages.model import load_model

    images, class_names = load_manifest(study)
    bundle, _, _ = load_model(study)
    model = bundle.module.eval()
    source = source_for_manifest(study, images, class_names)
    ids = images["image_id"].to_list()[:n_images]
    pixels, _ = source.load_many(ids, workers=4)
    x_all = bundle.normalize(torch.from_numpy(pixels))
    bs = study.batch_size
    with torch.inference_mode():
        model(x_all[:bs])  # warm-up
        start = time.perf_counter()
        for lo in range(0, len(x_all), bs):
            model(x_all[lo : lo + bs])
        fwd_s = time.perf_counter() - start
    x = x_all[: study.graph.images_per_class].clone().requires_grad_(True)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        out = model(x)
        out = out.logits if hasattr(out, "logits") else out
        out.sum().backward()
        best = min(best, time.perf_counter() - start)
    return len(x_all) / fwd_s, best


def run_assets(study_file: str, say, only: list[str] | None = None) -> list[dict]:
    """Materialize every asset (or those in ``only``) in dependency order, one
    asset/partition at a time."""
    import dagster as dg

    from carto_assets.definitions import ALL_ASSETS, build_definitions

    defs = build_definitions(study_file)
    resources = dict(defs.resources)
    graph = defs.resolve_asset_graph()
    order = [k for level in graph.toposorted_asset_keys_by_level for k in level]
    assets_by_key = {k: a for a in ALL_ASSETS for k in a.keys}
    rows = []
    instance = dg.DagsterInstance.get()
    for key in order:
        if key not in assets_by_key or (only and key.to_user_string() not in only):
            continue
        node = graph.get(key)
        partitions = node.partitions_def
        keys = (
            [None]
            if partitions is None
            else list(partitions.get_partition_keys(dynamic_partitions_store=instance))
        )
        reset_peak_rss()
        start = time.perf_counter()
        for pkey in keys:
            result = dg.materialize(
                ALL_ASSETS,
                selection=[key],
                resources=resources,
                instance=instance,
                partition_key=pkey,
                raise_on_error=True,
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
            assert result.success
        seconds = time.perf_counter() - start
        rows.append(
            {
                "asset": key.to_user_string(),
                "seconds": seconds,
                "partitions": len(keys) if partitions is not None else 0,
                "peak_rss_gb": peak_rss_gb(),
            }
        )
        extra = f"   ({len(keys)} partitions)" if partitions is not None else ""
        say(f"  {rows[-1]['asset']:<22} {seconds:8.1f} s   peak RSS {peak_rss_gb():.2f} GB{extra}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="googlenet")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--loader-workers", type=int, default=0)
    parser.add_argument("--paper", action="store_true", help="googlenet, 1,000 classes, k=100")
    parser.add_argument("--images-dir", type=Path, help="reuse a generated image folder")
    parser.add_argument("--keep", type=Path, help="keep the study, database and images here")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument(
        "--only",
        help="comma-separated assets to (re)materialize in a --keep folder that already holds "
        "the rest, e.g. --only neuron_embedding",
    )
    args = parser.parse_args()
    if args.paper:
        args.model, args.classes, args.top_k = PAPER["model"], PAPER["classes"], PAPER["top_k"]

    import torch

    work = args.keep or Path(tempfile.mkdtemp(prefix="carto-paper-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(work / "dagster_home")
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    (Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml").touch()
    images_dir = args.images_dir or work / "images"
    n_images = args.classes * args.per_class
    print(
        f"{args.model} (weights none), {args.classes} classes x {args.per_class} = {n_images} "
        f"images of {args.size} px, top_k {args.top_k}, {args.shards} shards, device "
        f"{args.device} {args.precision}; torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    if args.images_dir is None and not (images_dir / f"class_{args.classes - 1:04d}").is_dir():
        start = time.perf_counter()
        generate_images(images_dir, args.classes, args.per_class, args.size)
        print(f"generated {n_images} images in {time.perf_counter() - start:.1f} s", flush=True)
    study_file = work / "study.yaml"
    write_study(study_file, images_dir, args, work / "carto.duckdb")
    os.environ["CARTO_STUDY"] = str(study_file)

    from carto_assets.study import load_study

    study = load_study(study_file)
    start_all = time.perf_counter()
    only = args.only.split(",") if args.only else None
    rows = run_assets(str(study_file), lambda m: print(m, flush=True), only)
    total = time.perf_counter() - start_all

    import duckdb

    con = duckdb.connect(str(study.database_path), read_only=True)
    n_neurons = con.execute("SELECT count(*) FROM neurons").fetchone()[0]
    per_image = con.execute(
        "SELECT avg(n) FROM (SELECT count(*) AS n FROM top_images GROUP BY image_id)"
    ).fetchone()[0]
    try:
        n_classes_graph = con.execute(
            "SELECT count(DISTINCT label) FROM concept_graph_nodes"
        ).fetchone()[0]
    except duckdb.CatalogException:  # --only without the concept graph
        n_classes_graph = 0
    con.close()

    forward_ips, fwd_bwd_s = bare_forward(study, min(n_images, 4 * args.batch_size))
    by_asset = {r["asset"]: r for r in rows}
    act = by_asset.get("activations")
    graph_s = sum(r["seconds"] for r in rows if r["asset"].startswith("concept_graph"))
    summaries = [r for r in rows if r["asset"] not in ("images", "model", "activations")]
    print(
        f"\n{n_neurons} neurons, {per_image:.0f} top-k entries per image on average "
        f"(images in some top-k); bare forward {forward_ips:.1f} images/s; one forward+backward "
        f"of {study.graph.images_per_class} images {fwd_bwd_s:.2f} s"
    )
    print(f"\n{'asset':<28} {'seconds':>9} {'peak RSS GB':>12}")
    for r in rows:
        extra = f"  ({r['partitions']} partitions)" if r["partitions"] else ""
        print(f"{r['asset']:<28} {r['seconds']:>9.1f} {r['peak_rss_gb']:>12.2f}{extra}")
    print(f"{'total':<28} {total:>9.1f}")
    summary_s = sum(r["seconds"] for r in summaries)
    summary_peak = max((r["peak_rss_gb"] for r in summaries), default=0.0)
    print(f"{'summaries (after activations)':<28} {summary_s:>9.1f} {summary_peak:>12.2f}")
    if act:
        act_ips = n_images / act["seconds"]
        print(
            f"\nactivation stage {act_ips:.1f} images/s = {act_ips / forward_ips:.2f}x the bare "
            "forward pass's throughput"
        )
    if n_classes_graph:
        per_class = graph_s / n_classes_graph
        print(
            f"concept graph {per_class:.2f} s per class ({n_classes_graph} classes) = "
            f"{per_class / fwd_bwd_s:.1f}x one forward+backward of the class's "
            f"{study.graph.images_per_class} images"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": rows,
                    "total_s": total,
                    "n_neurons": n_neurons,
                    "topk_entries_per_image": per_image,
                    "forward_images_per_s": forward_ips,
                    "forward_backward_s": fwd_bwd_s,
                },
                indent=1,
            )
        )
    if args.keep is None and args.images_dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
