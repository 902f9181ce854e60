"""What one activation shard and one concept-graph chunk compute more than once.

Materializes a small study (the shapes world with dictionary features, like the demo, smaller)
once, then re-runs one ``activations`` partition and one ``concept_graph_chunk`` partition in
this process, counting the work each step does, and prints per step:

- seconds of the step (Dagster's own overhead included);
- study validations (``Study.model_validate``: parsing the study file);
- manifest reads (``load_manifest``);
- model builds (``BuiltinCNN`` / ``torchvision_model``) and layer probes (``probe_layers``, one
  forward pass each);
- dictionary fingerprints (``dictionary_fingerprint``: re-samples and hashes image ids);
- per-class ``graph_nodes`` queries (the graph's node selection over every class).

Usage::

    python benchmarks/repeated_work.py [--folder DIR] [--size 800]

Counting wraps the functions where the package's modules look them up; nothing is changed.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

COUNTED = {
    "study validations": ("carto_assets.study.fields", "Study.model_validate"),
    "manifest reads": ("carto_assets.stages.manifest", "load_manifest"),
    "model builds (builtin)": ("carto_assets.core.network.zoo", "BuiltinCNN.__init__"),
    "model builds (torchvision)": ("carto_assets.core.network.zoo", "torchvision_model"),
    "layer probes (forward passes)": ("carto_assets.core.network.layers", "probe_layers"),
    "dictionary fingerprints": ("carto_assets.fingerprints", "dictionary_fingerprint"),
    "graph_nodes queries": ("carto_assets.stages.graph", "graph_nodes"),
}


def install_counters() -> collections.Counter:
    """Wrap every counted function, wherever a carto_assets module holds a reference to it."""
    import importlib

    counts: collections.Counter = collections.Counter()
    for label, (module_name, qualname) in COUNTED.items():
        module = importlib.import_module(module_name)
        owner_name, _, attr = qualname.rpartition(".")
        owner = getattr(module, owner_name) if owner_name else module
        if not hasattr(owner, attr):
            continue  # renamed or removed since: nothing to count
        original = getattr(owner, attr)

        def wrapper(*args, __label=label, __func=original, **kwargs):
            counts[__label] += 1
            return __func(*args, **kwargs)

        wrapped = functools.wraps(original)(wrapper)
        if owner_name:  # a class attribute: every caller goes through the class
            setattr(owner, attr, wrapped)
            continue
        for mod in list(sys.modules.values()):
            if getattr(mod, "__name__", "").startswith("carto_assets") and (
                getattr(mod, attr, None) is original
            ):
                setattr(mod, attr, wrapped)
    return counts


def write_study(folder: Path, size: int) -> Path:
    raw = {
        "name": "repeated-work",
        "dataset": {"kind": "shapes", "size": size, "image_size": 32},
        "shards": 2,
        "top_k": 20,
        "batch_size": 100,
        "training": {"epochs": 2},
        "database": "study.duckdb",
        "features": {
            "layers": ["block3", "block4"],
            "samples": 5000,
            "sample_images": 200,
            "epochs": 10,
            "batch_size": 256,
        },
        "graph": {"classes_per_chunk": 4},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=None, help="study folder (default: temp)")
    parser.add_argument("--size", type=int, default=800, help="images of the shapes study")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="carto-repeated-"))
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(folder / ".dagster")
    (folder / ".dagster").mkdir(exist_ok=True)
    (folder / ".dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    import dagster as dg
    import torch

    from carto_assets.run import execute_partition, materialize_all

    torch.set_num_threads(1)
    study = write_study(folder, args.size)
    instance = dg.DagsterInstance.get()
    start = time.perf_counter()
    materialize_all(str(study), instance, say=lambda m: None)
    print(f"study materialized in {time.perf_counter() - start:.1f} s ({folder})")

    counts = install_counters()
    rows = []
    for job, key in (("activation_pass", "shard-0000"), ("concept_graph_chunks", "classes-0000")):
        counts.clear()
        start = time.perf_counter()
        execute_partition(str(study), key, instance, job)
        rows.append((f"{job} {key}", time.perf_counter() - start, dict(counts)))
    print(f"\n{'step':<34} {'seconds':>8}  " + "  ".join(f"{k}" for k in COUNTED))
    for name, seconds, c in rows:
        cells = "  ".join(f"{c.get(k, 0):>{len(k)}}" for k in COUNTED)
        print(f"{name:<34} {seconds:>8.2f}  {cells}")


if __name__ == "__main__":
    main()
