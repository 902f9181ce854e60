"""The image manifest: which images a study maps, in which shard, with which labels.

Files under ``study.files_dir``::

    manifest/images.parquet         the image manifest (also the ``images`` table)
    manifest/classes.json           class names in label order

The ``images`` asset also writes ``image_annotations``: every annotation value of every image
(the world's ground truth, ``class=<label_name>``, the user's ``annotations`` table), the terms
the units' words are made of.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from carto_assets.sources.annotations import CLASS_CONCEPT, UserAnnotations, load_user_annotations
from carto_assets.sources.datasets import (
    ImageFolderSource,
    ImageSource,
    SkippedFile,
    open_source,
    study_image_size,
)
from carto_assets.storage import atomic
from carto_assets.storage.quality import Figure
from carto_assets.storage.sharding import shard_of
from carto_assets.storage.store import CartoStore, write_parquet_atomic
from carto_assets.study import Study


@dataclass(frozen=True)
class Manifest:
    images: pl.DataFrame  # image_id, shard, source, label, label_name
    class_names: list[str]
    concepts: pl.DataFrame | None  # image_id, concept, value
    skipped: list[SkippedFile]
    #: ``image_masks`` rows where the source knows where each object is (shapes), else None
    masks: pl.DataFrame | None = None
    #: the study's ``annotations`` table read over these images; None without one
    user: UserAnnotations | None = None

    @property
    def annotations(self) -> pl.DataFrame:
        """``image_annotations``: :func:`annotation_rows` of this manifest."""
        return annotation_rows(self.images, self.concepts, self.user)

    def figures(self) -> list[Figure]:
        """The ``images`` asset's ``study_quality`` figures: with a user table, how many images
        it leaves without annotations (labels use the annotated ones)."""
        if self.user is None:
            return []
        return [
            Figure(
                "images_without_annotations",
                self.user.n_unannotated,
                "Images the study's annotations table gives no value (not listed, or only "
                "empty cells); the units' labels leave them out.",
            ),
            Figure(
                "annotated_images",
                self.user.n_images - self.user.n_unannotated,
                "Images the study's annotations table gives at least one value.",
            ),
        ]


def build_manifest(study: Study) -> Manifest:
    """Scan the study's dataset and assign images to shards."""
    source = open_source(study)
    scan = source.scan()
    n = len(scan.sources)
    if study.top_k > n:
        raise ValueError(
            f"top_k={study.top_k} is larger than the dataset ({n} readable images); "
            f"lower top_k or add images"
        )
    if study.shards > n:
        raise ValueError(f"shards={study.shards} is larger than the dataset ({n} images)")
    ids = np.arange(n, dtype=np.int64)
    shard = shard_of(ids, n, study.shards, study.shard_size).astype(np.int32)
    if study.shard_size is not None and int(shard.max()) + 1 != study.shards:
        raise ValueError(
            f"shard_size={study.shard_size}: the dataset has {n} readable images "
            f"({int(shard.max()) + 1} shards) but dataset.size={study.dataset.size} promised "
            f"{study.shards} shards; set dataset.size to {n}"
        )
    images = pl.DataFrame(
        {
            "image_id": ids,
            "shard": shard,
            "source": scan.sources,
            "label": scan.labels.astype(np.int32),
            "label_name": scan.label_names,
        }
    )
    concepts = None
    if scan.concepts is not None:
        concepts = pl.DataFrame(
            {
                "image_id": np.asarray(scan.concepts["image_id"], dtype=np.int64),
                "concept": pl.Series(scan.concepts["concept"], dtype=pl.String),
                "value": pl.Series(scan.concepts["value"], dtype=pl.String),
            }
        )
    user = None
    if study.annotations is not None:
        world = set() if concepts is None else set(concepts["concept"].unique().to_list())
        user = load_user_annotations(
            study.annotations, scan.sources, reserved={CLASS_CONCEPT, *world}
        )
    masks = None
    if scan.masks is not None:
        heights, widths, packed = scan.masks
        masks = pl.DataFrame(
            {
                "image_id": ids,
                "height": np.asarray(heights, dtype=np.int32),
                "width": np.asarray(widths, dtype=np.int32),
                "mask": pl.Series(packed, dtype=pl.Binary),
            }
        )
    return Manifest(images, list(source.class_names), concepts, source.skipped, masks, user)


def annotation_rows(
    images: pl.DataFrame, concepts: pl.DataFrame | None, user: UserAnnotations | None
) -> pl.DataFrame:
    """The ``image_annotations`` rows: the world's ground truth (``image_concepts``' rows),
    ``class=<label_name>`` for every image and the user's table, sorted by image, concept and
    value."""
    parts = [
        images.select(
            "image_id", pl.lit(CLASS_CONCEPT).alias("concept"), pl.col("label_name").alias("value")
        )
    ]
    if concepts is not None:
        parts.append(concepts.select("image_id", "concept", "value"))
    if user is not None:
        parts.append(user.rows)
    rows = pl.concat([p.cast({"image_id": pl.Int64}) for p in parts])
    return rows.sort("image_id", "concept", "value")


def unpack_mask(packed: bytes, height: int, width: int) -> np.ndarray:
    """An ``image_masks.mask`` as a bool (height, width) array."""
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8))[: height * width]
    return bits.reshape(height, width).astype(bool)


def manifest_dir(study: Study) -> Path:
    return study.files_dir / "manifest"


def save_manifest(study: Study, manifest: Manifest) -> None:
    d = manifest_dir(study)
    write_parquet_atomic(manifest.images, d / "images.parquet")
    atomic.write_text(d / "classes.json", json.dumps({"class_names": manifest.class_names}))


def _identity(path: Path) -> tuple:
    s = path.stat()
    return (str(path), s.st_ino, s.st_size, s.st_mtime_ns)


def manifest_identity(study: Study) -> tuple:
    """What changes when ``images`` writes a new manifest (its files are replaced by rename,
    so a new inode): keys what is derived from it without reading it."""
    d = manifest_dir(study)
    return (_identity(d / "images.parquet"), _identity(d / "classes.json"))


def load_manifest(study: Study) -> tuple[pl.DataFrame, list[str]]:
    """The stored manifest: ``(images, class_names)``, read from its files (a step reads it
    once, through :attr:`carto_assets.stages.prepared.PreparedStudy.manifest`)."""
    d = manifest_dir(study)
    if not (d / "images.parquet").is_file():
        raise FileNotFoundError(
            f"no image manifest under {d}; materialize the `images` asset first"
        )
    images = pl.read_parquet(d / "images.parquet")
    class_names = json.loads((d / "classes.json").read_text())["class_names"]
    return images, list(class_names)


def source_for_manifest(study: Study, images: pl.DataFrame, class_names: list[str]) -> ImageSource:
    """The image source for a stored manifest (image folders are not rescanned)."""
    if study.dataset.kind == "imagefolder":
        return ImageFolderSource.from_manifest(
            study.dataset.path or "",
            images["source"].to_list(),
            images["label"].to_list(),
            class_names,
            study_image_size(study),
        )
    return open_source(study)


#: ``annotation_counts``: per class and annotation value, how many of the class's images carry
#: it (``image_annotations`` joined to ``images``).
ANNOTATION_COUNTS = (
    "SELECT i.label, a.concept, a.value, count(DISTINCT a.image_id) AS n_images "
    "FROM image_annotations a JOIN images i USING (image_id) "
    "GROUP BY i.label, a.concept, a.value ORDER BY i.label, a.concept, a.value"
)


def write_images_tables(study: Study, manifest: Manifest, store: CartoStore) -> dict[str, int]:
    """``images`` and ``image_annotations`` (and ``image_concepts``, ``image_masks`` where the
    source has ground truth), with the asset's figures, atomically."""
    tables: dict[str, pl.DataFrame | str] = {
        "images": manifest.images,
        "image_annotations": manifest.annotations,
    }
    if manifest.concepts is not None:
        tables["image_concepts"] = manifest.concepts
    if manifest.masks is not None:
        tables["image_masks"] = manifest.masks
    # Last: counted in the database from the two tables just written (the audit's per-class
    # term counts, once, instead of a scan of every annotation in each class chunk).
    tables["annotation_counts"] = ANNOTATION_COUNTS
    # A source without ground truth drops the tables an earlier study may have left.
    drop = ["image_concepts"] if manifest.concepts is None else []
    drop += ["image_masks"] if manifest.masks is None else []
    # Figures replace the asset's earlier rows, so a table removed from the study takes its
    # figures with it.
    return store.replace_tables(tables, drop=drop, figures=("images", manifest.figures()))
