"""The example patches of a mapped study: one thread against several, side by side.

Runs the ``example_patches`` stage (:func:`carto_assets.stages.example_patches.example_patches`)
on a study that has been mapped (its ``top_images`` in the database), alternating one thread
with ``--workers`` threads cutting, resizing and encoding the patches, and prints each
repeat's seconds, the ratio of the fastest, and whether both wrote the same rows (the same PNG
bytes for every neuron and rank). Nothing is published: the database is only read, and the
Parquet parts are removed after each run.

    .venv/bin/python benchmarks/patches.py --study STUDY.yaml
    .venv/bin/python benchmarks/patches.py --study STUDY.yaml --workers 4 --repeats 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carto_assets.stages.example_patches import PATCH_WORKERS, example_patches
from carto_assets.stages.prepared import PreparedStudy


def timed(prepared: PreparedStudy, workers: int) -> tuple[float, pl.DataFrame, int]:
    """Seconds of one run of the stage with ``workers`` threads, its rows (ordered) and how
    many distinct patches it encoded."""
    start = time.perf_counter()
    written = example_patches(prepared, workers=workers)
    seconds = time.perf_counter() - start
    rows = pl.concat([pl.read_parquet(p) for p in written.parts]).sort("neuron_id", "rank")
    for part in written.parts:
        part.unlink()
    return seconds, rows, rows.select("png").unique().height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="a mapped study's file")
    parser.add_argument("--workers", type=int, default=PATCH_WORKERS, help="threads to compare")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.workers < 2:
        raise SystemExit(
            f"--workers must be at least 2 to compare with one thread, got {args.workers}"
        )
    prepared = PreparedStudy.load(args.study)
    _ = prepared.model, prepared.source  # built once, outside the timings
    seconds: dict[int, list[float]] = {1: [], args.workers: []}
    rows: dict[int, pl.DataFrame] = {}
    for i in range(args.repeats):  # alternated, the order reversed every other time
        for workers in (1, args.workers) if i % 2 == 0 else (args.workers, 1):
            s, rows[workers], distinct = timed(prepared, workers)
            seconds[workers].append(s)
        print(
            f"repeat {i + 1}: 1 thread {seconds[1][-1]:.2f} s, {args.workers} threads "
            f"{seconds[args.workers][-1]:.2f} s",
            flush=True,
        )
    one, many = min(seconds[1]), min(seconds[args.workers])
    same = rows[1].equals(rows[args.workers])
    print(
        f"{rows[1].height} patches ({distinct} distinct PNGs): 1 thread {one:.2f} s, "
        f"{args.workers} threads {many:.2f} s, {one / many:.2f}x (fastest against fastest)"
    )
    print(f"the same rows and PNG bytes: {'yes' if same else 'NO'}")
    if not same:
        raise SystemExit("the threads wrote other patches than one thread")


if __name__ == "__main__":
    main()
