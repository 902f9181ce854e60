"""benchmarks/gpu.py's JPEG folder: the files it writes, and the folder run typed on a CPU.

The figures are a GPU machine's to measure; here the run is typed as its smoke test is, on a
few JPEGs, and only what it prints is checked (never a speed).
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PATH = ROOT / "benchmarks" / "gpu.py"
spec = importlib.util.spec_from_file_location("gpu_bench", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_the_jpegs_are_imagenet_sized_and_written_once(tmp_path):
    total = bench.write_jpegs(tmp_path, 12, classes=3)
    files = sorted(tmp_path.rglob("*.jpg"))
    assert len(files) == 12
    assert sorted({f.parent.name for f in files}) == ["class_000", "class_001", "class_002"]
    assert total == sum(f.stat().st_size for f in files)
    for f in files:
        with Image.open(f) as img:
            assert img.format == "JPEG"
            assert all(300 <= side <= 500 for side in img.size)
    # Tens of KB each, as photos are (a flat image would be a few KB).
    assert 30_000 < total / 12 < 300_000
    stamps = [f.stat().st_mtime_ns for f in files]
    assert bench.write_jpegs(tmp_path, 12, classes=3) == total
    assert [f.stat().st_mtime_ns for f in files] == stamps
    # Fewer than the folder holds: the bytes of those N alone (the size per JPEG it prints).
    first = [tmp_path / f"class_{i % 3:03d}" / f"{i:07d}.jpg" for i in range(6)]
    assert bench.write_jpegs(tmp_path, 6, classes=3) == sum(f.stat().st_size for f in first)


#: Runs gpu.py as the GPU machine would: there PyTorch, torchvision, Pillow, PyYAML and NumPy
#: are installed, pydantic travels as wheels, and the store's packages are not there at all.
ON_THE_GPU_MACHINE = """
import runpy, sys
class NotThere:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"polars", "duckdb", "dagster", "altair", "umap"}:
            raise ImportError(f"{name} is not installed on the GPU machine")
sys.meta_path.insert(0, NotThere())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_the_folder_run_reads_the_folder_through_the_stage(tmp_path):
    """Typed with ``--only-folder`` where the store's packages cannot be imported: the run a
    GPU machine can make with only pydantic carried to it."""
    folder = tmp_path / "jpegs"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            ON_THE_GPU_MACHINE,
            str(PATH),
            "--device",
            "cpu",
            "--jpegs",
            "8",
            "--batch-size",
            "4",
            "--loader-workers",
            "0",
            "--folder",
            str(folder),
            "--only-folder",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert len(list(folder.rglob("*.jpg"))) == 8
    assert "8 JPEGs in" in out.stdout and "0 loader processes" in out.stdout
    rows = {
        m.group(1): [float(v) for v in m.group(2).split()]
        for m in re.finditer(r"^(fp32|bf16)\s+([\d.\s]+?)\s+min$", out.stdout, re.M)
    }
    assert sorted(rows) == ["bf16", "fp32"]
    for decode, bare, stage, per_decode, per_bare, minutes in rows.values():
        assert min(decode, bare, stage) > 0
        # The ratios are of the unrounded rates; the rates are printed to the image.
        for ratio, other in ((per_decode, decode), (per_bare, bare)):
            low = (stage - 0.5) / (other + 0.5) - 0.0005
            high = (stage + 0.5) / max(other - 0.5, 1e-9) + 0.0005
            assert low <= ratio <= high
        assert np.isfinite(minutes) and minutes > 0
