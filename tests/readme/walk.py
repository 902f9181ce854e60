"""Helpers of the README tier: a study folder as users have them, and commands run as typed.

Every command runs in a subprocess through the installed ``carto`` (or ``dagster``, ``make``)
from the study's own folder, with the environment a shell would give it. The image folder holds
what real folders hold: several formats and modes, a truncated file, files that are not images,
and class names with quotes, ``<``, ``&`` and non-ASCII letters.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CARTO = BIN / "carto"

#: Class folders a user could have: quotes, markup characters, non-ASCII.
CLASSES = (
    'it\'s "quoted" & <b>bold',
    '<img src=x onerror="window.__xss=1">',
    "Zürich café — 東京",
)
#: (file name, PIL format, mode) of the images of each class, cycling: every common format and
#: the modes the loader converts (palette, 16-bit, RGBA, grayscale, CMYK).
FORMATS = (
    ("png", "PNG", "RGB"),
    ("jpg", "JPEG", "RGB"),
    ("gif", "GIF", "P"),
    ("bmp", "BMP", "RGB"),
    ("tif", "TIFF", "I;16"),
    ("webp", "WEBP", "RGB"),
    ("png", "PNG", "RGBA"),
    ("JPEG", "JPEG", "L"),
    ("jpeg", "JPEG", "CMYK"),
)
PER_CLASS = 8


def _picture(label: int, index: int, rng: np.random.Generator) -> Image.Image:
    """A class-specific shape (disc, square, triangle) on a noisy background, not square."""
    w, h = 48, 40
    noise = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(noise, "RGB")
    draw = ImageDraw.Draw(img)
    cx, cy, r = 24 + (index % 3) - 1, 20 + (index % 2), 11
    colour = ((230, 60, 50), (60, 90, 230), (60, 200, 80))[label]
    if label == 0:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif label == 1:
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return img


def _save(img: Image.Image, path: Path, fmt: str, mode: str) -> None:
    if mode == "I;16":
        grey = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(path, format=fmt)  # uint16: mode I;16
        return
    if mode == "RGBA":
        rgba = img.convert("RGBA")
        rgba.putalpha(200)
        rgba.save(path, format=fmt)
        return
    img.convert(mode).save(path, format=fmt)


def write_awkward_folder(root: Path) -> dict[str, int]:
    """An image folder as real ones are; returns what it holds (images, broken, not images)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for label, name in enumerate(CLASSES):
        folder = root / name
        (folder / "more").mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            ext, fmt, mode = FORMATS[(i + label) % len(FORMATS)]
            where = folder / "more" if i == PER_CLASS - 1 else folder  # one in a subfolder
            _save(_picture(label, i, rng), where / f"{name[:6]} {i}.{ext}", fmt, mode)
    # A truncated JPEG: its header reads, its pixels do not (skipped by the activation pass).
    buffer = io.BytesIO()
    _picture(0, 99, rng).save(buffer, format="JPEG")
    (root / CLASSES[0] / "truncated.jpg").write_bytes(buffer.getvalue()[: buffer.tell() // 2])
    # Files that are not images: skipped when the folder is scanned, and listed.
    (root / CLASSES[1] / "empty.png").write_bytes(b"")
    (root / CLASSES[1] / "notes.txt").write_text("not an image")
    (root / CLASSES[2] / ".DS_Store").write_bytes(b"\0\1\2")
    (root / "README.txt").write_text("a file outside every class folder")
    return {"images": len(CLASSES) * PER_CLASS, "truncated": 1, "not_images": 4}


def write_study(folder: Path, name: str, fields: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **fields}, allow_unicode=True))
    return path


#: The builtin model on the folder, with dictionary features: the README's study, made small.
BUILTIN_STUDY = {
    "model": "builtin",
    "dataset": {"kind": "imagefolder", "path": "images", "image_size": 32},
    "layers": "auto",
    "batch_size": 16,
    "shards": 2,
    "top_k": 3,
    "seed": 0,
    "database": "out/builtin.duckdb",
    "training": {"epochs": 2, "batch_size": 16},
    "embedding": {"epochs": 2},
    "graph": {"images_per_class": 4, "faithfulness_edges": 6},
    "features": {
        "layers": ["block4"],
        "samples": 400,
        "sample_images": 16,
        "epochs": 3,
        "batch_size": 64,
    },
}


@dataclass
class Ran:
    """A finished command: its exit status and what it printed."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def ok(self) -> Ran:
        assert self.returncode == 0, (
            f"{' '.join(self.args)} exited {self.returncode}\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}"
        )
        return self


def shell_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell gives a command: no test-only variables, one CPU thread
    per process (the suite shares the machine), numba's cache shared with the project."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "CARTO_"))}
    env.pop("DAGSTER_HOME", None)
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def run(args: list[str | Path], cwd: Path, timeout: float = 600, **env: str) -> Ran:
    """Run a command as typed (``args[0]`` a program name or path) in ``cwd``."""
    argv = [str(a) for a in args]
    proc = subprocess.run(
        argv, cwd=cwd, env=shell_env(**env), capture_output=True, text=True, timeout=timeout
    )
    return Ran(argv, proc.returncode, proc.stdout, proc.stderr)
