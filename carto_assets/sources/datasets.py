"""Image sources: the built-in ``shapes`` world, scikit-learn's ``digits`` and user image folders.

Every source presents the same small interface (:class:`ImageSource`): a manifest of records and
a way to load any image by index as a square uint8 RGB array at the model's input size. The
activation pass, model training and patch cropping all go through it, so they see exactly the
same pixels. A source that renders its images (the shapes world) can also re-render them with
one concept changed (:meth:`ImageSource.counterfactual`); the others say they cannot.

This module never imports dagster or torch.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from carto_assets.study import Study

if TYPE_CHECKING:
    from carto_assets.sources.shapes import Shortcut


@dataclass(frozen=True)
class ImageRecord:
    """One image of the manifest."""

    source: str
    label: int
    label_name: str


@dataclass(frozen=True)
class SourceScan:
    """What the manifest needs of a source, column by column (see :meth:`ImageSource.scan`)."""

    sources: list[str]
    labels: np.ndarray  # int32, image_id order
    label_names: list[str]
    #: ground-truth rows as columns (image_id int64, concept, value), or None
    concepts: dict[str, object] | None
    #: each image's object mask, bits packed row-major: (heights, widths, packed bytes), or None
    masks: tuple[np.ndarray, np.ndarray, list[bytes]] | None


@dataclass(frozen=True)
class SkippedFile:
    """A file of an image folder that is not used, and why."""

    path: str
    reason: str


class ImageLoadError(RuntimeError):
    """An image could not be decoded (the activation pass skips and counts it)."""


class ImageSource(abc.ABC):
    """A dataset of labelled square RGB images."""

    kind: str
    image_size: int
    #: Whether :meth:`load_many` may spread the loading over threads: decoding files mostly
    #: releases the GIL, so threads help; a source that draws its images in Python holds it,
    #: and threads only add their overhead (the shapes world: 32 images in 14 ms on one
    #: thread, 36 ms on four).
    threaded_loading: bool = True

    @property
    @abc.abstractmethod
    def class_names(self) -> list[str]: ...

    @abc.abstractmethod
    def records(self) -> list[ImageRecord]:
        """The manifest, in image_id order."""

    @abc.abstractmethod
    def load(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 (image_size, image_size, 3). Raises :class:`ImageLoadError`."""

    def load_many(self, indices: Sequence[int], workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Load a batch; returns (images (n_ok, H, W, 3), ok mask over ``indices``)."""

        def one(i: int) -> np.ndarray | None:
            try:
                return self.load(int(i))
            except ImageLoadError:
                return None

        if workers > 1 and self.threaded_loading and len(indices) > 1:
            with ThreadPoolExecutor(workers) as pool:
                loaded = list(pool.map(one, indices))
        else:
            loaded = [one(i) for i in indices]
        ok = np.array([img is not None for img in loaded], dtype=bool)
        kept = [img for img in loaded if img is not None]
        empty = np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        return (np.stack(kept) if kept else empty), ok

    def __len__(self) -> int:
        """Images in the manifest."""
        return len(self.records())

    def concept_rows(self) -> list[tuple[int, str, str]] | None:
        """Ground-truth (image_id, concept, value) rows, or None when the source has none."""
        return None

    def object_mask(self, index: int) -> np.ndarray | None:
        """Ground truth of where image ``index``'s object is: a bool (image_size, image_size)
        mask, or None when the source does not know."""
        return None

    def scan(self) -> SourceScan:
        """Every image's record, ground truth and packed object mask, in image_id order: what
        the ``images`` asset stores. This default asks :meth:`records`, :meth:`concept_rows`
        and :meth:`object_mask` in turn; a source that derives all three from one draw per
        image (the shapes world) does it in one pass."""
        records = self.records()
        n = len(records)
        rows = self.concept_rows()
        concepts = None
        if rows is not None:
            concepts = {
                "image_id": np.array([r[0] for r in rows], dtype=np.int64),
                "concept": [r[1] for r in rows],
                "value": [r[2] for r in rows],
            }
        masks = None
        if n and self.object_mask(0) is not None:
            # Each mask is packed as soon as it is drawn: the unpacked masks of every image
            # would hold a byte per pixel (5 GB for 1,281,167 images of 64 px).
            heights = np.empty(n, dtype=np.int32)
            widths = np.empty(n, dtype=np.int32)
            packed = []
            for i in range(n):
                mask = self.object_mask(i)
                heights[i], widths[i] = mask.shape
                packed.append(np.packbits(mask.astype(bool)).tobytes())
            masks = (heights, widths, packed)
        return SourceScan(
            sources=[r.source for r in records],
            labels=np.array([r.label for r in records], dtype=np.int32),
            label_names=[r.label_name for r in records],
            concepts=concepts,
            masks=masks,
        )

    def can_change(self, concept: str) -> bool:
        """Whether :meth:`counterfactual` can re-render images with ``concept`` changed."""
        return False

    def counterfactual(
        self, indices: Sequence[int], concept: str, seed: int
    ) -> tuple[np.ndarray, list[str]] | None:
        """Images ``indices`` re-rendered with ``concept`` changed and nothing else: (pixels
        uint8 (n, H, W, 3), each image's new value), or None where the source cannot render
        counterfactuals (photographs, scans: all but a rendered world)."""
        return None

    @property
    def skipped(self) -> list[SkippedFile]:
        return []


class ShapesSource(ImageSource):
    """The procedurally rendered shapes world; the class label is the object's shape."""

    kind = "shapes"
    threaded_loading = False  # drawn in Python: threads only contend for the GIL

    def __init__(
        self,
        n_images: int,
        image_size: int = 64,
        seed: int = 0,
        shortcuts: Sequence[Shortcut] = (),
    ) -> None:
        from carto_assets.sources.shapes import CLASS_NAMES, ShapesWorld

        self.world = ShapesWorld(
            n_images=n_images, image_size=image_size, seed=seed, shortcuts=shortcuts
        )
        self.image_size = image_size
        self._class_names = list(CLASS_NAMES)

    @property
    def class_names(self) -> list[str]:
        return self._class_names

    def records(self) -> list[ImageRecord]:
        out = []
        for i in range(len(self.world)):
            label = self.world.label(i)
            out.append(ImageRecord(f"shapes:{i}", label, self._class_names[label]))
        return out

    def load(self, index: int) -> np.ndarray:
        return self.world.image(index)

    def concept_rows(self) -> list[tuple[int, str, str]]:
        return self.world.concept_rows()

    def object_mask(self, index: int) -> np.ndarray:
        return self.world.object_mask(index)

    def __len__(self) -> int:
        return len(self.world)

    def scan(self) -> SourceScan:
        """:meth:`ImageSource.scan` drawing each scene once (it was drawn three times: for
        the label, the concepts and the mask), concepts kept as value codes until the end:
        one Python tuple per (image, concept) held 2.5 KB per image, 3 GB at ImageNet's
        1,281,167."""
        from carto_assets.runtime import progress
        from carto_assets.sources.shapes import CONCEPTS, object_coverage

        n = len(self.world)
        progress.advance("images", 0, n, "images")
        names = list(CONCEPTS)
        codes = {name: {v: k for k, v in enumerate(CONCEPTS[name])} for name in names}
        values = np.empty((n, len(names)), dtype=np.int16)
        size = self.image_size
        packed: list[bytes] = []
        for i in range(n):
            scene = self.world.scene(i)
            values[i] = [codes[name][getattr(scene, name)] for name in names]
            packed.append(np.packbits(object_coverage(scene, size) > 0.5).tobytes())
            if (i + 1) % 4096 == 0 or i + 1 == n:
                progress.advance("images", i + 1, n, "images")
        labels = values[:, names.index("shape")].astype(np.int32)
        value_text = np.empty((n, len(names)), dtype=object)
        for j, name in enumerate(names):
            value_text[:, j] = np.asarray(CONCEPTS[name], dtype=object)[values[:, j]]
        class_names = np.asarray(self._class_names, dtype=object)
        return SourceScan(
            sources=[f"shapes:{i}" for i in range(n)],
            labels=labels,
            label_names=class_names[labels].tolist(),
            concepts={
                "image_id": np.repeat(np.arange(n, dtype=np.int64), len(names)),
                "concept": np.tile(np.asarray(names, dtype=object), n),
                "value": value_text.reshape(-1),
            },
            masks=(np.full(n, size, np.int32), np.full(n, size, np.int32), packed),
        )

    def can_change(self, concept: str) -> bool:
        from carto_assets.sources.shapes import CHANGEABLE_CONCEPTS

        return concept in CHANGEABLE_CONCEPTS

    def counterfactual(
        self, indices: Sequence[int], concept: str, seed: int
    ) -> tuple[np.ndarray, list[str]]:
        """Each image re-rendered with ``concept`` set to a value drawn uniformly among the
        concept's other values, seeded by ``(seed, image, concept)``: an image gets the same
        counterfactual in any batch. Raises ``ValueError`` for a concept it cannot change."""
        from carto_assets.sources.shapes import (
            CHANGEABLE_CONCEPTS,
            CONCEPTS,
            counterfactual,
            render,
        )

        if concept not in CHANGEABLE_CONCEPTS:
            raise ValueError(
                f"cannot change concept {concept!r}; changeable: {', '.join(CHANGEABLE_CONCEPTS)}"
            )
        which = list(CONCEPTS).index(concept)
        pixels = np.empty((len(indices), self.image_size, self.image_size, 3), dtype=np.uint8)
        values: list[str] = []
        for row, index in enumerate(indices):
            scene = self.world.scene(int(index))
            others = [v for v in CONCEPTS[concept] if v != getattr(scene, concept)]
            rng = np.random.default_rng([seed, int(index), which])
            value = others[int(rng.integers(len(others)))]
            pixels[row] = render(counterfactual(scene, concept, value), self.image_size)
            values.append(value)
        return pixels, values


class DigitsSource(ImageSource):
    """scikit-learn's 1,797 real 8x8 handwritten digits, upscaled and replicated to RGB."""

    kind = "digits"

    def __init__(self, image_size: int = 32, limit: int | None = None) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = digits.images if limit is None else digits.images[:limit]
        self.targets = digits.target if limit is None else digits.target[:limit]
        self.image_size = image_size
        # 0..16 grey levels -> 0..255; bilinear upscaling keeps strokes smooth.
        self._raw = (images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)

    @property
    def class_names(self) -> list[str]:
        return [str(d) for d in range(10)]

    def records(self) -> list[ImageRecord]:
        return [ImageRecord(f"digits:{i}", int(t), str(int(t))) for i, t in enumerate(self.targets)]

    def load(self, index: int) -> np.ndarray:
        img = Image.fromarray(self._raw[index], mode="L").resize(
            (self.image_size, self.image_size), Image.Resampling.BILINEAR
        )
        return np.repeat(np.asarray(img)[:, :, None], 3, axis=2)

    def object_mask(self, index: int) -> np.ndarray:
        """The digit's ink: pixels at least a quarter of full intensity after upscaling."""
        return self.load(index)[:, :, 0] >= 64


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, P, RGBA, CMYK, I;16, I, F, ...) to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # convert("RGB") clips 16-bit data at 255; rescale to the 8-bit range instead.
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr8 = np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on white so transparent regions don't turn into arbitrary colours.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and crop the centre square (torchvision's recipe)."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


class ImageFolderSource(ImageSource):
    """A folder in torchvision ImageFolder layout: ``root/<class>/<image>``, any PIL format.

    Unreadable, zero-byte and non-image files are skipped and listed in :attr:`skipped`
    (header check at scan time); images that fail to decode later (e.g. truncated files) are
    skipped and counted by the activation pass.
    """

    kind = "imagefolder"

    def __init__(self, root: str | Path, image_size: int = 224, limit: int | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.image_size = image_size
        self._skipped: list[SkippedFile] = []
        class_dirs = sorted(
            d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        for f in sorted(self.root.iterdir()):
            if f.is_file():
                self._skipped.append(
                    SkippedFile(f.name, "not inside a class folder (root/<class>/<image>)")
                )
        self._class_names = [d.name for d in class_dirs]
        candidates: list[tuple[Path, int]] = []
        for label, d in enumerate(class_dirs):
            for dirpath, dirnames, filenames in os.walk(d):
                dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
                for name in sorted(filenames):
                    candidates.append((Path(dirpath) / name, label))
        self._records: list[ImageRecord] = []
        self._paths: list[Path] = []
        for path, label in candidates:
            reason = self._header_problem(path)
            rel = str(path.relative_to(self.root))
            if reason is not None:
                self._skipped.append(SkippedFile(rel, reason))
                continue
            if limit is not None and len(self._records) >= limit:
                break
            self._records.append(ImageRecord(rel, label, self._class_names[label]))
            self._paths.append(path)
        if not self._records:
            listed = "; ".join(f"{s.path}: {s.reason}" for s in self._skipped[:5])
            raise ValueError(
                f"no readable image in {self.root} (expected root/<class>/<image> files in a "
                f"format PIL reads; {len(self._skipped)} file(s) skipped"
                f"{': ' + listed if listed else ''})"
            )

    @classmethod
    def from_manifest(
        cls,
        root: str | Path,
        sources: Sequence[str],
        labels: Sequence[int],
        class_names: Sequence[str],
        image_size: int,
    ) -> ImageFolderSource:
        """Rebuild from a stored manifest without rescanning the folder (shards, patches)."""
        self = cls.__new__(cls)
        self.root = Path(root)
        self.image_size = image_size
        self._skipped = []
        self._class_names = list(class_names)
        self._records = [
            ImageRecord(s, int(lbl), self._class_names[int(lbl)]) for s, lbl in zip(sources, labels)
        ]
        self._paths = [self.root / s for s in sources]
        return self

    @staticmethod
    def _header_problem(path: Path) -> str | None:
        if path.name.startswith("."):
            return "hidden file"
        try:
            if path.stat().st_size == 0:
                return "zero-byte file"
            with Image.open(path) as img:
                img.verify()
        except UnidentifiedImageError:
            return "not an image PIL can read"
        except (OSError, SyntaxError, ValueError) as exc:
            return f"unreadable: {exc}"
        return None

    @property
    def class_names(self) -> list[str]:
        return self._class_names

    @property
    def skipped(self) -> list[SkippedFile]:
        return list(self._skipped)

    def records(self) -> list[ImageRecord]:
        return list(self._records)

    def path(self, index: int) -> Path:
        return self._paths[index]

    def load(self, index: int) -> np.ndarray:
        path = self._paths[index]
        try:
            with Image.open(path) as img:
                img.load()
                rgb = to_rgb(img)
                out = resize_center_crop(rgb, self.image_size)
                return np.asarray(out, dtype=np.uint8).copy()
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageLoadError(f"{path}: {exc}") from exc


def default_image_size(kind: str) -> int:
    return {"shapes": 64, "digits": 32, "imagefolder": 224}[kind]


def study_image_size(study: Study) -> int:
    return study.dataset.image_size or default_image_size(study.dataset.kind)


def open_source(study: Study) -> ImageSource:
    """The study's image source (validated; raises with a clear message on bad input)."""
    ds = study.dataset
    size = study_image_size(study)
    if ds.kind == "shapes":
        from carto_assets.sources.shapes import Shortcut

        shortcuts = [Shortcut(s.class_name, s.concept, s.value, s.share) for s in ds.shortcuts]
        return ShapesSource(
            n_images=ds.size or 4000, image_size=size, seed=study.seed, shortcuts=shortcuts
        )
    if ds.kind == "digits":
        return DigitsSource(image_size=size, limit=ds.size)
    if ds.kind == "imagefolder":
        assert ds.path is not None
        return ImageFolderSource(ds.path, image_size=size, limit=ds.size)
    raise ValueError(f"unknown dataset kind {ds.kind!r}")
