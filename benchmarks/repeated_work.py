"""What one activation shard, one concept-graph chunk, ``carto explain`` and ``carto compare``
compute more than once.

Materializes a small study (the shapes world with dictionary features, like the demo, smaller)
once, then runs each step again and counts the work it does:

- in this process, after the full run (``carto run --jobs 1``): one ``activations`` partition
  and one ``concept_graph_chunk`` partition;
- each in a fresh process (a ``carto run --jobs N`` worker, a command): the same two
  partitions, ``carto explain IMAGE`` and ``carto compare`` (the study against a copy of itself
  under another name, CKA included, so each compared study's network is built).

Counted per step:

- seconds (Dagster's own overhead included);
- study file reads (opens of a study YAML) and study validations (``Study.model_validate``);
- manifest reads (``manifest/images.parquet`` read) and model record reads
  (``model/<fingerprint>/meta.json`` opened);
- model builds (``BuiltinCNN`` / ``torchvision_model``) and layer probes (``probe_layers``, one
  forward pass each);
- dictionary samples hashed (``dictionary_fingerprint``: draws the training sample's ids and
  hashes them).

A partition's row counts the job's execution; the definitions a worker process loads first
validate the study once more (the row ``definitions``). ``carto compare`` is one row for the
whole command (its check, then seven asset steps).

Usage::

    python benchmarks/repeated_work.py [--folder DIR] [--size 800]

Counting wraps the functions where the package's modules look them up, and ``io.open`` /
``polars.read_parquet`` by path; nothing is changed. A counted name that no longer exists
stops the benchmark (rename it here), and so does a file counter that does not see a read.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import importlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

#: Counted functions: label -> (module, qualified name).
COUNTED = {
    "study validations": ("carto_assets.study.fields", "Study.model_validate"),
    "model builds (builtin)": ("carto_assets.core.network.zoo", "BuiltinCNN.__init__"),
    "model builds (torchvision)": ("carto_assets.core.network.zoo", "torchvision_model"),
    "layer probes": ("carto_assets.core.network.layers", "probe_layers"),
    "dictionary samples hashed": ("carto_assets.storage.fingerprints", "dictionary_fingerprint"),
}
#: Counted file reads: label -> what the path is.
READS = {
    "study file reads": lambda p: p.suffix == ".yaml" and p.name.startswith("study"),
    "manifest reads": lambda p: p.name == "images.parquet" and p.parent.name == "manifest",
    "model meta.json reads": lambda p: p.name == "meta.json" and p.parent.parent.name == "model",
}
COLUMNS = [*READS, *COUNTED]


def install_counters() -> collections.Counter:
    """Wrap every counted function wherever a carto_assets module holds a reference to it, and
    count file reads by path. Raises SystemExit naming a counted function that is gone."""
    import importlib

    import polars as pl

    counts: collections.Counter = collections.Counter()
    for label, (module_name, qualname) in COUNTED.items():
        module = importlib.import_module(module_name)
        owner_name, _, attr = qualname.rpartition(".")
        owner = getattr(module, owner_name, None) if owner_name else module
        if owner is None or not hasattr(owner, attr):
            raise SystemExit(
                f"repeated_work.py: {module_name}.{qualname} ({label!r}) does not exist: "
                "renamed or removed? Update COUNTED."
            )
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

    def count_path(path) -> None:
        with contextlib.suppress(TypeError):
            p = Path(os.fspath(path))
            for label, matches in READS.items():
                if matches(p):
                    counts[label] += 1

    open_before, parquet_before = io.open, pl.read_parquet

    def counted_open(file, mode="r", *args, **kwargs):
        if not set(mode) & set("wax+"):  # reads only
            count_path(file)
        return open_before(file, mode, *args, **kwargs)

    def counted_read_parquet(source, *args, **kwargs):
        count_path(source)
        return parquet_before(source, *args, **kwargs)

    io.open = counted_open  # pathlib's read_text/read_bytes open through io.open
    pl.read_parquet = counted_read_parquet
    return counts


def check_file_counters(counts: collections.Counter, folder: Path) -> None:
    """Stop unless reading a study file and a manifest the way the package does is counted."""
    import polars as pl

    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / "study-probe.yaml"
    probe.write_text("name: probe\n")
    manifest = folder / "probe" / "manifest" / "images.parquet"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"a": [1]}).write_parquet(manifest)
    probe.read_bytes()
    pl.read_parquet(manifest)
    if counts["study file reads"] != 1 or counts["manifest reads"] != 1:
        raise SystemExit(f"repeated_work.py: file reads are not counted ({dict(counts)})")
    counts.clear()


def write_studies(folder: Path, size: int) -> tuple[Path, Path, Path]:
    """The study, a copy of it under another name (the same database and files) and a
    comparison of the two."""
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
    study = folder / "study.yaml"
    study.write_text(yaml.safe_dump(raw))
    copy = folder / "study-copy.yaml"
    copy.write_text(yaml.safe_dump({**raw, "name": "repeated-work-copy"}))
    comparison = folder / "comparison.yaml"
    comparison.write_text(
        yaml.safe_dump(
            {
                "name": "repeated-work-vs-copy",
                "studies": [study.name, copy.name],
                "database": "compare.duckdb",
                "cka_images": 100,
                "null_draws": 1,
                "embedding": {"epochs": 2},
            }
        )
    )
    return study, copy, comparison


def _instance(folder: Path):
    import dagster as dg

    return dg.DagsterInstance.from_config(str(folder / ".dagster"))


def run_step(step: str, folder: Path, counts: collections.Counter) -> float:
    """Run one step in this process; returns its seconds (counts accumulate in ``counts``)."""
    from carto_assets.runtime.environment import STUDY_ENV_VAR

    study = folder / "study.yaml"
    # As a Dagster worker: the definitions module builds the study's definitions on import
    # (importing it here without the variable would validate the demo study as well).
    os.environ[STUDY_ENV_VAR] = str(study)
    if step == "definitions":
        start = time.perf_counter()
        importlib.import_module("carto_assets.definitions")
        return time.perf_counter() - start
    if step in ("activation_pass shard-0000", "concept_graph_chunks classes-0000"):
        from carto_assets.assets.events import QUIET_RUN_CONFIG
        from carto_assets.definitions import build_definitions

        job, key = step.split()
        defs = build_definitions(str(study))
        counts.clear()  # the job's execution only: the definitions are their own row
        start = time.perf_counter()
        with _instance(folder) as instance:
            result = defs.resolve_job_def(job).execute_in_process(
                instance=instance, partition_key=key, run_config=QUIET_RUN_CONFIG
            )
        assert result.success
        return time.perf_counter() - start
    from carto_assets.cli.main import main

    if step == "carto explain":
        argv = ["explain", str(folder / "image.png"), "--study", str(study)]
    elif step == "carto compare":
        argv = ["compare", str(folder / "comparison.yaml"), "--dagster-home"]
        argv.append(str(folder / ".dagster"))
    else:
        raise SystemExit(f"unknown step {step!r}")
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"{step} failed with exit code {code}")
    return time.perf_counter() - start


FRESH = [
    "definitions",
    "activation_pass shard-0000",
    "concept_graph_chunks classes-0000",
    "carto explain",
    "carto compare",
]


def child(step: str, folder: Path) -> None:
    """One step in this (fresh) process: prints its seconds and counts as one JSON line."""
    import torch

    torch.set_num_threads(1)
    # Every module the commands import up front, so the counters wrap their references.

    counts = install_counters()
    check_file_counters(counts, folder / "probe")
    seconds = run_step(step, folder, counts)
    print("COUNTS " + json.dumps({"seconds": seconds, **counts}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=None, help="study folder (default: temp)")
    parser.add_argument("--size", type=int, default=800, help="images of the shapes study")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = (args.folder or Path(tempfile.mkdtemp(prefix="carto-repeated-"))).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(folder / ".dagster")
    (folder / ".dagster").mkdir(exist_ok=True)
    (folder / ".dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    os.chdir(folder)
    if args.child:
        child(args.child, folder)
        return

    import torch
    from PIL import Image

    from carto_assets.cli.run import materialize_all
    from carto_assets.sources.datasets import open_source
    from carto_assets.study import load_study

    torch.set_num_threads(1)
    study, _, _ = write_studies(folder, args.size)
    start = time.perf_counter()
    with _instance(folder) as instance:
        materialize_all(str(study), instance, say=lambda m: None)
    print(f"study materialized in {time.perf_counter() - start:.1f} s ({folder})")
    pixels, _ = open_source(load_study(study)).load_many([0])
    Image.fromarray(pixels[0]).save(folder / "image.png")

    rows = []
    counts = install_counters()
    check_file_counters(counts, folder / "probe")
    for step in FRESH[1:3]:
        counts.clear()
        seconds = run_step(step, folder, counts)
        rows.append((f"{step} (after the run)", seconds, dict(counts)))
    for step in FRESH:
        out = subprocess.run(
            [sys.executable, __file__, "--child", step, "--folder", str(folder)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        line = next(x for x in out.splitlines() if x.startswith("COUNTS "))
        got = json.loads(line.removeprefix("COUNTS "))
        rows.append((f"{step} (fresh process)", got.pop("seconds"), got))

    print(f"\n{'step':<52} {'seconds':>8}  " + "  ".join(COLUMNS))
    for name, seconds, c in rows:
        cells = "  ".join(f"{c.get(k, 0):>{len(k)}}" for k in COLUMNS)
        print(f"{name:<52} {seconds:>8.2f}  {cells}")


if __name__ == "__main__":
    main()
