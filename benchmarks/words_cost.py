"""Time and memory of labelling units with words, on synthetic data at two sizes.

Usage::

    python benchmarks/words_cost.py [--scale rehearsal|paper|both] [--max-terms 3] [--beam 5]

``rehearsal`` is the 100-class googlenet rehearsal's size (2,000 sampled images, 5,488 units,
100 class terms; the target is <= 10 s); ``paper`` the paper's scale (20,000 sampled images,
6,860 units, 1,000 class terms and 40 terms of 8 other concepts with 5 values each). Every
image has one class and one value per other concept. A unit's activation is a ReLU of noise
plus one to three weighted terms (as a real unit leans on a few concepts), and a few units are
planted as exact formulas (``colour=c0 OR shape=c1``, a class, ``class=... AND NOT ...``); the
run says whether the search recovers them.

Each scale runs in its own subprocess, so that its peak RSS (``ru_maxrss``: interpreter,
libraries, the activation matrix and the search's working arrays) is its own. ``search Δ`` is
the peak of numpy's allocations during :func:`label_units` above what was allocated before it
(tracemalloc, which numpy reports to): the search's working memory, bounded by its
``memory_budget`` (256 MiB) plus the result; ``peak RSS in search`` is the process's peak
RSS during the search (the kernel's mark reset just before, Linux), to be read against
``RSS before search`` (mostly the activation matrix). Seconds per phase come from the search's own
``timings`` (summed over its unit chunks).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc

import numpy as np
from scipy import sparse

from carto_assets.core.words.formula import And, Not, Or, Term, evaluate, parse, text
from carto_assets.core.words.search import LabelSearch, label_units, term_indicator

SCALES = {
    "rehearsal": {"images": 2_000, "units": 5_488, "classes": 100, "concepts": 0},
    "paper": {"images": 20_000, "units": 6_860, "classes": 1_000, "concepts": 8},
}
VALUES_PER_CONCEPT = 5


def synthetic(images: int, units: int, classes: int, concepts: int, seed: int = 0):
    """Annotation rows, activations (float32, n_images x n_units) and the planted formulas."""
    rng = np.random.default_rng(seed)
    image_ids = np.arange(images, dtype=np.int64)
    rows, names, values = (
        [image_ids],
        ["class"] * images,
        [f"n{c:04d}" for c in rng.permutation(np.arange(images) % classes)],
    )
    concept_names = ["shape", "colour", "texture", "size", "background", "pose", "light", "part"]
    for name in concept_names[:concepts]:
        rows.append(image_ids)
        names += [name] * images
        values += [f"c{v}" for v in rng.integers(0, VALUES_PER_CONCEPT, images)]
    start = time.perf_counter()
    terms, indicator = term_indicator(image_ids, np.concatenate(rows), names, values)
    indicator_seconds = time.perf_counter() - start

    # Each unit leans on 1-3 random terms with weights in [1, 3], plus unit-scale noise.
    n_terms = len(terms)
    per_unit = rng.integers(1, 4, units)
    columns = np.repeat(np.arange(units), per_unit)
    weights = sparse.csr_matrix(
        (rng.uniform(1, 3, len(columns)), (rng.integers(0, n_terms, len(columns)), columns)),
        shape=(n_terms, units),
    )
    signal = (sparse.csr_matrix(indicator, dtype=np.float32) @ weights).toarray()
    activations = rng.standard_normal((images, units), dtype=np.float32)
    activations += signal.astype(np.float32)
    np.maximum(activations, 0, out=activations)
    del signal

    code = {t: i for i, t in enumerate(terms)}
    dense = {t: indicator[:, code[t]].toarray().ravel() for t in terms}
    planted: dict[int, object] = {}
    by_concept = [Term(c, "c0") for c in concept_names[:concepts]]
    candidates = [Term("class", "n0007")]
    if len(by_concept) >= 2:
        candidates += [
            Or((by_concept[1], Term(by_concept[0].concept, "c1"))),
            And((Term("class", "n0003"), Not(by_concept[2]))),
            And((by_concept[0], by_concept[1])),
        ]
    else:
        candidates += [Or((Term("class", "n0001"), Term("class", "n0002")))]
    for unit, formula in enumerate(candidates):
        activations[:, unit] = evaluate(formula, dense).astype(np.float32)
        planted[unit] = formula
    return terms, indicator, activations, planted, indicator_seconds


def run_scale(scale: str, max_terms: int, beam: int) -> dict:
    """One scale in this process: generate, label, measure."""
    size = SCALES[scale]
    start = time.perf_counter()
    terms, indicator, activations, planted, indicator_seconds = synthetic(**size)
    generate_seconds = time.perf_counter() - start
    rss_before = _reset_peak_rss()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    words = label_units(
        activations, terms, indicator, LabelSearch(max_terms=max_terms, beam=beam), timings=timings
    )
    search_seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    recovered = {
        text(formula): {
            "label": words.formula[unit],
            "auc": round(float(words.auc[unit]), 4),
            "single": f"{words.single_term[unit]} ({words.single_auc[unit]:.4f})",
            "recovered": words.formula[unit] is not None
            and parse(words.formula[unit]) in _equivalents(formula),
        }
        for unit, formula in planted.items()
    }
    labelled = np.array([f is not None for f in words.formula])
    return {
        "scale": scale,
        **size,
        "terms": len(terms),
        "max_terms": max_terms,
        "beam": beam,
        "formulas per unit": words.n_formulas,
        "generate s": round(generate_seconds, 2),
        "indicator s": round(indicator_seconds, 3),
        **{f"{phase} s": round(seconds, 2) for phase, seconds in timings.items()},
        "search s": round(search_seconds, 2),
        "search Δ MiB": round((peak - before) / 2**20, 1),
        "activations MiB": round(activations.nbytes / 2**20, 1),
        "RSS before search MiB": round(rss_before / 2**20, 1),
        "peak RSS in search MiB": round(_peak_rss() / 2**20, 1),
        "peak RSS MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "labelled": round(float(labelled.mean()), 3),
        "composite": round(float(np.mean([f is not None and " " in f for f in words.formula])), 3),
        "planted recovered": recovered,
    }


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) where Linux allows; the RSS now, in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        pass
    return _status("VmRSS")


def _peak_rss() -> int:
    """Peak RSS since the last reset (VmHWM), in bytes; ru_maxrss where /proc has none."""
    return _status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _equivalents(formula) -> list:
    """The formula and its commuted two-operand forms (the search may write either order)."""
    found = [formula]
    if isinstance(formula, And | Or) and len(formula.operands) == 2:
        found.append(type(formula)(formula.operands[::-1]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=[*SCALES, "both"], default="both")
    parser.add_argument("--max-terms", type=int, default=3)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON line (internal)")
    args = parser.parse_args()
    if args.json:
        print(json.dumps(run_scale(args.scale, args.max_terms, args.beam)))
        return
    scales = list(SCALES) if args.scale == "both" else [args.scale]
    for scale in scales:
        command = [sys.executable, __file__, "--json", "--scale", scale]
        command += ["--max-terms", str(args.max_terms), "--beam", str(args.beam)]
        result = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
        print(f"== {scale}")
        for key, value in result.items():
            if isinstance(value, dict):
                print(f"  {key}:")
                for name, found in value.items():
                    print(f"    {name:<32} {found}")
            else:
                print(f"  {key:<20} {value}")


if __name__ == "__main__":
    main()
