"""GPU throughput of the activation stage: googlenet at 224 px on synthetic tensors.

One short script for a machine with a GPU. For fp32 and bf16 (and channels_last), it times
in one run:

- the bare forward pass of torchvision googlenet (weights=None: speed does not depend on the
  weights) over synthetic batches already on the device, and
- the activation stage: the same forward pass with all nine inception blocks captured (5,488
  neurons), spatial max/argmax in the hooks, the streaming top-k merge and the per-class
  statistics on the device, and one device-to-host copy at the end,

and prints images/s, the ratio stage/bare (target >= 0.8 of the bare throughput on one H100) and
the projected time for ImageNet's 1,281,167 training images (excluding JPEG decoding, which
real runs do in DataLoader workers).

With ``--jpegs N`` it also reads a synthetic folder of N ImageNet-sized JPEGs (written once
under ``--folder``: sides 300-500 px, about 90 KB each; ImageNet's average about 110 KB)
through the activation stage's own loader (``carto_assets.sources.batches``: a DataLoader with
``--loader-workers`` processes decoding, resizing and centre-cropping to 224 px, pinned memory
on CUDA), and times in one run, interleaved:

- decoding alone: the loader's batches, nothing else;
- the bare forward pass over the same images, decoded beforehand and already on the device
  (uint8, normalized on the device as the stage does);
- the activation stage over the folder: loader, copy, normalization, hooks, top-k, statistics;

and prints the stage's images/s against each (the stage can be no faster than the slower one).

It also times the concept graph's work for one class of 16 images (skipped with
``--no-graph``, and with ``--only-folder``, which times the JPEG folder alone): the retained
forward pass, the relevance pass, one edge pass per layer pair (five nodes per layer, seeded
random clusters), and the node check's 27 rows restarted at their layers, against one forward
+ backward of the same images (parameters requiring grad).

With ``--no-graph`` it imports only PyTorch, torchvision, Pillow, NumPy, PyYAML, pydantic and
the project's own modules (never the store's polars and DuckDB, nor Dagster; its test checks
the folder run that way), so a GPU machine with PyTorch needs only pydantic's wheels carried
to it and the checkout on ``PYTHONPATH``.

    python benchmarks/gpu.py                        # cuda, 2,048 images per measurement
    python benchmarks/gpu.py --device cpu --images 64 --batch-size 16   # smoke test anywhere
    # the issue's measure: 4,096 JPEGs decoded by 12 loader processes, fp32 and bf16
    python benchmarks/gpu.py --jpegs 4096 --loader-workers 12 --folder /tmp/jpegs
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carto_assets.core.network.layers import probe_layers, resolve_layers
from carto_assets.core.network.recorder import PRECISIONS, Batch, activation_pass
from carto_assets.core.network.zoo import torchvision_model

IMAGENET_TRAIN = 1_281_167


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_pass(model, inputs, device: torch.device, dtype) -> float:
    """Seconds of the bare forward pass over ``inputs`` (an iterable of model inputs, made as
    they are drawn: their preparation is timed too), under autocast to ``dtype`` if any."""
    sync(device)
    start = time.perf_counter()
    ctx = torch.autocast(device.type, dtype=dtype) if dtype else torch.inference_mode()
    with torch.inference_mode(), ctx:
        for x in inputs:
            model(x)
    sync(device)
    return time.perf_counter() - start


def run(args: argparse.Namespace, precision: str, channels_last: bool) -> tuple[float, float]:
    device = torch.device(args.device)
    model = torchvision_model("googlenet", "none").to(device).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    layers = resolve_layers(probe_layers(model, 224, device=str(device)), "auto", "googlenet")
    gen = torch.Generator(device="cpu").manual_seed(0)
    n_batches = max(1, args.images // args.batch_size)
    # A few distinct batches on the device, cycled: no host-to-device copies in either path.
    pool = [
        torch.randn(args.batch_size, 3, 224, 224, generator=gen).to(device)
        for _ in range(min(4, n_batches))
    ]
    labels = torch.randint(0, 1000, (args.batch_size,), generator=gen)
    dtype = PRECISIONS[precision]

    def bare() -> float:
        inputs = (pool[i % len(pool)] for i in range(n_batches))
        if channels_last:
            inputs = (x.contiguous(memory_format=torch.channels_last) for x in inputs)
        return bare_pass(model, inputs, device, dtype)

    def stage() -> float:
        batches = (
            Batch(
                torch.arange(i * args.batch_size, (i + 1) * args.batch_size),
                pool[i % len(pool)],
                labels,
            )
            for i in range(n_batches)
        )
        sync(device)
        start = time.perf_counter()
        activation_pass(
            model,
            layers,
            batches,
            k=100,
            n_classes=1000,
            mass_fraction=0.03,
            device=device,
            precision=precision,
            channels_last=channels_last,
        )
        sync(device)
        return time.perf_counter() - start

    bare(), stage()  # warm-up: cuDNN autotuning, allocator
    images = n_batches * args.batch_size
    b = min(bare() for _ in range(args.repeats))
    s = min(stage() for _ in range(args.repeats))
    return images / b, images / s


def write_jpegs(root: Path, n: int, classes: int = 10, seed: int = 0) -> int:
    """``n`` ImageNet-sized JPEGs in ``classes`` class folders under ``root`` (kept: a second
    run reuses them); returns their total bytes. Each is smooth colour noise with fine grain,
    300-500 px a side at quality 90: about the bytes per pixel of ImageNet's photos."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        path = root / f"class_{i % classes:03d}" / f"{i:07d}.jpg"
        if path.exists():
            total += path.stat().st_size
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        w, h = (int(v) for v in rng.integers(300, 501, 2))
        coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
        grain = rng.normal(0, 20, (h, w, 3))
        pixels = np.clip(np.asarray(img, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
        total += path.stat().st_size
    return total


def folder_run(args: argparse.Namespace, precision: str) -> dict[str, float]:
    """Images/s over the JPEG folder: decoding alone, the bare forward pass over the decoded
    images on the device, and the activation stage reading the folder (see the docstring)."""
    from carto_assets.core.network.zoo import IMAGENET_MEAN, IMAGENET_STD, ModelBundle
    from carto_assets.sources.batches import load_batches
    from carto_assets.sources.datasets import ImageFolderSource

    device = torch.device(args.device)
    source = ImageFolderSource(args.folder, image_size=224, limit=args.jpegs)
    ids = np.arange(len(source), dtype=np.int64)
    labels = np.array([r.label for r in source.records()], dtype=np.int64)
    model = torchvision_model("googlenet", "none").to(device).eval()
    bundle = ModelBundle(model, "googlenet", 224, IMAGENET_MEAN, IMAGENET_STD)
    layers = resolve_layers(probe_layers(model, 224, device=str(device)), "auto", "googlenet")
    pin = device.type == "cuda"

    def loader():
        return load_batches(
            source, ids, labels, args.batch_size, workers=args.loader_workers, pin_memory=pin
        )

    def decode() -> float:
        start = time.perf_counter()
        for _ in loader():
            pass
        return time.perf_counter() - start

    decoded = [b.images.to(device) for b in loader()]
    dtype = PRECISIONS[precision]

    def bare() -> float:
        return bare_pass(model, (bundle.normalize(p) for p in decoded), device, dtype)

    seen = []

    def stage() -> float:
        sync(device)
        start = time.perf_counter()
        result = activation_pass(
            model,
            layers,
            loader(),
            preprocess=bundle.normalize,
            k=100,
            n_classes=len(source.class_names),
            mass_fraction=0.03,
            device=device,
            precision=precision,
        )
        sync(device)
        seen.append(result.n_images)
        return time.perf_counter() - start

    bare()  # warm-up: cuDNN autotuning, allocator
    n = len(ids)
    times = {"decode": [], "bare": [], "stage": []}
    for _ in range(args.repeats):  # interleaved: a slow moment costs each side alike
        times["decode"].append(decode())
        times["bare"].append(bare())
        times["stage"].append(stage())
    if any(k != n for k in seen):  # a JPEG that failed to decode, or a loader that lost one
        raise SystemExit(f"the stage read {seen} of the folder's {n} images")
    return {k: n / min(v) for k, v in times.items()}


def graph_class(device: torch.device, repeats: int) -> tuple[dict[str, float], float]:
    """Seconds per step of one class's concept-graph work, and of one forward + backward."""
    import numpy as np

    from carto_assets.core.attribution.ablation import Row, ablate
    from carto_assets.core.attribution.forward import RetainedForward
    from carto_assets.core.attribution.influence import Carry, edge_sums
    from carto_assets.core.attribution.relevance import relevance

    torch.manual_seed(0)
    model = torchvision_model("googlenet", "none").eval().to(device)
    layers = [n for n, _ in model.named_children() if n.startswith("inception")]
    x = torch.randn(16, 3, 224, 224, device=device)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        widths = {n: o.shape[1] for n, o in _outputs(model, layers, x[:1]).items()}
    clusters = {n: rng.integers(0, widths[n] // 2, widths[n]) for n in layers}
    targets = {u: {int(c): np.flatnonzero(clusters[u] == c) for c in range(5)} for u in layers[1:]}
    pairs = list(itertools.pairwise(layers))
    rows = [
        Row(i % 16, layer, rng.choice(widths[layer], 20, replace=False))
        for i, layer in enumerate(layers * 3)
    ]
    best: dict[str, float] = {}
    for _ in range(repeats):
        times = {}
        sync(device)
        t = time.perf_counter()
        fwd = RetainedForward.run(model, layers, clusters, x)
        sync(device)
        times["forward"], t = time.perf_counter() - t, time.perf_counter()
        relevance(fwd, 3)
        sync(device)
        times["relevance"], t = time.perf_counter() - t, time.perf_counter()
        edge_sums(fwd, pairs, Carry.split(targets, 16, None, seed=0))
        sync(device)
        times["edges"], t = time.perf_counter() - t, time.perf_counter()
        fwd.release()
        ablate(model, fwd, x, rows)
        sync(device)
        times["checks"] = time.perf_counter() - t
        best = {k: min(v, best.get(k, float("inf"))) for k, v in times.items()}
    fb = float("inf")
    for _ in range(repeats):
        xx = x.clone().requires_grad_(True)
        sync(device)
        t = time.perf_counter()
        model(xx).sum().backward()
        sync(device)
        fb = min(fb, time.perf_counter() - t)
    return best, fb


def _outputs(model, layers, x):
    from carto_assets.core.network.hooks import capture

    with capture(model, layers) as out:
        model(x)
    return dict(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-graph", action="store_true", help="skip the concept graph's timing")
    p.add_argument("--jpegs", type=int, default=0, help="time reading a folder of N JPEGs too")
    p.add_argument("--folder", type=Path, default=Path("/tmp/carto_jpegs"), help="their folder")
    p.add_argument("--loader-workers", type=int, default=8, help="DataLoader processes")
    p.add_argument("--only-folder", action="store_true", help="only the JPEG folder's timing")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu for a smoke test")
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"googlenet 224px, 9 inception blocks, batch {args.batch_size}, device {name}")
    if not args.only_folder:
        print(
            f"{'precision':<18} {'bare img/s':>11} {'stage img/s':>12} {'stage/bare':>11} "
            f"{'1.28M images':>13}"
        )
    for precision, cl in (("fp32", False), ("bf16", False), ("bf16", True)):
        if args.only_folder:
            break
        bare, stage = run(args, precision, cl)
        label = precision + (" channels_last" if cl else "")
        minutes = IMAGENET_TRAIN / stage / 60
        print(f"{label:<18} {bare:11.0f} {stage:12.0f} {stage / bare:11.3f} {minutes:10.1f} min")
    if args.jpegs:
        start = time.perf_counter()
        size = write_jpegs(args.folder, args.jpegs)
        print(
            f"\n{args.jpegs} JPEGs in {args.folder} ({size / args.jpegs / 1e3:.0f} KB each, "
            f"written in {time.perf_counter() - start:.0f} s), {args.loader_workers} loader "
            "processes, decoded, resized and centre-cropped to 224 px"
        )
        print(
            f"{'precision':<10} {'decode img/s':>13} {'bare img/s':>11} {'stage img/s':>12} "
            f"{'stage/decode':>13} {'stage/bare':>11} {'1.28M images':>13}"
        )
        for precision in ("fp32", "bf16"):
            r = folder_run(args, precision)
            minutes = IMAGENET_TRAIN / r["stage"] / 60
            print(
                f"{precision:<10} {r['decode']:13.0f} {r['bare']:11.0f} {r['stage']:12.0f} "
                f"{r['stage'] / r['decode']:13.3f} {r['stage'] / r['bare']:11.3f} "
                f"{minutes:10.1f} min"
            )
    if not args.no_graph and not args.only_folder:
        steps, fb = graph_class(torch.device(args.device), max(2, args.repeats))
        total = sum(steps.values())
        print(
            f"\nconcept graph, one class of 16 images (fp32): {total * 1e3:.1f} ms = "
            f"{total / fb:.2f}x one forward + backward ({fb * 1e3:.1f} ms); "
            + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in steps.items())
        )


if __name__ == "__main__":
    main()
