"""benchmarks/activations.py --study: typed on a mapped study (the session's tiny one).

Only what it prints is checked, never a speed: the images it timed, one line per repeat
(load + forward, the stage, the stage on channels only), that the three sides saw the same
images and predicted the same classes, and ratios that are the ratios of the seconds it
printed; the same for its batch-by-batch timing, and for several batch sizes side by side
(``--batch-sizes``).
"""

import re

import pytest
from benchmark_run import run_benchmark


@pytest.mark.slow
def test_the_study_side_by_side_prints_its_repeats_and_their_ratios(materialized):
    _, _, study_file = materialized
    out = run_benchmark("activations.py", "--study", study_file, "--images", 40, "--repeats", 3)
    assert out.returncode == 0, out.stderr
    head = re.search(r"(\d+) images of shard 0, (\d+) layers and (\d+) feature layers", out.stdout)
    assert head is not None, out.stdout
    assert 0 < int(head.group(1)) <= 40
    assert int(head.group(3)) == 1  # the fixture's block3 features are part of the stage
    repeats = re.findall(
        r"repeat \d: load \+ forward ([\d.]+) s, stage ([\d.]+) s, channels only ([\d.]+) s",
        out.stdout,
    )
    assert len(repeats) == 3
    same = re.search(
        r"the same (\d+) images and predicted classes on every side: stage (\w+), "
        r"channels only (\w+)",
        out.stdout,
    )
    assert same is not None, out.stdout
    assert same.groups() == (head.group(1), "yes", "yes")
    for column, name in ((1, "stage"), (2, "channels only")):
        line = re.search(
            rf"^{name} / \(load \+ forward\).*each repeat ([\d., ]+)$", out.stdout, re.M
        )
        assert line is not None, out.stdout
        for seconds, ratio in zip(repeats, line.group(1).split(", ")):
            ref, side = float(seconds[0]), float(seconds[column])
            # Seconds are printed to 0.01 s, the ratios from the unrounded seconds.
            low = (side - 0.005) / (ref + 0.005)
            high = (side + 0.005) / max(ref - 0.005, 1e-9)
            assert low - 0.0005 <= float(ratio) <= high + 0.0005
    # Batch by batch: each repeat's four sums, and ratios that are the ratios of those sums.
    steps = re.findall(
        r"batch by batch \d: load ([\d.]+) s, forward ([\d.]+) s, stage ([\d.]+) s, "
        r"channels only ([\d.]+) s \((\d+) images, the same predicted classes\)",
        out.stdout,
    )
    assert len(steps) == 3, out.stdout
    assert {int(s[4]) for s in steps} == {int(head.group(1))}
    for column, name in ((2, "stage"), (3, "channels only")):
        line = re.search(
            rf"^batch by batch, {name} / \(load \+ forward\): ([\d.]+) over every repeat .*"
            rf"each repeat ([\d., ]+); the {name} alone ([\d.]+)x the bare forward pass$",
            out.stdout,
            re.M,
        )
        assert line is not None, out.stdout
        for seconds, ratio in zip(steps, line.group(2).split(", ")):
            load, forward, side = float(seconds[0]), float(seconds[1]), float(seconds[column])
            low = (load + side - 0.01) / (load + forward + 0.01)
            high = (load + side + 0.01) / max(load + forward - 0.01, 1e-9)
            assert low - 0.0005 <= float(ratio) <= high + 0.0005


@pytest.mark.slow
def test_batch_sizes_are_measured_each_and_compared_side_by_side(materialized):
    _, _, study_file = materialized
    out = run_benchmark(
        "activations.py", "--study", study_file, "--images", 40, "--repeats", 2,
        "--batch-sizes", "16,8",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    # Each size is read in its own batches: both measurements for each, in the order given.
    heads = re.findall(r"(\d+) images of shard 0, .*, batch (\d+), k=", out.stdout)
    assert [size for _, size in heads] == ["16", "8"], out.stdout
    n_images = int(heads[0][0])
    steps = re.findall(
        r"batch by batch (\d) \(batch (\d+)\): load ([\d.]+) s, forward ([\d.]+) s, stage "
        r"([\d.]+) s, channels only ([\d.]+) s \((\d+) images, the same predicted classes\)",
        out.stdout,
    )
    # Alternated, the order reversed every other repeat.
    alternated = [("1", "16"), ("1", "8"), ("2", "8"), ("2", "16")]
    assert [(r, size) for r, size, *_ in steps] == alternated
    assert {int(s[6]) for s in steps} == {n_images}
    per_image = {}
    for size in ("16", "8"):
        mine = [s for s in steps if s[1] == size]
        line = re.search(
            rf"^batch by batch \(batch {size}\), stage / \(load \+ forward\): ([\d.]+) over",
            out.stdout,
            re.M,
        )
        assert line is not None, out.stdout
        load, forward, stage = (sum(float(s[i]) for s in mine) for i in (2, 3, 4))
        # Seconds are printed to 0.01 s, the ratio from the unrounded seconds.
        assert (load + stage - 0.02) / (load + forward + 0.02) - 0.0005 <= float(line.group(1))
        assert float(line.group(1)) <= (load + stage + 0.02) / max(load + forward - 0.02, 1e-9)
        per_image[size] = (load + forward, load + stage)
    side = {
        size: (float(ms), float(times))
        for size, ms, times in re.findall(
            r"^  batch (\d+): load \+ forward ([\d.]+) ms per image \(([\d.]+)x batch 16's\)",
            out.stdout,
            re.M,
        )
    }
    assert set(side) == {"16", "8"}, out.stdout
    assert side["16"][1] == 1.0
    for size, (ms, _) in side.items():
        seconds = per_image[size][0]  # summed over 2 repeats of n_images
        assert abs(ms - 1e3 * seconds / (2 * n_images)) <= 1e3 * 0.02 / (2 * n_images) + 1e-4
    ratio = side["8"][0] / side["16"][0]
    assert abs(side["8"][1] - ratio) <= 0.002


@pytest.mark.parametrize("value", ["0,8", "8,8", "eight"])
def test_batch_sizes_that_are_not_distinct_positive_integers_are_refused(value):
    out = run_benchmark("activations.py", "--study", "unused.yaml", "--batch-sizes", value)
    assert out.returncode == 2
    assert "--batch-sizes" in out.stderr and repr(value) in out.stderr
