"""The shapes world at growing image counts, up to ImageNet's 1,281,167: each stage's growth.

For each size it writes a study file (the built-in shapes world, ``model: builtin``, every
asset, dictionary features of block3 and block4 on) and runs it the way a user does,
``carto run --study FILE`` in a subprocess, then measures, for that size:

* seconds per stage from the run's own summary line (prepare, activations, summaries, total)
  and per step from the Dagster events the run recorded in its instance (STEP_START to
  STEP_SUCCESS; a partitioned step summed over its partitions);
* peak resident memory: the whole run's from the kernel (``wait4``'s ``ru_maxrss``), and per
  step the largest RSS sampled every 0.25 s while the step ran (a sample can miss a spike
  shorter than that; the whole-run figure cannot);
* the activation stage against a reference measured after the run in this process over the
  same images, loaded the same way (the stage's own ``load_batches``, one batch at a time):
  the load (render/decode) alone, and load + a bare forward pass of the trained model;
* the database's and the Parquet files' sizes;
* coverage and cluster gain, from the ``study_quality`` rows ``cluster_quality`` wrote;
* the concept graph's seconds per class (its chunks' own ``summary.json``).

It prints one table with a column per size, the growth exponent of each row between the two
largest sizes (1 = linear in images, 0 = constant) and the targets' ratios. Timings on a
shared machine are noisy; memory and sizes are not.

    python benchmarks/paper_data_scale.py                             # 4,000 and 40,000 images
    python benchmarks/paper_data_scale.py --sizes 4000,40000,400000,1281167 --image-size 64
    python benchmarks/paper_data_scale.py --sizes 400 --keep /tmp/ds  # a quick look, kept
    python benchmarks/paper_data_scale.py --from-json results.json   # a saved run's table again

Defaults: 64 px images (the demo's), ``training.epochs`` 1 (the issue's starting point; the
demo trains 5), the dictionaries' 240 epochs (``--dictionary-epochs``), ``shard_size``
10,000, top_k 50, batch 128, CPU, one process (``--jobs 1``). The last column carries
seconds, memory and sizes to 1,281,167 images on the line through the two largest sizes
(``--extrapolate``): an extrapolation, wrong for steps on a capped sample (dictionary,
labels), which docs/data_scale.md sorts out.

Measured 2026-12-07 on this 2-core CPU, nothing else running, ``--sizes
4000,40000,1281167 --image-size 32 --dictionary-epochs 24 --reference-images 40000``: the
1,281,167-image run in 2,963 s (manifest 329 s, training 1,219 s, activations 1,077 s,
summaries 99 s), whole-run peak RSS 2.13 GB, coverage 0.271 (0.271 at 4,000), LSH recall
0.996. The table, the machine's speed drift and the 64 px figures of 2026-12-06:
docs/data_scale.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
IMAGENET_IMAGES = 1_281_167
#: The smallest study the benchmark runs: the world's 8 classes, top_k 50 and the graph's
#: 16 images per class need a few hundred images.
MIN_SIZE = 400
SAMPLE_S = 0.25


class BenchError(ValueError):
    """Bad input to the benchmark: one line for the terminal."""


def parse_sizes(text: str) -> list[int]:
    """``"4000,40000"`` -> ``[4000, 40000]``: distinct image counts of at least MIN_SIZE,
    ascending (``1.28M``-style suffixes are not accepted: write the count)."""
    parts = [p.strip().replace("_", "") for p in text.split(",")]
    sizes = []
    for part in parts:
        if not part.isdigit() or int(part) < MIN_SIZE:
            raise BenchError(
                f"--sizes must be comma-separated image counts of at least {MIN_SIZE} each "
                f"(e.g. 4000,40000,400000,{IMAGENET_IMAGES}), got {part!r} in {text!r}"
            )
        sizes.append(int(part))
    if len(set(sizes)) != len(sizes):
        raise BenchError(f"--sizes names a size twice: {text!r}")
    return sorted(sizes)


def study_dict(size: int, args: argparse.Namespace) -> dict:
    """The study file of one size (paths relative to its folder)."""
    study = {
        "name": f"data-scale-{size}",
        "model": "builtin",
        "dataset": {"kind": "shapes", "size": size, "image_size": args.image_size},
        "layers": "auto",
        "device": "cpu",
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "top_k": args.top_k,
        "seed": 0,
        "training": {"epochs": args.epochs},
        "database": "carto.duckdb",
    }
    if args.features:
        study["features"] = {"layers": ["block3", "block4"]}
        if args.dictionary_epochs is not None:
            study["features"]["epochs"] = args.dictionary_epochs
    return study


# ---- the run -------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """One ``carto run``: its output, whole-run peak, RSS samples and return code."""

    returncode: int
    output: str
    peak_rss_gb: float
    samples: list[tuple[float, float]] = field(default_factory=list)  # (unix time, GB)
    wall_s: float = 0.0


def _rss_gb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def run_carto(study_file: Path, dagster_home: Path, log_path: Path) -> RunRecord:
    """``carto run --study FILE`` in a subprocess, its RSS sampled; output to ``log_path``."""
    cmd = [
        sys.executable,
        "-m",
        "carto_assets.cli",
        "run",
        "--study",
        str(study_file),
        "--dagster-home",
        str(dagster_home),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))
    samples: list[tuple[float, float]] = []
    start = time.perf_counter()
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss = _rss_gb(proc.pid)
            if rss is not None:
                samples.append((time.time(), rss))
            time.sleep(SAMPLE_S)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return RunRecord(
        returncode=proc.returncode,
        output=log_path.read_text(),
        peak_rss_gb=usage.ru_maxrss / 2**20,  # KiB on Linux
        samples=samples,
        wall_s=time.perf_counter() - start,
    )


DONE_LINE = re.compile(
    r"Done in (?P<total>[\d.]+) s: prepare (?P<prepare>[\d.]+) s, activations "
    r"(?P<activations>[\d.]+) s .*?summaries (?P<summaries>[\d.]+) s"
)


def parse_done_line(output: str) -> dict[str, float]:
    """The stage seconds ``carto run``'s summary line prints (whole seconds)."""
    match = DONE_LINE.search(output)
    if match is None:
        raise BenchError("carto run printed no 'Done in ...' line; see its log")
    return {k: float(v) for k, v in match.groupdict().items()}


def step_intervals(dagster_home: Path) -> list[tuple[str, float, float]]:
    """Every step of every run in the instance: ``(step_key, start, end)`` in unix seconds,
    from its STEP_START and STEP_SUCCESS events, in start order."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home)))
    kinds = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS}
    out = []
    for run in instance.get_runs():
        started: dict[str, float] = {}
        for entry in instance.all_logs(run.run_id, of_type=kinds):
            event = entry.dagster_event
            if event.event_type == dg.DagsterEventType.STEP_START:
                started[entry.step_key] = entry.timestamp
            elif entry.step_key in started:
                out.append((entry.step_key, started.pop(entry.step_key), entry.timestamp))
    instance.dispose()
    return sorted(out, key=lambda row: row[1])


def step_figures(
    intervals: list[tuple[str, float, float]], samples: list[tuple[float, float]]
) -> dict[str, dict[str, float]]:
    """Per step key (in first-start order): summed seconds, the number of runs (partitions)
    and the largest RSS sampled while any of its runs was running (nan when none fell in)."""
    steps: dict[str, dict[str, float]] = {}
    for key, lo, hi in intervals:
        row = steps.setdefault(key, {"seconds": 0.0, "runs": 0, "peak_rss_gb": float("nan")})
        row["seconds"] += hi - lo
        row["runs"] += 1
        inside = [gb for t, gb in samples if lo <= t <= hi]
        if inside:
            before = row["peak_rss_gb"]
            row["peak_rss_gb"] = max(inside) if math.isnan(before) else max(before, *inside)
    return steps


# ---- the reference pass ----------------------------------------------------------------------


def reference_pass(study_file: Path, limit: int | None = None) -> dict[str, float]:
    """Load every image of the study (the first ``limit`` in image-id order where given) the
    way the activation stage does (its ``load_batches``: a DataLoader with the study's
    workers, image-id order) and run the trained model on each batch, bare (no hooks, no
    recording): seconds loading, seconds in the forward pass, and how many images."""
    import torch

    from carto_assets.sources.batches import load_batches
    from carto_assets.stages.prepared import PreparedStudy
    from carto_assets.study import load_study

    study = load_study(study_file)
    prepared = PreparedStudy.open(study)
    bundle, _ = prepared.model
    model = bundle.module.eval()
    images = prepared.images.sort("image_id")
    if limit is not None:
        images = images.head(limit)
    batches = load_batches(
        prepared.source,
        images["image_id"].to_numpy(),
        images["label"].to_numpy(),
        study.batch_size,
        workers=study.loader_workers,
    )
    load_s = forward_s = 0.0
    n = 0
    with torch.inference_mode():
        while True:
            t0 = time.perf_counter()
            try:
                pixels = next(batches).images
            except StopIteration:
                break
            t1 = time.perf_counter()
            model(bundle.normalize(pixels))
            t2 = time.perf_counter()
            load_s += t1 - t0
            forward_s += t2 - t1
            n += len(pixels)
    return {"images": n, "load_s": load_s, "forward_s": forward_s}


# ---- what the run left --------------------------------------------------------------------------


def _size_mb(paths) -> float:
    return sum(p.stat().st_size for p in paths if p.is_file()) / 2**20


def run_outputs(study_file: Path) -> dict[str, float]:
    """Sizes on disk, quality figures, the graph's and the shards' own seconds."""
    import duckdb
    from paper_scale import graph_breakdown

    from carto_assets.study import load_study

    study = load_study(study_file)
    files = study.files_dir
    out = {
        "database_mb": _size_mb([study.database_path]),
        "parquet_mb": _size_mb(files.rglob("*.parquet")),
        "files_mb": _size_mb(files.rglob("*")),
        "views_mb": _size_mb(study.views_path.rglob("*")),
    }
    shard_seconds = [
        json.loads(p.read_text())["seconds"] for p in files.glob("activations/*/summary.json")
    ]
    out["shards"] = len(shard_seconds)
    out["shard_pass_s"] = sum(shard_seconds)
    graph = graph_breakdown(study)
    out["graph_classes"] = graph["classes"]
    out["graph_s_per_class"] = graph["seconds"] / max(1, graph["classes"])
    with duckdb.connect(str(study.database_path), read_only=True) as con:
        figures = dict(
            con.execute(
                "SELECT figure, value FROM study_quality WHERE layer IS NULL AND figure IN "
                "('coverage', 'concept_cluster_gain', 'concept_random_gain', "
                "'class_cluster_gain', 'class_random_gain')"
            ).fetchall()
        )
        out["units"] = con.execute("SELECT count(*) FROM neurons").fetchone()[0]
        out["clusters"] = con.execute("SELECT count(*) FROM clusters WHERE size > 1").fetchone()[0]
    out.update({k: float(v) for k, v in figures.items()})
    return out


def training_seconds(output: str) -> float | None:
    """``model training: B batches in S s`` (``E epochs`` before the bar counted batches)
    from the run's output (None when cached)."""
    match = re.search(r"model training: \d+ (?:epochs?|batches) in ([\d.]+) s", output)
    return float(match.group(1)) if match else None


# ---- one size ---------------------------------------------------------------------------------


def measure_size(size: int, args: argparse.Namespace, work: Path, say) -> dict:
    """Run the study of one size and measure it (see the module docstring)."""
    import yaml

    folder = work / f"n{size}"
    if folder.exists() and any(folder.iterdir()):
        raise BenchError(
            f"{folder} already holds a run (its shards would be reused, not timed); "
            "choose another --keep folder or remove it"
        )
    folder.mkdir(parents=True, exist_ok=True)
    study_file = folder / "study.yaml"
    study_file.write_text(yaml.safe_dump(study_dict(size, args), sort_keys=False))
    home = folder / "dagster_home"
    say(f"\n== {size:,} images: carto run --study {study_file}")
    record = run_carto(study_file, home, folder / "run.log")
    if record.returncode != 0:
        tail = "\n".join(record.output.strip().splitlines()[-15:])
        say(tail)
        raise BenchError(
            f"carto run failed at {size} images (exit {record.returncode}); log: "
            f"{folder / 'run.log'}"
        )
    done = next(line for line in record.output.splitlines() if line.startswith("Done in"))
    say("  " + done)
    row: dict = {
        "images": size,
        "stages": parse_done_line(record.output),
        "wall_s": record.wall_s,
        "peak_rss_gb": record.peak_rss_gb,
        "training_s": training_seconds(record.output),
        "steps": step_figures(step_intervals(home), record.samples),
    }
    limit = args.reference_images
    limit = limit if limit and limit < size else None
    say(
        "  reference: loading the same images, and a bare forward pass over them"
        + (f" (the first {limit:,}; compared per image)" if limit else "")
    )
    row["reference"] = reference_pass(study_file, limit)
    row["outputs"] = run_outputs(study_file)
    return row


# ---- the table ----------------------------------------------------------------------------------


def growth_exponent(n1: float, v1: float, n2: float, v2: float) -> float:
    """``log(v2/v1) / log(n2/n1)``: 1 when a figure grows linearly with images, 0 when flat
    (nan where a value is not positive)."""
    if v1 <= 0 or v2 <= 0 or n1 == n2 or any(map(math.isnan, (v1, v2))):
        return float("nan")
    return math.log(v2 / v1) / math.log(n2 / n1)


def table_rows(results: list[dict]) -> list[tuple[str, list[float], str]]:
    """``(label, one value per size, format)`` rows of the printed table."""
    rows: list[tuple[str, list[float], str]] = []

    def add(label: str, values, fmt: str = "{:.1f}") -> None:
        rows.append((label, [float("nan") if v is None else float(v) for v in values], fmt))

    add("images", [r["images"] for r in results], "{:,.0f}")
    for stage in ("prepare", "activations", "summaries", "total"):
        add(f"{stage} s (carto run)", [r["stages"][stage] for r in results], "{:.0f}")
    add("  model training s", [r["training_s"] for r in results])
    add("  activations: shards' own pass s", [r["outputs"]["shard_pass_s"] for r in results])
    add("  reference: images timed", [r["reference"]["images"] for r in results], "{:,.0f}")
    add("  reference: load s", [r["reference"]["load_s"] for r in results])
    add("  reference: bare forward s", [r["reference"]["forward_s"] for r in results])
    add(
        "activations / (load + forward)",
        [activation_ratio(r) for r in results],
        "{:.2f}",
    )
    add(
        "activations images/s",
        [r["images"] / max(r["stages"]["activations"], 1e-9) for r in results],
        "{:,.0f}",
    )
    add(
        "bare forward images/s",
        [r["reference"]["images"] / max(r["reference"]["forward_s"], 1e-9) for r in results],
        "{:,.0f}",
    )
    add(
        "load + forward images/s",
        [
            r["reference"]["images"]
            / max(r["reference"]["load_s"] + r["reference"]["forward_s"], 1e-9)
            for r in results
        ],
        "{:,.0f}",
    )
    keys: list[str] = []
    for r in results:
        keys += [k for k in r["steps"] if k not in keys]
    for key in keys:
        add(f"step {key} s", [r["steps"].get(key, {}).get("seconds") for r in results])
    add("concept graph s per class", [r["outputs"]["graph_s_per_class"] for r in results], "{:.2f}")
    add("peak RSS GB (whole run)", [r["peak_rss_gb"] for r in results], "{:.2f}")
    for key in keys:
        add(
            f"peak RSS GB, step {key} (sampled)",
            [r["steps"].get(key, {}).get("peak_rss_gb") for r in results],
            "{:.2f}",
        )
    for name in ("database_mb", "parquet_mb", "files_mb", "views_mb"):
        add(name.replace("_mb", " MB"), [r["outputs"][name] for r in results])
    add("shards", [r["outputs"]["shards"] for r in results], "{:.0f}")
    add("units", [r["outputs"]["units"] for r in results], "{:.0f}")
    add("multi-unit clusters", [r["outputs"]["clusters"] for r in results], "{:.0f}")
    add("coverage", [r["outputs"].get("coverage") for r in results], "{:.3f}")
    for kind in ("concept", "class"):
        add(
            f"cluster gain ({kind})",
            [r["outputs"].get(f"{kind}_cluster_gain") for r in results],
            "{:.3f}",
        )
        add(
            f"  random same-size groups ({kind})",
            [r["outputs"].get(f"{kind}_random_gain") for r in results],
            "{:.3f}",
        )
    return rows


def reference_seconds(result: dict) -> float:
    """The reference's load + bare forward seconds, carried to the run's every image where it
    timed only the first ``--reference-images`` (per image: the same work on each)."""
    ref = result["reference"]
    return (ref["load_s"] + ref["forward_s"]) * result["images"] / max(ref["images"], 1)


def activation_ratio(result: dict) -> float:
    return result["stages"]["activations"] / max(reference_seconds(result), 1e-9)


def _cell(value: float, fmt: str) -> str:
    return "-" if math.isnan(value) else fmt.format(value)


#: Rows whose value is an amount (seconds, memory, bytes) that a straight line through the two
#: largest sizes can carry further; ratios, rates and quality figures are not extrapolated.
EXTRAPOLATED = re.compile(r"( s( \(carto run\))?$| s per class$|^peak RSS GB| MB$)")


def extrapolate(n1: float, v1: float, n2: float, v2: float, n: float) -> float:
    """The straight line through ``(n1, v1)`` and ``(n2, v2)`` at ``n``, never below ``v2``
    (a value that fell between the sizes is taken as flat: noise, not a trend)."""
    if any(map(math.isnan, (v1, v2))) or n1 == n2:
        return float("nan")
    return max(v2, v2 + (v2 - v1) / (n2 - n1) * (n - n2))


def format_table(results: list[dict], extrapolate_to: int | None = None) -> str:
    """One column per size; then the growth exponent between the two largest; then, with
    ``extrapolate_to``, amounts carried to that many images on the line through the two
    largest sizes (an extrapolation, not a measurement: a step that grows faster than
    linearly is underestimated; its growth says so)."""
    rows = table_rows(results)
    label_w = max(len(label) for label, _, _ in rows) + 2
    sizes = [r["images"] for r in results]
    several = len(sizes) > 1
    head = f"{'':<{label_w}}" + "".join(f"{n:>12,}" for n in sizes)
    if several:
        head += f"{'growth':>9}"
        if extrapolate_to:
            head += f"{f'~{extrapolate_to:,}':>14}"
    lines = [head]
    for label, values, fmt in rows:
        line = f"{label:<{label_w}}" + "".join(f"{_cell(v, fmt):>12}" for v in values)
        if several and label != "images":
            growth = growth_exponent(sizes[-2], values[-2], sizes[-1], values[-1])
            line += f"{_cell(growth, '{:.2f}'):>9}"
            if extrapolate_to and EXTRAPOLATED.search(label):
                far = extrapolate(sizes[-2], values[-2], sizes[-1], values[-1], extrapolate_to)
                line += f"{_cell(far, fmt):>14}"
        lines.append(line)
    return "\n".join(lines)


def target_lines(results: list[dict]) -> list[str]:
    """The issue's targets, as ratios of what was measured (no extrapolation)."""
    first, last = results[0], results[-1]
    lines = [
        f"activation stage / (load + bare forward) at {r['images']:,}: {activation_ratio(r):.2f}"
        f" (target <= 1.1)"
        for r in results
    ]
    if len(results) > 1:
        g0 = first["outputs"]["graph_s_per_class"]
        g1 = last["outputs"]["graph_s_per_class"]
        lines.append(
            f"concept graph per class at {last['images']:,} / at {first['images']:,}: "
            f"{g1 / max(g0, 1e-9):.2f} (target <= 1.2 for 1,281,167 / 4,000)"
        )
    lines += [
        f"whole-run peak RSS at {r['images']:,}: {r['peak_rss_gb']:.2f} GB (target <= 3 GB at "
        f"1,281,167)"
        for r in results
    ]
    lines += [
        f"whole run at {r['images']:,}: {r['stages']['total']:.0f} s (target: 1,281,167 within "
        "3,600 s)"
        for r in results
    ]
    return lines


def print_results(results: list[dict], extrapolate_to: int) -> None:
    print(
        "(growth: log(value ratio) / log(image ratio) between the two largest sizes: 1 = "
        "linear in images, 0 = flat)"
    )
    if extrapolate_to and len(results) > 1:
        print(
            f"(~{extrapolate_to:,}: EXTRAPOLATED, not measured: the line through the two "
            "largest sizes, never below the largest's value)"
        )
    print()
    print(format_table(results, extrapolate_to or None))
    print()
    for line in target_lines(results):
        print(line)


def merge_results(runs: list[list[dict]]) -> list[dict]:
    """Several ``--json`` files' sizes in one list, ascending; a size in two files is an
    error (which run to show is the user's choice)."""
    merged: dict[int, dict] = {}
    for results in runs:
        for result in results:
            if result["images"] in merged:
                raise ValueError(f"{result['images']:,} images appear in two --json files")
            merged[result["images"]] = result
    return [merged[n] for n in sorted(merged)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4000,40000", help="image counts, comma-separated")
    parser.add_argument("--image-size", type=int, default=64, help="px (the demo's: 64)")
    parser.add_argument("--epochs", type=int, default=1, help="built-in model's training epochs")
    parser.add_argument("--shard-size", type=int, default=10_000, help="images per shard")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--no-features", dest="features", action="store_false", help="channels only"
    )
    parser.add_argument(
        "--dictionary-epochs",
        type=int,
        help="the dictionaries' training epochs (default: the study's, 240); their step is "
        "fixed-size work (a capped sample), its seconds proportional to the epochs",
    )
    parser.add_argument(
        "--reference-images",
        type=int,
        help="time the reference (load + bare forward) over the first N images only and "
        "compare per image (default: every image; at 1,281,167 the full reference is a "
        "second pass of about 13 minutes here)",
    )
    parser.add_argument("--keep", type=Path, help="keep each size's study, database and log here")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        help="print the table of one or more --json files again, sizes merged (nothing is run)",
    )
    parser.add_argument(
        "--extrapolate",
        type=int,
        default=IMAGENET_IMAGES,
        help="a column carrying seconds, memory and sizes to this many images on the line "
        "through the two largest sizes, labelled as an extrapolation (0: none)",
    )
    args = parser.parse_args(argv)
    if args.from_json:
        try:
            results = merge_results([json.loads(p.read_text()) for p in args.from_json])
        except (OSError, ValueError) as exc:
            print(f"paper_data_scale.py: --from-json: {exc}", file=sys.stderr)
            return 2
        print_results(results, args.extrapolate)
        return 0
    try:
        sizes = parse_sizes(args.sizes)
        if not 16 <= args.image_size <= 1024:
            raise BenchError(f"--image-size must be 16 to 1024 px, got {args.image_size}")
        for name in (
            "epochs",
            "shard_size",
            "top_k",
            "batch_size",
            "dictionary_epochs",
            "reference_images",
        ):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
        work = args.keep or Path(tempfile.mkdtemp(prefix="carto-data-scale-"))
        work.mkdir(parents=True, exist_ok=True)
        load = os.getloadavg()
        print(
            f"shapes world, builtin model ({args.epochs} training epoch(s)), {args.image_size} px, "
            f"features {'on' if args.features else 'off'}"
            + (
                f" (dictionary epochs {args.dictionary_epochs})"
                if args.features and args.dictionary_epochs
                else ""
            )
            + f", top_k {args.top_k}, shard_size "
            f"{args.shard_size}, batch {args.batch_size}, CPU ({os.cpu_count()} cores), "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            flush=True,
        )
        results = []
        for size in sizes:
            results.append(measure_size(size, args, work, lambda m: print(m, flush=True)))
            if args.json:  # after each size: a long run keeps what it measured
                args.json.write_text(json.dumps(results, indent=1))
    except BenchError as exc:
        print(f"paper_data_scale.py: {exc}", file=sys.stderr)
        return 2
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print_results(results, args.extrapolate)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
