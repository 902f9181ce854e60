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

It also times the concept graph's work for one class of 16 images (``--graph``, on by
default): the retained forward pass, the relevance pass, one edge pass per layer pair (five
nodes per layer, seeded random clusters), and the node check's 27 rows restarted at their
layers, against one forward + backward of the same images (parameters requiring grad).

    python benchmarks/gpu.py                        # cuda, 2,048 images per measurement
    python benchmarks/gpu.py --device cpu --images 64 --batch-size 16   # smoke test anywhere
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carto_assets.core.network.layers import probe_layers, resolve_layers
from carto_assets.core.network.recorder import PRECISIONS, Batch, activation_pass
from carto_assets.core.network.zoo import torchvision_model

IMAGENET_TRAIN = 1_281_167


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
        sync(device)
        start = time.perf_counter()
        ctx = torch.autocast(device.type, dtype=dtype) if dtype else torch.inference_mode()
        with torch.inference_mode(), ctx:
            for i in range(n_batches):
                x = pool[i % len(pool)]
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                model(x)
        sync(device)
        return time.perf_counter() - start

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
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu for a smoke test")
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"googlenet 224px, 9 inception blocks, batch {args.batch_size}, device {name}")
    print(
        f"{'precision':<18} {'bare img/s':>11} {'stage img/s':>12} {'stage/bare':>11} "
        f"{'1.28M images':>13}"
    )
    for precision, cl in (("fp32", False), ("bf16", False), ("bf16", True)):
        bare, stage = run(args, precision, cl)
        label = precision + (" channels_last" if cl else "")
        minutes = IMAGENET_TRAIN / stage / 60
        print(f"{label:<18} {bare:11.0f} {stage:12.0f} {stage / bare:11.3f} {minutes:10.1f} min")
    if not args.no_graph:
        steps, fb = graph_class(torch.device(args.device), max(2, args.repeats))
        total = sum(steps.values())
        print(
            f"\nconcept graph, one class of 16 images (fp32): {total * 1e3:.1f} ms = "
            f"{total / fb:.2f}x one forward + backward ({fb * 1e3:.1f} ms); "
            + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in steps.items())
        )


if __name__ == "__main__":
    main()
