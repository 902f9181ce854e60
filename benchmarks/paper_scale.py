"""The whole study at (a fraction of) the paper's scale: per-stage seconds, images/s, peak memory.

Generates an image folder of C classes x N images at 224 px (procedural: each class has its
own colour, stripe frequency and orientation, each image its own noise, phase and blob; no
download), writes a study file for a torchvision model (``weights: none``) and materializes
every asset of the graph, one asset at a time (a partitioned asset: all its partitions one
after another, as ``carto run`` does), recording:

* seconds per asset (partitioned assets: summed over their partitions, and the count), the
  images per second that makes, and the ratio to the bare forward pass over the same images;
* peak resident memory of each asset (Linux ``VmHWM``). By default each asset runs in a fresh
  process, so each figure is that asset's own peak on top of the fixed cost of a process that
  imported torch, Dagster and the definitions (printed apart as ``baseline``). With
  ``--in-process`` every asset runs in this process, as ``carto run --jobs 1`` runs a study:
  the high-water mark is reset before each asset (``/proc/self/clear_refs``), so each figure
  is that asset's peak including whatever the process still holds from the assets before
  (printed apart as ``held``);
* the bare forward pass over the same images (batch as in the study) in images/s, and the
  activation stage's ratio to it; for ``concept_graph``, seconds per class and their ratio to
  one forward + backward of ``graph.images_per_class`` images.

    python benchmarks/paper_scale.py               # googlenet, 10 classes x 20, k=50 (< 20 min)
    python benchmarks/paper_scale.py --rehearsal   # issue 12's study: 100 classes x 20 = 2,000
    python benchmarks/paper_scale.py --rehearsal --per-class 40   # memory vs images
    # issue 21's ViT study: 6 classes x 8 images, a head that is not all zeros
    python benchmarks/paper_scale.py --model vit_b_16 --classes 6 --per-class 8 --nonzero-head
    # the paper's numbers, on a GPU machine (ImageNet-sized folder: ~1,300 per class):
    python benchmarks/paper_scale.py --paper --per-class 100 --device cuda --precision bf16 \
        --loader-workers 8 --shards 16 --batch-size 256

The default (googlenet's 9 auto blocks, 5,488 neurons, 10 classes x 20 images, k = 50, 4
shards) finishes in about 7 minutes on a 2-core CPU: every neuron-sized stage (patches,
co-occurrence, embedding, projection, views) runs at full size, and the per-class ones for
10 classes. ``--rehearsal`` is the "rehearsal" of issue 12 (100 classes x 20); ``--paper``
sets googlenet, 1,000 classes and k = 100 (the paper's study). ``--keep DIR`` keeps the
folder, study and database for inspection; ``--images-dir`` reuses a generated folder.

Measured on an idle 2-core CPU (2026-12-01, ``--rehearsal``, fresh process per asset): the
summaries take 357 s (issue 12's starting point: 871 s), their peak resident memory is 1.78 GB
(was 6.5 GB for the run), the embedding 8.6 s (was 601 s), the concept graph 2.5 s per class =
2.6x one forward+backward of the class's 16 images; with 40 images per class every summary's
peak is within 0.05 GB of the 20-image run's.

In one process (2026-12-07, ``--rehearsal --in-process``, code d5578f4, the machine at half to
two thirds of its 2026-12-01 speed): the summaries take 420 s = 5.9x the bare forward pass over the
2,000 images, their peak is 2.22 GB in the concept graph's chunks (1.21 GB held at their
start; docs/data_scale.md), the graph 2.67 s per class = 1.32x one forward + backward with
its explanations.
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
REHEARSAL = {"model": "googlenet", "classes": 100, "top_k": 50}


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
        "weights": args.weights,
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


def nonzero_head_checkpoint(model: str, path: Path) -> Path:
    """A random-init checkpoint whose classification head is drawn like a hidden linear layer
    (normal, std 0.02) instead of torchvision's zeros (ViTs), so the logits depend on the
    input and the concept graph's relevance is not zero everywhere."""
    import torch

    from carto_assets.core.network.zoo import torchvision_model

    torch.manual_seed(0)
    module = torchvision_model(model, "none")
    head = [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.normal_(head.weight, std=0.02)
    torch.save(module.state_dict(), path)
    return path


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

    from carto_assets.stages.images import load_manifest, source_for_manifest
    from carto_assets.stages.stored_model import load_model

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


def class_forward_backward(study, n_classes: int = 3) -> dict:
    """One forward + backward of a class's sampled images (the graph's own sample), averaged
    over the first ``n_classes`` classes, best of 3 each: with the parameters requiring grad
    (a training step's backward) and with them frozen (gradients to the input only). Run in
    the process that just computed the graph's chunks, so both share the machine's state."""

    from carto_assets.stages.prepared import PreparedStudy

    prepared = PreparedStudy.open(study)
    labels = list(range(min(n_classes, len(prepared.class_names))))
    return class_forward_backward_of(
        study, labels, prepared.images, prepared.source, prepared.bundle
    )


def class_forward_backward_of(study, labels, images, source, bundle) -> dict:
    """:func:`class_forward_backward` for these classes, the images' loading not timed."""
    from carto_assets.stages import concept_graph as graph_stage

    model = bundle.module.eval()
    times: dict[str, list[float]] = {
        "params": [],
        "frozen": [],
        "params_first": [],
        "frozen_first": [],
        "images": [],
    }
    for label in labels:
        _, _, x = graph_stage.class_images(study, label, images, source, bundle)
        for mode in ("params", "frozen"):
            flags = [p.requires_grad for p in model.parameters()]
            for p in model.parameters():
                p.requires_grad_(mode == "params")
            runs = []
            for _ in range(3):
                xx = x.clone().requires_grad_(True)
                start = time.perf_counter()
                out = model(xx)
                out = out.logits if hasattr(out, "logits") else out
                out.sum().backward()
                runs.append(time.perf_counter() - start)
            for p, flag in zip(model.parameters(), flags):
                p.requires_grad_(flag)
            model.zero_grad(set_to_none=True)
            times[mode].append(min(runs))  # the best of 3
            times[f"{mode}_first"].append(runs[0])  # a class's first, as the graph's work is
        times["images"].append(len(x))
    return {k: float(np.mean(v)) for k, v in times.items()}


def graph_breakdown(study) -> dict:
    """The graph chunks' own record: classes, stage seconds and seconds per step (summed)."""
    out = {"classes": 0, "seconds": 0.0, "steps": {}, "restarted": True}
    for summary in sorted((study.files_dir / "concept_graph").glob("*/summary.json")):
        chunk = json.loads(summary.read_text())
        out["classes"] += chunk["n_classes_computed"]
        out["seconds"] += chunk["seconds"]
        out["restarted"] = out["restarted"] and chunk.get("restarted", True)
        for step, seconds in chunk.get("steps", {}).items():
            out["steps"][step] = out["steps"].get(step, 0.0) + seconds
    return out


def print_graph_cost(row: dict, reference: dict, breakdown: dict) -> None:
    """Per class: the chunk's steps, the rest of the stage and Dagster's share, each as a
    ratio to one forward + backward of the class's images (both kinds)."""
    n = max(1, breakdown["classes"])
    per_step = {k: v / n for k, v in breakdown["steps"].items()}
    stage = breakdown["seconds"] / n
    asset = row["seconds"] / n
    fb, frozen = reference["params"], reference["frozen"]
    print(
        f"\nconcept graph per class ({breakdown['classes']} classes, "
        f"{reference['images']:.0f} images each), against one forward + backward of the class's "
        f"images measured in the same process: {fb:.2f} s (parameters requiring grad), "
        f"{frozen:.2f} s (frozen)"
    )
    print(f"  {'step':<32}{'seconds':>9}{'x F+B':>8}{'x frozen':>10}")
    explaining = per_step.pop("explanations", 0.0)
    scan = per_step.pop("misclassified", 0.0)
    rows = [
        *per_step.items(),
        ("other (load, read, assemble)", stage - explaining - scan - sum(per_step.values())),
    ]
    rows += [("= the graph (stage)", stage - explaining - scan)]
    rows += [("Dagster and writing", asset - stage)]
    rows += [("= the graph's asset, everything", asset - explaining - scan)]
    rows += [("explanations (issue 22, same step)", explaining)]
    rows += [("finding misclassified images", scan)]
    for name, seconds in rows:
        print(f"  {name:<32}{seconds:>9.3f}{seconds / fb:>8.2f}{seconds / frozen:>10.2f}")
    how = "restarted at their layers" if breakdown["restarted"] else "whole forward passes"
    print(f"  (ablation checks: {how})")


def asset_order(study_file: str) -> list[tuple[str, bool]]:
    """Every asset in dependency order, with whether it is partitioned."""
    from carto_assets.definitions import ALL_ASSETS, build_definitions

    defs = build_definitions(study_file)
    graph = defs.resolve_asset_graph()
    known = {k for a in ALL_ASSETS for k in a.keys}
    order, done = [], set()
    for level in graph.toposorted_asset_keys_by_level:
        for key in level:
            if key not in known or key in done:
                continue
            # A multi-asset (the graph's chunks and the explanations' chunks) runs as one step,
            # named by its first key in name order (concept_graph_chunk).
            keys = defs.resolve_assets_def(key).keys
            done.update(keys)
            name = min(k.to_user_string() for k in keys)
            order.append((name, graph.get(key).partitions_def is not None))
    return order


def materialize_asset(study_file: str, name: str) -> int:
    """Materialize one asset in this process, every partition of it one after another (as
    ``carto run --jobs 1`` does); returns the number of partitions (0: unpartitioned)."""
    import dagster as dg

    from carto_assets.definitions import ALL_ASSETS, build_definitions

    defs = build_definitions(study_file)
    key = dg.AssetKey(name)
    partitions = defs.resolve_asset_graph().get(key).partitions_def
    selection = list(defs.resolve_assets_def(key).keys)  # all of a multi-asset's keys
    instance = dg.DagsterInstance.get()
    keys = (
        [None]
        if partitions is None
        else list(partitions.get_partition_keys(dynamic_partitions_store=instance))
    )
    for pkey in keys:
        result = dg.materialize(
            ALL_ASSETS,
            selection=selection,
            resources=dict(defs.resources),
            instance=instance,
            partition_key=pkey,
            raise_on_error=True,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        assert result.success
    return 0 if partitions is None else len(keys)


def worker(study_file: str, name: str) -> None:
    """``--worker``: one asset in this fresh process; prints a JSON line with its figures.

    ``baseline_rss_gb`` is the process after importing torch, Dagster and the definitions
    (what every process pays before any work); ``peak_rss_gb`` the high-water mark of the
    whole process, the baseline included.
    """
    from carto_assets.definitions import build_definitions

    build_definitions(study_file)
    baseline = _status_kib("VmRSS") / 2**20
    row = {**timed_materialize(study_file, name), "baseline_rss_gb": baseline}
    if name == "concept_graph_chunk":
        from carto_assets.study import load_study

        row["forward_backward"] = class_forward_backward(load_study(study_file))
    print("RESULT " + json.dumps(row), flush=True)


def timed_materialize(study_file: str, name: str) -> dict:
    """Materialize one asset here: its seconds, partition count and the process's peak."""
    start = time.perf_counter()
    n_partitions = materialize_asset(study_file, name)
    return {
        "asset": name,
        "seconds": time.perf_counter() - start,
        "partitions": n_partitions,
        "peak_rss_gb": peak_rss_gb(),
    }


def run_assets(
    study_file: str, say, only: list[str] | None = None, isolate: bool = True
) -> list[dict]:
    """Materialize every asset (or those in ``only``) in dependency order.

    ``isolate``: each asset in a fresh process (``--worker``), so each figure is that asset's
    own peak plus the fixed cost of a process that imported torch and Dagster (shown apart).
    Otherwise all in this process, as ``carto run --jobs 1`` runs a study: the high-water mark
    is reset before each asset, so each figure is that asset's peak including whatever the
    process still holds from the assets before it.
    """
    import subprocess

    rows = []
    for name, _ in asset_order(study_file):
        if only and name not in only:
            continue
        if isolate:
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", name, "--study-file", study_file],
                capture_output=True,
                text=True,
            )
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                say(proc.stdout[-3000:] + proc.stderr[-3000:])
                raise SystemExit(f"{name} failed in its worker process")
            row = json.loads(lines[-1][len("RESULT ") :])
        else:
            from carto_assets.runtime.memory import release_memory

            release_memory()
            reset_peak_rss()
            held = _status_kib("VmRSS") / 2**20
            row = {**timed_materialize(study_file, name), "held_rss_gb": held}
            if name == "concept_graph_chunk":
                from carto_assets.study import load_study

                row["forward_backward"] = class_forward_backward(load_study(study_file))
        rows.append(row)
        extra = f"   ({row['partitions']} partitions)" if row["partitions"] else ""
        say(f"  {name:<22} {row['seconds']:8.1f} s   peak RSS {row['peak_rss_gb']:.2f} GB{extra}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="googlenet")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--loader-workers", type=int, default=0)
    parser.add_argument("--paper", action="store_true", help="googlenet, 1,000 classes, k=100")
    parser.add_argument(
        "--rehearsal", action="store_true", help="issue 12's study: googlenet, 100 classes, k=50"
    )
    parser.add_argument("--images-dir", type=Path, help="reuse a generated image folder")
    parser.add_argument(
        "--nonzero-head",
        action="store_true",
        help="random weights with the head drawn like a hidden layer (ViTs start it at zero, "
        "which makes every logit constant), saved as the study's checkpoint",
    )
    parser.add_argument("--keep", type=Path, help="keep the study, database and images here")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument(
        "--only",
        help="comma-separated assets to (re)materialize in a --keep folder that already holds "
        "the rest, e.g. --only neuron_embedding",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every asset in this one process, as `carto run --jobs 1` does (default: each "
        "asset in a fresh process)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--study-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.study_file, args.worker)
        return
    for flag, preset in (("paper", PAPER), ("rehearsal", REHEARSAL)):
        if getattr(args, flag):
            args.model, args.classes, args.top_k = (
                preset["model"],
                preset["classes"],
                preset["top_k"],
            )

    import torch

    work = args.keep or Path(tempfile.mkdtemp(prefix="carto-paper-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(work / "dagster_home")
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    (Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
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
    args.weights = "none"
    if args.nonzero_head:
        args.weights = str(nonzero_head_checkpoint(args.model, work / "model_nonzero_head.pt"))
    write_study(study_file, images_dir, args, work / "carto.duckdb")
    from carto_assets.runtime.environment import STUDY_ENV_VAR
    from carto_assets.stages.prepared import open_store
    from carto_assets.study import load_study

    os.environ[STUDY_ENV_VAR] = str(study_file)

    study = load_study(study_file)
    start_all = time.perf_counter()
    only = args.only.split(",") if args.only else None
    rows = run_assets(
        str(study_file), lambda m: print(m, flush=True), only, isolate=not args.in_process
    )
    total = time.perf_counter() - start_all

    import duckdb

    def scalar(sql: str, default):
        try:
            return con.execute(sql).fetchone()[0]
        except duckdb.CatalogException:  # --only: the table is not there (yet)
            return default

    with open_store(study).connect() as con:
        n_neurons = scalar("SELECT count(*) FROM neurons", 0)
        per_image = scalar(
            "SELECT avg(n) FROM (SELECT count(*) AS n FROM top_images GROUP BY image_id)", 0.0
        )
        n_classes_graph = scalar("SELECT count(DISTINCT label) FROM concept_graph_nodes", 0)

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
    forward_s = n_images / forward_ips  # the bare forward pass over every image
    isolated = not args.in_process
    how = (
        "each asset in a fresh process; peak = the process's high-water mark"
        if isolated
        else "all assets in one process; peak = high-water mark since the asset started"
    )
    print(f"\n({how})")
    header = f"{'asset':<28} {'seconds':>9} {'images/s':>9} {'x forward':>9} {'peak RSS GB':>12}"
    print(header + f" {'baseline GB' if isolated else 'held GB':>12}")
    for r in rows:
        extra = f"  ({r['partitions']} partitions)" if r["partitions"] else ""
        base = f" {r['baseline_rss_gb' if isolated else 'held_rss_gb']:>12.2f}"
        print(
            f"{r['asset']:<28} {r['seconds']:>9.1f} {n_images / max(r['seconds'], 1e-9):>9.1f} "
            f"{r['seconds'] / forward_s:>9.2f} {r['peak_rss_gb']:>12.2f}{base}{extra}"
        )
    print(f"{'total':<28} {total:>9.1f} {n_images / total:>9.1f} {total / forward_s:>9.2f}")
    summary_s = sum(r["seconds"] for r in summaries)
    summary_peak = max((r["peak_rss_gb"] for r in summaries), default=0.0)
    print(
        f"{'summaries (after activations)':<28} {summary_s:>9.1f} "
        f"{n_images / max(summary_s, 1e-9):>9.1f} {summary_s / forward_s:>9.2f} "
        f"{summary_peak:>12.2f}"
    )
    print(
        "baseline: the worker process after importing torch, Dagster and the definitions, "
        "before any work (in every peak)"
        if isolated
        else "held: what the process holds when the asset starts (garbage collected and "
        "trimmed, as `carto run` does after each asset), in its peak"
    )
    print(
        "x forward: the asset's seconds over the bare forward pass's over the same "
        f"{n_images} images ({forward_s:.1f} s)"
    )
    if act:
        act_ips = n_images / act["seconds"]
        print(
            f"\nactivation stage {act_ips:.1f} images/s = {act_ips / forward_ips:.2f}x the bare "
            "forward pass's throughput"
        )
    chunk_row = by_asset.get("concept_graph_chunk")
    if n_classes_graph and chunk_row and "forward_backward" in chunk_row:
        print_graph_cost(chunk_row, chunk_row["forward_backward"], graph_breakdown(study))
    elif n_classes_graph:
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
