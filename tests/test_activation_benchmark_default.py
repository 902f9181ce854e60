"""benchmarks/activations.py without a study: the built-in CNN on generated images.

Only what it prints is checked, never a speed: the stage finding every position is the
reference the default must equal (the script exits non-zero otherwise), and its ratio is the
ratio of the seconds printed.
"""

import re

import pytest
from benchmark_run import run_benchmark


@pytest.mark.slow
def test_the_built_in_side_by_side_checks_the_stage_against_finding_every_position():
    out = run_benchmark(
        "activations.py",
        "--size", 32, "--images", 64, "--batch-size", 16, "--repeats", 1,
        "--memory-images", 40, "--memory-sample", 8,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    stage = re.search(r"^activation stage : +([\d.]+) s", out.stdout, re.M)
    every = re.search(
        r"^every position   : +([\d.]+) s .*unit: ([\d.]+)x its time; "
        r"the same top-k and class statistics\)$",
        out.stdout,
        re.M,
    )
    assert stage is not None and every is not None, out.stdout
    # Seconds are printed to 0.01 s, the ratio from the unrounded seconds.
    side, ref = float(every.group(1)), float(stage.group(1))
    low, high = (side - 0.005) / (ref + 0.005), (side + 0.005) / max(ref - 0.005, 1e-9)
    assert low - 0.005 <= float(every.group(2)) <= high + 0.005
    assert re.search(r"^top-k merge alone: .*same result\)$", out.stdout, re.M), out.stdout
    assert re.search(r"^memory growth for 10x images: ", out.stdout, re.M), out.stdout
