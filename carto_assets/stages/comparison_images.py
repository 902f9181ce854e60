"""Studies are compared only over the same images: the same ids, the same files, in the same
order. The first difference is named in one line (:func:`check_same_images`).

An image is identified by its id, its ``source`` (``shapes:<i>``, ``digits:<i>``, or the path
inside the image folder) and what the source is: the shapes world's seed and planted shortcuts
(its scene depends on them and the index, not on the rendered size), scikit-learn's digits, or
the image folder, whose files are compared byte for byte when two studies read different
folders.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl

from carto_assets.study import Study
from carto_assets.study.comparison import ComparisonError


def _origin(study: Study) -> str:
    """What the images' sources refer to, in words."""
    dataset = study.dataset
    if dataset.kind == "shapes":
        planted = "; ".join(
            f"{s.class_name} {s.concept}={s.value} share {s.share:g}" for s in dataset.shortcuts
        )
        return f"the shapes world with seed {study.seed}" + (
            f" and shortcuts {planted}" if planted else ""
        )
    if dataset.kind == "digits":
        return "scikit-learn's digits"
    return f"the image folder {dataset.path}"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_same_images(
    studies: list[Study], images: list[pl.DataFrame], names: list[str] | None = None
) -> None:
    """Raise :class:`ComparisonError` naming the first image that differs between the studies.

    Parameters
    ----------
    studies
        The studies, in the comparison's order.
    images
        Each study's ``images`` table (``image_id``, ``source``, ...).
    names
        How to name the studies in the message (default: their ``name``).
    """
    names = names or [s.name for s in studies]
    first, reference = studies[0], images[0].sort("image_id")
    for study, table, name in zip(studies[1:], images[1:], names[1:], strict=True):
        table = table.sort("image_id")
        prefix = f"studies '{names[0]}' and '{name}' do not map the same images"
        n_a, n_b = len(reference), len(table)
        common = min(n_a, n_b)
        ids_a = reference["image_id"].to_list()
        ids_b = table["image_id"].to_list()
        src_a = reference["source"].to_list()
        src_b = table["source"].to_list()
        for i in range(common):
            if ids_a[i] != ids_b[i]:
                raise ComparisonError(
                    f"{prefix}: position {i} of the manifest holds image id {ids_a[i]} in "
                    f"'{names[0]}' but {ids_b[i]} in '{name}'"
                )
            if src_a[i] != src_b[i]:
                raise ComparisonError(
                    f"{prefix}: image {ids_a[i]} is {src_a[i]!r} in '{names[0]}' but "
                    f"{src_b[i]!r} in '{name}' (other files, or the same in another order)"
                )
        if n_a != n_b:
            longer, extra = (names[0], src_a) if n_a > n_b else (name, src_b)
            raise ComparisonError(
                f"{prefix}: '{names[0]}' has {n_a} images and '{name}' {n_b}; image {common} "
                f"({extra[common]!r}) is only in '{longer}'"
            )
        _check_origin(first, study, names[0], name, src_a, prefix)


def _check_origin(
    a: Study, b: Study, name_a: str, name_b: str, sources: list[str], prefix: str
) -> None:
    """Equal sources that refer to different images (another world seed, another folder)."""
    kind_a, kind_b = a.dataset.kind, b.dataset.kind
    first = f"image 0 ({sources[0]!r})" if sources else "the images"
    other_world = a.seed != b.seed or a.dataset.shortcuts != b.dataset.shortcuts
    if kind_a != kind_b or (kind_a == "shapes" and other_world):
        raise ComparisonError(
            f"{prefix}: {first} is from {_origin(a)} in '{name_a}' but from {_origin(b)} in "
            f"'{name_b}'"
        )
    if kind_a != "imagefolder":
        return
    root_a, root_b = Path(a.dataset.path or ""), Path(b.dataset.path or "")
    if root_a.resolve() == root_b.resolve():
        return
    for i, source in enumerate(sources):
        file_a, file_b = root_a / source, root_b / source
        same = file_a.is_file() and file_b.is_file()
        if same and file_a.stat().st_size == file_b.stat().st_size:
            same = _file_digest(file_a) == _file_digest(file_b)
        else:
            same = False
        if not same:
            raise ComparisonError(
                f"{prefix}: image {i} ({source!r}) is {file_a} in '{name_a}' and {file_b} in "
                f"'{name_b}', and the files differ"
            )
