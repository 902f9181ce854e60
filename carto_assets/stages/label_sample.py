"""The labels' sample, read back: every unit's activation on a seeded sample of images and the
annotations of those images, what the units' words are searched on.

The activation pass keeps the sample per shard (``unit_maxima`` in each shard's folder,
:data:`~carto_assets.stages.activations.SHARD_FOLDER`); the ``images`` asset writes
``image_annotations``. Where the study has its own annotations table, the sampled images it
gives no value are left out (and counted): labels use the annotated images. No dagster here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from carto_assets.sources.annotations import CLASS_CONCEPT
from carto_assets.stages.activations import SHARD_FOLDER, shard_dir, shard_summaries

if TYPE_CHECKING:
    from carto_assets.stages.prepared import PreparedStudy


@dataclass(frozen=True, eq=False)
class LabelSample:
    """Every unit's activation on the sampled images, and those images' annotations.

    ``maxima[i, j]`` is unit ``neuron_ids[j]``'s activation (spatial maximum) on image
    ``image_ids[i]``; ``neuron_ids`` is every neuron in ``neurons`` order (0..M-1).
    """

    #: (n_images,) int64, ascending
    image_ids: np.ndarray
    #: (n_units,) int64: 0..M-1, the ``neurons`` table's order
    neuron_ids: np.ndarray
    #: (n_images, n_units) float32
    maxima: np.ndarray
    #: ``image_annotations`` rows of the sampled images: ``image_id``, ``concept``, ``value``
    annotations: pl.DataFrame
    #: the concepts of the study's own annotations table (empty without one)
    user_concepts: tuple[str, ...] = ()
    #: sampled images left out because the study's annotations table gives them no value
    n_unannotated: int = 0

    @property
    def n_images(self) -> int:
        return int(self.image_ids.shape[0])

    @property
    def n_units(self) -> int:
        return int(self.neuron_ids.shape[0])


def read_sample_maxima(prepared: PreparedStudy) -> tuple[np.ndarray, np.ndarray]:
    """Every unit's activation on the labels' sample, from every shard's ``unit_maxima``:
    ``(image_ids, maxima)``, image ids ascending and ``maxima[i, u]`` unit ``u``'s activation
    (``neurons`` order) on image ``image_ids[i]``; every sampled image, annotated or not.

    Raises ``RuntimeError`` for shards that are missing or stale, ``ValueError`` when the
    study keeps no sample (``labels.enabled: false``) or a shard holds no sample.
    """
    study = prepared.study
    if not study.labels.enabled:
        raise ValueError(
            "the study keeps no labels' sample (study field 'labels.enabled' is false)"
        )
    summaries = shard_summaries(prepared)
    n_units = {s.n_neurons for s in summaries}
    if len(n_units) != 1:
        raise ValueError(f"the shards hold different numbers of units: {sorted(n_units)}")
    (units,) = n_units
    parts = []
    for s in summaries:
        frames = SHARD_FOLDER.read(shard_dir(study, s.shard), ["unit_maxima"])
        if "unit_maxima" not in frames:
            raise ValueError(
                f"shard {s.shard} kept no labels' sample; materialize its `activations` "
                "partition again"
            )
        parts.append(frames["unit_maxima"])
    n = sum(p.height for p in parts)
    image_ids = np.empty(n, dtype=np.int64)
    # Filled shard by shard: the sample's matrix is the largest thing here, held once.
    maxima = np.empty((n, units), dtype=np.float32)
    at = 0
    for part in parts:
        rows = part.height
        image_ids[at : at + rows] = part["image_id"].to_numpy()
        if rows:
            maxima[at : at + rows] = part["maxima"].to_numpy().reshape(rows, units)
        at += rows
    order = np.argsort(image_ids, kind="stable")
    if not np.array_equal(order, np.arange(n)):
        image_ids, maxima = image_ids[order], maxima[order]
    return image_ids, maxima


def load_label_sample(prepared: PreparedStudy) -> LabelSample:
    """The sample from every shard's ``unit_maxima`` (the shards must be up to date) and the
    study's ``image_annotations``, restricted to the images the study's own annotations table
    annotates where it has one.

    Raises ``RuntimeError`` for shards that are missing or stale, ``ValueError`` when the
    study keeps no sample (``labels.enabled: false``) or a shard holds no sample.
    """
    study, store = prepared.study, prepared.store
    image_ids, maxima = read_sample_maxima(prepared)
    units = maxima.shape[1]
    annotations = _annotations_of(store, image_ids)
    user = _user_concepts(store) if study.annotations is not None else ()
    n_unannotated = 0
    if user:
        annotated = np.unique(
            annotations.filter(pl.col("concept").is_in(list(user)))["image_id"].to_numpy()
        )
        keep = np.isin(image_ids, annotated)
        n_unannotated = int((~keep).sum())
        if n_unannotated:
            image_ids, maxima = image_ids[keep], maxima[keep]
            annotations = annotations.filter(pl.col("image_id").is_in(image_ids.tolist()))
    return LabelSample(
        image_ids=image_ids,
        neuron_ids=np.arange(units, dtype=np.int64),
        maxima=maxima,
        annotations=annotations,
        user_concepts=user,
        n_unannotated=n_unannotated,
    )


def _annotations_of(store, image_ids: np.ndarray) -> pl.DataFrame:
    """``image_annotations`` rows of ``image_ids``, sorted by image, concept and value."""
    if not store.table_exists("image_annotations"):
        raise FileNotFoundError(
            "no image_annotations table in the study's database; materialize `images` first"
        )
    with store.connect() as con:
        con.register("_sample_ids", pl.DataFrame({"image_id": image_ids}))
        rows = con.sql(
            "SELECT a.image_id, a.concept, a.value FROM image_annotations a "
            "SEMI JOIN _sample_ids s ON a.image_id = s.image_id "
            "ORDER BY a.image_id, a.concept, a.value"
        ).pl()
        con.unregister("_sample_ids")
    return rows


def _user_concepts(store) -> tuple[str, ...]:
    """The concepts of ``image_annotations`` that come from the study's own table: neither the
    class nor the world's ground truth (a user's column may take neither name)."""
    world: set[str] = set()
    if store.table_exists("image_concepts"):
        world = set(store.query("SELECT DISTINCT concept FROM image_concepts")["concept"])
    concepts = store.query("SELECT DISTINCT concept FROM image_annotations")["concept"]
    return tuple(sorted(c for c in concepts.to_list() if c != CLASS_CONCEPT and c not in world))
