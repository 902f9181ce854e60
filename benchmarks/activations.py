"""Activation stage vs a bare forward pass, and peak memory vs dataset size.

Measured side by side in one run, on the same model, images and batch size:

1. time: the bare forward pass over the images vs the activation stage (hooks, spatial
   max/argmax, streaming top-k merge, per-class statistics) vs the same stage keeping the
   labels' sample (every unit's maximum on a seeded sample of the images, ``--sample``; all of
   them by default, the most it can cost), interleaved repeats; the ratios use each side's
   fastest repeat (other processes on a small machine only ever add time), the medians are
   printed beside them; on a busy machine the difference drowns in noise, so the sample's own
   work (:class:`SampleMaxima` alone, on the same shapes of activations) is timed too;
   the streaming top-k merge alone is timed with and without its CPU prefilter (only the
   values above a unit's k-th kept value are sorted), on the same values, results compared;
   and the stage finding every image's position for every unit (``all_positions=True``),
   the reference the stage's default (on CPU, positions only where a value can enter a
   unit's top-k) must equal: top-k and class statistics compared;
2. memory: peak resident memory of the activation stage, keeping a sample of
   ``--memory-sample`` images, over N and 10N images, each in a fresh subprocess, with images
   generated batch by batch so the dataset itself is never in memory;
3. with ``--study FILE``, on a mapped study's own images instead (its model, dictionaries,
   loader, batch size, top-k and labels' sample; the first ``--images`` of shard 0):
   loading them through the stage's loader plus a bare forward pass, against the activation
   stage as a shard runs it (its loader included, nothing written), and the same stage
   without the study's dictionaries and sample (channels only: what a bare forward pass can
   be compared with), interleaved repeats; the issue-30 target is stage / (load + forward)
   <= 1.1. Then the same three batch by batch: each batch read once through the stage's
   loader (timed), then a bare forward pass over it, the stage's step and the channels-only
   step, in an order that turns with every batch (each side on its own copy of the model: the
   stage's hooks are on its own). This machine's speed drifts by 10-30% over seconds, more
   than the difference measured; batch by batch the sides stay within a batch of each other,
   so that ratio, (load + stage) / (load + forward) summed over the batches, is the one that
   holds from run to run. ``--batch-sizes 128,512`` reads the same images in batches of each
   size instead of the study's: both measurements for each, the batch-by-batch repeats of the
   sizes alternated, then each size's milliseconds per image against the first size's. A
   larger batch spreads the stage's per-batch work over more images, which lowers the ratio,
   but can slow the bare forward pass as well (on the 1.28M study, 512 against 128: the
   ratio 1.09 against 1.15, the stage 2.5% slower per image): choose a size by the
   milliseconds per image, not by the ratio.

    python benchmarks/activations.py                         # built-in CNN, 64 px
    python benchmarks/activations.py --study STUDY.yaml --images 10000
    python benchmarks/activations.py --study STUDY.yaml --images 10000 --batch-sizes 128,512
    python benchmarks/activations.py --model torchvision:resnet50 --size 224 --images 256
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carto_assets.core.network.layers import probe_layers, resolve_layers
from carto_assets.core.network.recorder import (
    PRECISIONS,
    Batch,
    SampleMaxima,
    StreamingTopK,
    activation_pass,
)
from carto_assets.core.network.zoo import BuiltinCNN, torchvision_model
from carto_assets.core.sae.dictionaries import sample_image_ids


def build(model_spec: str, size: int):
    if model_spec == "builtin":
        model, key = BuiltinCNN(num_classes=8), "builtin"
    else:
        key = model_spec.split(":", 1)[1]
        model = torchvision_model(key, "none")
    model.eval()
    layers = resolve_layers(probe_layers(model, size), "auto", key)
    return model, layers


def batches(n_images: int, batch_size: int, size: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    for lo in range(0, n_images, batch_size):
        b = min(batch_size, n_images - lo)
        yield Batch(
            image_ids=torch.arange(lo, lo + b),
            images=torch.randn(b, 3, size, size, generator=gen),
            labels=torch.randint(0, 8, (b,), generator=gen),
        )


def time_pair(model, layers, n_images, batch_size, size, k, repeats, device="cpu", sample=None):
    device = torch.device(device)
    model.to(device)
    data = [
        Batch(b.image_ids, b.images.to(device), b.labels)
        for b in batches(n_images, batch_size, size)
    ]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    bare, stage, sampled, every = [], [], [], []
    sample_ids = sample_image_ids(torch.arange(n_images).numpy(), sample, seed=0)
    results = {}

    def run_bare():
        t = time.perf_counter()
        with torch.inference_mode():
            for b in data:
                model(b.images)
            sync()
        return time.perf_counter() - t

    def run_stage(ids=None, all_positions=None):
        t = time.perf_counter()
        result = activation_pass(
            model,
            layers,
            iter(data),
            k=k,
            n_classes=8,
            mass_fraction=0.03,
            device=device,
            sample_ids=ids,
            all_positions=all_positions,
        )
        sync()
        assert ids is None or len(result.unit_maxima["image_id"]) == len(ids)
        if ids is None:  # the plain stage and its reference, compared below
            results["every" if all_positions else "stage"] = result
        return time.perf_counter() - t

    run_bare(), run_stage(), run_stage(sample_ids)  # warm-up (allocator, oneDNN primitives)
    for _ in range(repeats):
        bare.append(run_bare())
        stage.append(run_stage())
        sampled.append(run_stage(sample_ids))
        every.append(run_stage(all_positions=True))
    # Finding every position is the reference the default (on CPU: only those that can enter
    # a unit's top-k) must equal.
    stage_result, every_result = results["stage"], results["every"]
    for table in ("top_k", "class_stats"):
        ours, reference = getattr(stage_result, table), getattr(every_result, table)
        if not all(np.array_equal(ours[c], reference[c]) for c in reference):
            raise SystemExit(f"the stage's {table} differs from the one finding every position")
    return (
        (min(bare), min(stage), min(sampled), min(every)),
        (
            statistics.median(bare),
            statistics.median(stage),
            statistics.median(sampled),
            statistics.median(every),
        ),
        len(sample_ids),
    )


def sample_alone(n_units: int, n_images: int, batch_size: int, sample, repeats: int) -> float:
    """Seconds :class:`SampleMaxima` takes to keep ``sample`` of ``n_images`` images' rows
    from batches of (batch_size, n_units) activations (fastest repeat, buffer included)."""
    ids = sample_image_ids(torch.arange(n_images).numpy(), sample, seed=0)
    values = torch.randn(batch_size, n_units)
    best = float("inf")
    for _ in range(max(repeats, 3)):
        start = time.perf_counter()
        kept = SampleMaxima(ids, n_units, torch.device("cpu"))
        for lo in range(0, n_images, batch_size):
            b = min(batch_size, n_images - lo)
            kept.update(values[:b], torch.arange(lo, lo + b))
        kept.result()
        best = min(best, time.perf_counter() - start)
    return best


def topk_merge(
    n_units: int, n_images: int, batch_size: int, k: int, repeats: int
) -> tuple[float, float]:
    """Seconds of the streaming top-k merge alone over ``n_images`` of ReLU-like values, with
    the CPU prefilter (only values above a unit's k-th are sorted) and without it (every new
    value sorted with the kept ones), interleaved; raises if their results differ."""
    gen = torch.Generator().manual_seed(0)
    values = torch.relu(torch.randn(n_images, n_units, generator=gen))
    pos = torch.randint(0, 8, (n_images, n_units), generator=gen)
    times: dict[bool, list[float]] = {True: [], False: []}
    results = {}
    for _ in range(repeats):
        for prefilter in (True, False):
            topk = StreamingTopK(n_units, k, prefilter=prefilter)
            start = time.perf_counter()
            for lo in range(0, n_images, batch_size):
                hi = min(lo + batch_size, n_images)
                topk.update(values[lo:hi], torch.arange(lo, hi), pos[lo:hi], pos[lo:hi])
            times[prefilter].append(time.perf_counter() - start)
            results[prefilter] = topk.result()
    if any(not np.array_equal(results[True][c], results[False][c]) for c in results[True]):
        raise AssertionError("the prefiltered top-k differs from the full merge")
    return min(times[True]), min(times[False])


def memory_child(args) -> None:
    model, layers = build(args.model, args.size)
    start = time.perf_counter()
    activation_pass(
        model,
        layers,
        batches(args.n, args.batch_size, args.size),
        k=args.k,
        n_classes=8,
        mass_fraction=0.03,
        sample_ids=sample_image_ids(torch.arange(args.n).numpy(), args.memory_sample, seed=0),
    )
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = time.perf_counter() - start
    print(json.dumps({"peak_mib": peak_kib / 1024, "seconds": seconds}))


def peak_memory(args, n: int) -> tuple[float, float]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child-memory",
            "--n",
            str(n),
            "--model",
            args.model,
            "--size",
            str(args.size),
            "--batch-size",
            str(args.batch_size),
            "--k",
            str(args.k),
            "--memory-sample",
            str(args.memory_sample),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["peak_mib"], result["seconds"]


@dataclass
class StudyImages:
    """A mapped study ready to time: its first ``n_images`` of shard 0, its model on the study's
    device in its layout, its precision and the part of its labels' sample among the images."""

    prepared: object
    ids: np.ndarray
    labels: np.ndarray
    device: torch.device
    model: torch.nn.Module
    dtype: torch.dtype | None
    sample: np.ndarray | None

    @classmethod
    def load(cls, study_file: str, n_images: int, batch_size: int | None = None) -> StudyImages:
        """The study at ``study_file``, read with ``batch_size`` images per batch instead of
        its own where given (nothing else changes: the stage takes it from the study)."""
        import polars as pl

        from carto_assets.core.network.zoo import resolve_device
        from carto_assets.stages.activations import label_sample_ids
        from carto_assets.stages.prepared import PreparedStudy
        from carto_assets.study import load_study

        study = load_study(study_file)
        if batch_size is not None:
            study = study.model_copy(update={"batch_size": batch_size})
        prepared = PreparedStudy.open(study)
        study, images = prepared.study, prepared.images
        part = images.filter(pl.col("shard") == 0).sort("image_id").head(n_images)
        ids = part["image_id"].to_numpy()
        device = resolve_device(study.device)
        model = prepared.model[0].module.to(device).eval()
        # Every side in the study's layout and precision (the stage converts the model anyway).
        if study.channels_last:
            model.to(memory_format=torch.channels_last)
        sample = label_sample_ids(study, images)
        return cls(
            prepared,
            ids,
            part["label"].to_numpy(),
            device,
            model,
            PRECISIONS[study.precision],
            None if sample is None else np.intersect1d(sample, ids),
        )

    @property
    def batch_size(self) -> int:
        return int(self.prepared.study.batch_size)

    @cached_property
    def copies(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """Two copies of the model, made once: the bare forward pass's and the channels-only
        stage's (the stage's hooks are on the study's module)."""
        return copy.deepcopy(self.model), copy.deepcopy(self.model)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def forward(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """A bare forward pass of ``model`` over a batch of the stage's loader, as the stage
        runs it (normalized on the device, precision, layout): the predicted classes."""
        study, normalize = self.prepared.study, self.prepared.model[0].normalize
        dtype, device = self.dtype, self.device
        autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            x = normalize(batch.images.to(device, non_blocking=True))
            if study.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return model(x).argmax(dim=1)  # stays on the device until the end


def study_pair(on: StudyImages, repeats: int) -> tuple[dict[str, list[float]], int]:
    """Seconds of each repeat, interleaved, and the images timed: ``load_forward`` (the
    stage's loader and a bare forward pass in the study's precision and memory layout),
    ``stage`` (:func:`pass_over`, the pass as ``run_shard`` runs it) and ``channels`` (the
    same without dictionaries and sample)."""
    from carto_assets.stages.activations import pass_over, study_batches

    prepared, ids, labels, device = on.prepared, on.ids, on.labels, on.device
    study = prepared.study
    _, layers = prepared.model
    features = prepared.feature_layers
    sample = on.sample
    # Each side's images and predicted classes, from its last repeat: compared at the end.
    predicted: dict[str, np.ndarray] = {}

    def load_forward() -> float:
        on.sync()
        start = time.perf_counter()
        outputs = [on.forward(on.model, b) for b in study_batches(prepared, ids, labels, device)]
        on.sync()
        seconds = time.perf_counter() - start
        predicted["load_forward"] = torch.cat(outputs).cpu().numpy()
        return seconds

    def stage(channels_only: bool = False) -> float:
        on.sync()
        start = time.perf_counter()
        result = pass_over(
            prepared,
            ids,
            labels,
            device,
            sample_ids=None if channels_only else sample,
            features=not channels_only,
        )
        on.sync()
        seconds = time.perf_counter() - start
        got = result.predictions or {"predicted": np.array([], dtype=np.int64)}
        predicted["channels" if channels_only else "stage"] = got["predicted"]
        return seconds

    runs = {
        "load_forward": load_forward,
        "stage": stage,
        "channels": lambda: stage(channels_only=True),
    }

    print(
        f"study {study.name}: {len(ids)} images of shard 0, {len(layers)} layers and "
        f"{len(features)} feature layers, batch {study.batch_size}, k={study.top_k}, "
        f"{0 if sample is None else len(sample)} of them in the labels' sample, "
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )
    load_forward()  # warm-up: page cache, allocator
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(repeats):  # alternated, the order reversed every other time
        for name in list(runs) if i % 2 == 0 else list(runs)[::-1]:
            times[name].append(runs[name]())
        print(
            f"  repeat {i + 1}: load + forward {times['load_forward'][-1]:.2f} s, "
            f"stage {times['stage'][-1]:.2f} s, channels only {times['channels'][-1]:.2f} s",
            flush=True,
        )
    # The three sides ran the same model on the same images: anything else is a bug here.
    same = [np.array_equal(predicted["load_forward"], predicted[n]) for n in ("stage", "channels")]
    print(
        f"the same {len(predicted['load_forward'])} images and predicted classes on every side: "
        f"stage {'yes' if same[0] else 'NO'}, channels only {'yes' if same[1] else 'NO'}",
        flush=True,
    )
    if not all(same):
        raise SystemExit("the stage did not see the images the bare forward pass saw")
    return times, len(ids)


def study_steps(sides: list[StudyImages], repeats: int) -> list[list[dict[str, float]]]:
    """:func:`study_repeat` ``repeats`` times for each of ``sides`` (the same images read in
    batches of other sizes), the sides alternated, their order reversed every other repeat:
    per side, each repeat's seconds."""
    out: list[list[dict[str, float]]] = [[] for _ in sides]
    for r in range(repeats):
        order = list(range(len(sides)))
        for j in order if r % 2 == 0 else order[::-1]:
            out[j].append(study_repeat(sides[j], r, label=len(sides) > 1))
    return out


def study_repeat(on: StudyImages, r: int, label: bool = False) -> dict[str, float]:
    """One repeat's seconds summed over the batches: ``load`` (the stage's loader),
    ``forward`` (a bare forward pass, the study's precision and layout), ``stage``
    (:func:`study_pass`'s step, as a shard runs it) and ``channels`` (the same without
    dictionaries and sample), the three timed on each batch in an order that turns with the
    batch (and with ``r``). ``label``: the printed line names the batch size."""
    from carto_assets.stages.activations import study_batches, study_pass

    prepared, ids, labels, device = on.prepared, on.ids, on.labels, on.device
    bare, channels_model = on.copies
    predicted: list[torch.Tensor] = []

    def forward(batch) -> None:
        predicted.append(on.forward(bare, batch))

    stage = study_pass(prepared, ids, device, sample_ids=on.sample)
    channels = study_pass(prepared, ids, device, features=False, model=channels_model)
    sides = [("forward", forward), ("stage", stage.step), ("channels", channels.step)]
    seconds = dict.fromkeys(["load", *[name for name, _ in sides]], 0.0)
    with stage, channels:
        start = time.perf_counter()
        for i, batch in enumerate(study_batches(prepared, ids, labels, device)):
            seconds["load"] += time.perf_counter() - start
            turn = (i + r) % len(sides)
            for name, run in sides[turn:] + sides[:turn]:
                on.sync()
                begin = time.perf_counter()
                run(batch)
                on.sync()
                seconds[name] += time.perf_counter() - begin
            start = time.perf_counter()  # the next batch's read
        seconds["load"] += time.perf_counter() - start  # the loader's end
    results = {"stage": stage.result(), "channels": channels.result()}
    # The three sides ran the same model on the same images: anything else is a bug here.
    reference = torch.cat(predicted).cpu().numpy()
    for name, result in results.items():
        if not np.array_equal(result.predictions["predicted"], reference):
            raise SystemExit(f"batch by batch, the {name} side predicted other classes")
    seconds["images"] = float(len(reference))
    print(
        f"  batch by batch {r + 1}{f' (batch {on.batch_size})' if label else ''}: load "
        f"{seconds['load']:.2f} s, forward {seconds['forward']:.2f} s, stage "
        f"{seconds['stage']:.2f} s, channels only {seconds['channels']:.2f} s "
        f"({len(reference)} images, the same predicted classes)",
        flush=True,
    )
    return seconds


def print_study_steps(steps: list[dict[str, float]], batch: int | None = None) -> None:
    total = {name: sum(s[name] for s in steps) for name in steps[0]}
    at = f" (batch {batch})" if batch is not None else ""
    for name, side in (("stage", "stage"), ("channels only", "channels")):
        each = [(s["load"] + s[side]) / (s["load"] + s["forward"]) for s in steps]
        ratio = (total["load"] + total[side]) / (total["load"] + total["forward"])
        print(
            f"batch by batch{at}, {name} / (load + forward): {ratio:.3f} over every repeat "
            f"(target <= 1.1); each repeat {', '.join(f'{x:.3f}' for x in each)}; the "
            f"{name} alone {total[side] / total['forward']:.2f}x the bare forward pass"
        )


def print_batch_sizes(sizes: list[int], steps: list[list[dict[str, float]]]) -> None:
    """The batch sizes side by side: each side's milliseconds per image, summed over every
    repeat, against the first size's."""
    print("batch sizes side by side (batch by batch, every repeat, the sizes alternated):")
    first: dict[str, float] = {}
    for size, runs in zip(sizes, steps):
        images = sum(s["images"] for s in runs)
        per = {
            "load + forward": sum(s["load"] + s["forward"] for s in runs) / images,
            "load + stage": sum(s["load"] + s["stage"] for s in runs) / images,
            "load + channels only": sum(s["load"] + s["channels"] for s in runs) / images,
        }
        first = first or per
        print(
            f"  batch {size}: "
            + ", ".join(
                f"{name} {1e3 * ms:.4f} ms per image ({ms / first[name]:.3f}x batch {sizes[0]}'s)"
                for name, ms in per.items()
            )
        )


def print_study_pair(times: dict[str, list[float]], n_images: int) -> None:
    ref, stage = times["load_forward"], times["stage"]
    print(
        f"load + bare forward: {min(ref):8.2f} s  ({n_images / min(ref):7.0f} images/s), "
        f"median {statistics.median(ref):.2f} s"
    )
    print(
        f"activation stage   : {min(stage):8.2f} s  ({n_images / min(stage):7.0f} images/s), "
        f"median {statistics.median(stage):.2f} s"
    )
    channels = times["channels"]
    print(
        f"channels only      : {min(channels):8.2f} s  ({n_images / min(channels):7.0f} "
        f"images/s), median {statistics.median(channels):.2f} s"
    )
    for name, side in (("stage", stage), ("channels only", channels)):
        pairs = [s / r for s, r in zip(side, ref)]
        print(
            f"{name} / (load + forward): {min(side) / min(ref):.3f} fastest against fastest "
            f"(target <= 1.1); medians {statistics.median(side) / statistics.median(ref):.3f}; "
            f"each repeat {', '.join(f'{x:.3f}' for x in pairs)}"
        )


def batch_sizes(text: str) -> list[int]:
    """``--batch-sizes``: positive integers, comma-separated."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated integers: {text!r}") from None
    if not sizes or min(sizes) < 1 or len(set(sizes)) < len(sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be distinct and >= 1, got {text!r}")
    return sizes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="builtin", help="builtin or torchvision:<name>")
    p.add_argument("--device", default="cpu", help="cpu or cuda (timing; memory runs on cpu)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--images", type=int, default=2048, help="images for the timing comparison")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--sample",
        type=int,
        default=None,
        help="images of the labels' sample in the timing comparison (default: all of them)",
    )
    p.add_argument("--memory-images", type=int, default=1000, help="N; memory also runs 10N")
    p.add_argument(
        "--memory-sample", type=int, default=500, help="images of the sample in the memory runs"
    )
    p.add_argument(
        "--study",
        help="a mapped study's file: its own images, model, device and settings (see 3.); "
        "--model, --size, --device, --batch-size, --k and --sample are then the study's",
    )
    p.add_argument(
        "--batch-sizes",
        type=batch_sizes,
        default=[None],
        help="with --study: comma-separated batch sizes to read its images in instead of the "
        "study's (e.g. 128,512); with several, each is measured and they are compared side by "
        "side, batch by batch",
    )
    p.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_memory:
        memory_child(args)
        return
    if args.study:
        sides = [StudyImages.load(args.study, args.images, size) for size in args.batch_sizes]
        for on in sides:
            times, n_images = study_pair(on, args.repeats)
            print_study_pair(times, n_images)
        steps = study_steps(sides, args.repeats)
        several = len(sides) > 1
        for on, runs in zip(sides, steps):
            print_study_steps(runs, on.batch_size if several else None)
        if several:
            print_batch_sizes([on.batch_size for on in sides], steps)
        return
    torch.manual_seed(0)
    model, layers = build(args.model, args.size)
    n_neurons = sum(i.channels or 0 for i in layers)
    print(
        f"model {args.model} at {args.size}px, {len(layers)} layers, {n_neurons} neurons, "
        f"batch {args.batch_size}, k={args.k}, torch threads {torch.get_num_threads()}"
    )
    (bare, stage, sampled, every), (bare_med, stage_med, sampled_med, every_med), n_sampled = (
        time_pair(
            model,
            layers,
            args.images,
            args.batch_size,
            args.size,
            args.k,
            args.repeats,
            args.device,
            args.sample,
        )
    )
    print(
        f"bare forward     : {bare:8.2f} s  ({args.images / bare:7.0f} images/s), "
        f"median {bare_med:.2f} s"
    )
    print(
        f"activation stage : {stage:8.2f} s  ({args.images / stage:7.0f} images/s), "
        f"median {stage_med:.2f} s"
    )
    print(
        f"stage + sample   : {sampled:8.2f} s  ({args.images / sampled:7.0f} images/s), "
        f"median {sampled_med:.2f} s   ({n_sampled} images' maxima of {n_neurons} units kept)"
    )
    print(
        f"every position   : {every:8.2f} s  ({args.images / every:7.0f} images/s), "
        f"median {every_med:.2f} s   (the stage finding every image's position for every "
        f"unit: {every / stage:.2f}x its time; the same top-k and class statistics"
        f"{'' if args.device == 'cpu' else '; off CPU the stage finds every one too'})"
    )
    print(
        f"ratio stage/bare : {stage / bare:8.3f}   (target <= 1.15; medians: "
        f"{stage_med / bare_med:.3f})"
    )
    print(
        f"sample's cost    : {100 * (sampled / stage - 1):+7.1f}%   of the stage (target <= 5%; "
        f"medians: {100 * (sampled_med / stage_med - 1):+.1f}%)"
    )
    alone = sample_alone(n_neurons, args.images, args.batch_size, args.sample, args.repeats)
    print(
        f"sample alone     : {alone * 1e3:8.2f} ms = {100 * alone / stage:.2f}% of the stage "
        "(SampleMaxima on the same shapes, buffer included)"
    )
    merge_images = max(args.images, 10_000)
    fast, full = topk_merge(n_neurons, merge_images, args.batch_size, args.k, args.repeats)
    print(
        f"top-k merge alone: {fast:8.3f} s with the prefilter, {full:.3f} s sorting every new "
        f"value ({full / fast:.2f}x; {merge_images} images of {n_neurons} units, same result)"
    )
    n = args.memory_images
    print(f"memory runs keep a sample of {args.memory_sample} images' maxima")
    (m1, t1), (m10, t10) = peak_memory(args, n), peak_memory(args, 10 * n)
    print(f"peak RSS {n:>7} images: {m1:8.1f} MiB   ({t1:.2f} s)")
    print(f"peak RSS {10 * n:>7} images: {m10:8.1f} MiB   ({t10:.2f} s)")
    print(f"memory growth for 10x images: {100 * (m10 / m1 - 1):+.1f}%   (target < 10%)")
    print(f"time for 10x images: {t10 / t1:.2f}x   (linear: 10x)")


if __name__ == "__main__":
    main()
