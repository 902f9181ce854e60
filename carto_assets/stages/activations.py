"""The activation pass over one shard of images, and which shards are up to date.

Files under ``study.files_dir``: one partition folder per shard (:data:`SHARD_FOLDER`)::

    activations/<shard>/top_k.parquet, class_stats.parquet, predictions.parquet,
                        unit_maxima.parquet, summary.json

``unit_maxima`` (with ``labels`` on) holds every unit's activation on the shard's images of the
labels' sample (:func:`label_sample_ids`: seeded over every image, whatever the sharding);
:mod:`carto_assets.stages.label_sample` reads it back.

Each shard writes Parquet only (never the database), so shards run in parallel processes or on
other machines; :mod:`carto_assets.stages.top_images` combines them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import torch
from pydantic import BaseModel, ConfigDict

from carto_assets import schema
from carto_assets.core.network.recorder import ActivationPass, Batch, PassResult
from carto_assets.core.network.zoo import resolve_device
from carto_assets.core.sae.dictionaries import sample_image_ids
from carto_assets.runtime import progress as progress_of
from carto_assets.sources.batches import load_batches
from carto_assets.storage.fingerprints import (
    expected_shard_fingerprint,
    model_fingerprint,
    shard_model_identity,
)
from carto_assets.storage.partition_folders import PartitionLayout
from carto_assets.storage.sharding import shard_key
from carto_assets.study import Study

if TYPE_CHECKING:
    from carto_assets.stages.prepared import PreparedStudy

log = logging.getLogger("carto")


class ShardSummary(BaseModel):
    """One shard's activation pass: what ``activations/<shard>/summary.json`` holds (written
    last: a shard with a summary is complete; validated on read)."""

    model_config = ConfigDict(frozen=True)

    shard: int
    n_images: int
    #: images that went through the model (the others failed to decode)
    n_processed: int
    n_failed: int
    #: up to 1,000 failures: ``{"image_id", "source", "reason"}``
    failed: list[dict[str, Any]]
    seconds: float
    images_per_second: float
    n_neurons: int
    top_k: int
    model_fingerprint: str
    shard_size: int | None
    #: the inputs' fingerprint
    #: (:func:`carto_assets.storage.fingerprints.expected_shard_fingerprint`)
    shard_fingerprint: str
    device: str


#: A shard's folder: each image's top-k candidates per unit (``activation_shard_top_k``),
#: the per-class statistics (``activation_class_stats``), each image's prediction
#: (``image_predictions``) and, with ``labels`` on, every unit's
#: activation on the shard's images of the labels' sample (``unit_maxima``: ``image_id``
#: int64, ``maxima`` a fixed-size list of float32 in neuron_id order), then its summary.
SHARD_FOLDER = PartitionLayout(
    tables={
        "top_k": "activation_shard_top_k",
        "class_stats": "activation_class_stats",
        "predictions": "image_predictions",
        "unit_maxima": "unit_maxima",
    },
    summary=ShardSummary,
    optional=frozenset({"unit_maxima"}),
)


def label_sample_ids(study: Study, images: pl.DataFrame) -> np.ndarray | None:
    """The images whose every unit's activation the pass keeps for the labels: a seeded draw
    of ``labels.sample_images`` over all the manifest's images (all of them where the dataset
    is smaller), ascending; the same study and manifest give the same images whatever the
    sharding. None with ``labels`` off."""
    if not study.labels.enabled:
        return None
    return sample_image_ids(images["image_id"].to_numpy(), study.labels.sample_images, study.seed)


def shard_dir(study: Study, shard: int) -> Path:
    return study.files_dir / "activations" / shard_key(shard)


def shard_identity(prepared: PreparedStudy) -> str:
    """:func:`~carto_assets.storage.fingerprints.shard_model_identity` with, for a study with
    features, the fingerprint of the dictionaries its shards are encoded with."""
    return shard_model_identity(prepared.study, dictionary=prepared.dictionary_fingerprint)


def study_batches(
    prepared: PreparedStudy,
    image_ids: np.ndarray,
    labels: np.ndarray,
    device: torch.device,
    failures: list[tuple[int, str]] | None = None,
) -> Iterator[Batch]:
    """:func:`load_batches` of the study's images with its batch size and loader workers
    (pinned memory for a CUDA ``device``)."""
    return load_batches(
        prepared.source,
        image_ids,
        labels,
        prepared.study.batch_size,
        workers=prepared.study.loader_workers,
        pin_memory=device.type == "cuda",
        failures=failures,
    )


def study_pass(
    prepared: PreparedStudy,
    image_ids: np.ndarray,
    device: torch.device,
    *,
    sample_ids: np.ndarray | None = None,
    features: bool = True,
    model: torch.nn.Module | None = None,
) -> ActivationPass:
    """The activation pass over the study's images ``image_ids`` as a shard runs it, before its
    first batch (:func:`pass_over` steps it through the study's loader): the model on
    ``device`` (``model``: a copy of the study's, for a benchmark that times another pass
    beside it), precision, layout and top-k, with its dictionaries' features (``features``),
    keeping every unit's activation on the images of ``sample_ids`` among them
    (:func:`label_sample_ids`; None keeps none). Without features and sample it is the
    channels alone (what ``benchmarks/activations.py --study`` compares)."""
    study = prepared.study
    bundle, layers = prepared.model
    # [] without features; raises if `dictionary` is stale
    derived = prepared.feature_layers if features else []
    module = (bundle.module if model is None else model).to(device)
    return ActivationPass(
        module,
        layers,
        preprocess=bundle.normalize,
        precision=study.precision,
        channels_last=study.channels_last,
        k=study.top_k,
        n_classes=len(prepared.class_names),
        mass_fraction=study.mass_fraction,
        device=device,
        # Each feature's spatial max and argmax, from its source layer's output in this pass.
        derived=[f.on(device) for f in derived],
        # Only these images' part of the sample: its rows are all the pass keeps.
        sample_ids=None if sample_ids is None else np.intersect1d(sample_ids, image_ids),
    )


def pass_over(
    prepared: PreparedStudy,
    image_ids: np.ndarray,
    labels: np.ndarray,
    device: torch.device,
    *,
    sample_ids: np.ndarray | None = None,
    features: bool = True,
    progress: Callable[[int, float], None] | None = None,
    failures: list[tuple[int, str]] | None = None,
) -> PassResult:
    """:func:`study_pass` over the images ``image_ids`` (ascending, with their ``labels``)
    read by the study's loader (:func:`study_batches`): the pass as a shard runs it."""
    run = study_pass(prepared, image_ids, device, sample_ids=sample_ids, features=features)
    return run.over(study_batches(prepared, image_ids, labels, device, failures), progress)


def run_shard(
    prepared: PreparedStudy, shard: int, progress: Callable[[str], None] | None = None
) -> ShardSummary:
    """The activation pass over one shard; writes its Parquet files and returns a summary."""
    say = progress or log.info
    study = prepared.study
    images, class_names = prepared.images, prepared.class_names
    if not 0 <= shard < study.shards:
        raise ValueError(f"shard {shard} out of range: the study has shards 0..{study.shards - 1}")
    part = images.filter(pl.col("shard") == shard).sort("image_id")
    sample_ids = label_sample_ids(study, images)
    info = prepared.model_info
    features = prepared.feature_layers  # [] without features; raises if `dictionary` is stale
    device = resolve_device(study.device)
    failures: list[tuple[int, str]] = []
    last = [0.0]

    def report(done: int, seconds: float) -> None:
        progress_of.advance(shard_key(shard), done, len(part), "images")
        if seconds - last[0] >= 5.0 or done == len(part):
            last[0] = seconds
            say(
                f"{shard_key(shard)}: {done}/{len(part)} images, "
                f"{done / max(seconds, 1e-9):.0f} images/s"
            )

    result = pass_over(
        prepared,
        part["image_id"].to_numpy(),
        part["label"].to_numpy(),
        device,
        sample_ids=sample_ids,
        progress=report,
        failures=failures,
    )
    shown = failures[:1000]
    # Only the failed images' paths: a dict of every image's would cost O(images) per shard.
    paths = dict(
        part.filter(pl.col("image_id").is_in([i for i, _ in shown]))
        .select("image_id", "source")
        .iter_rows()
    )
    summary = ShardSummary(
        shard=shard,
        n_images=len(part),
        n_processed=result.n_images,
        n_failed=len(failures),
        failed=[{"image_id": i, "source": paths[i], "reason": r} for i, r in shown],
        seconds=result.seconds,
        images_per_second=result.n_images / max(result.seconds, 1e-9),
        n_neurons=info.n_neurons + sum(f.n_features for f in features),
        top_k=study.top_k,
        model_fingerprint=model_fingerprint(study),
        shard_size=study.shard_size,
        shard_fingerprint=expected_shard_fingerprint(
            images, class_names, shard, shard_identity(prepared), sample_ids
        ),
        device=str(device),
    )
    tables = {
        "top_k": pl.DataFrame(result.top_k),
        "class_stats": pl.DataFrame(result.class_stats),
        "predictions": predictions_frame(result.predictions),
    }
    if result.unit_maxima is not None:
        tables["unit_maxima"] = unit_maxima_frame(result.unit_maxima, summary.n_neurons)
    SHARD_FOLDER.write(shard_dir(study, shard), tables, summary)
    return summary


def predictions_frame(predictions: dict[str, np.ndarray] | None) -> pl.DataFrame:
    """A shard's ``image_predictions`` rows by image id (``label_logit`` null where the model's
    outputs are not the study's classes); no rows where the outputs are not logits."""
    if predictions is None:
        return schema.empty_frame("image_predictions")
    frame = schema.frame("image_predictions", predictions)
    return frame.with_columns(pl.col("label_logit").fill_nan(None)).sort("image_id")


def unit_maxima_frame(kept: dict[str, np.ndarray], n_units: int) -> pl.DataFrame:
    """A shard's ``unit_maxima`` rows: ``image_id`` and ``maxima`` (an array column of
    ``n_units`` float32, which reads back into an (n, n_units) array without a copy)."""
    maxima = np.ascontiguousarray(kept["maxima"], dtype=np.float32).reshape(-1, n_units)
    return pl.DataFrame(
        {
            "image_id": pl.Series(kept["image_id"], dtype=pl.Int64),
            "maxima": pl.Series(maxima, dtype=pl.Array(pl.Float32, n_units)),
        }
    )


def shard_states(
    prepared: PreparedStudy,
) -> tuple[dict[int, ShardSummary], list[int], list[int]]:
    """(summaries of the up-to-date shards, missing shards, stale shards) of the manifest.

    A shard is missing when its summary or Parquet files are absent, stale when its stored
    fingerprint differs from what its current images, model and settings give.
    """
    study = prepared.study
    images, class_names = prepared.images, prepared.class_names
    identity = shard_identity(prepared)
    sample_ids = label_sample_ids(study, images)
    fresh: dict[int, ShardSummary] = {}
    missing: list[int] = []
    stale: list[int] = []
    for s in range(study.shards):
        folder = shard_dir(study, s)
        if not SHARD_FOLDER.is_complete(folder):
            missing.append(s)
            continue
        try:
            # A summary that is not valid JSON or lacks a field raises a ValueError.
            summary = SHARD_FOLDER.read_summary(folder)
        except (OSError, ValueError):
            stale.append(s)
            continue
        if summary is None:  # removed since the check above
            missing.append(s)
        elif summary.shard_fingerprint == expected_shard_fingerprint(
            images, class_names, s, identity, sample_ids
        ):
            fresh[s] = summary
        else:
            stale.append(s)
    return fresh, missing, stale


def shard_summaries(prepared: PreparedStudy) -> list[ShardSummary]:
    """Summaries of every shard of the current manifest; raises if any is missing or stale."""
    fresh, missing, stale = shard_states(prepared)
    if missing or stale:
        names = ", ".join(shard_key(s) for s in missing + stale)
        raise RuntimeError(
            f"activations are not up to date for partitions {names} (missing: {len(missing)}, "
            f"computed for other images/model/top_k: {len(stale)}); materialize those "
            "`activations` partitions first"
        )
    return [fresh[s] for s in sorted(fresh)]


def stale_shard_dirs(study: Study) -> list[Path]:
    """Shard folders beyond the study's shard count (left by an earlier, larger study)."""
    root = study.files_dir / "activations"
    if not root.is_dir():
        return []
    keep = {shard_key(s) for s in range(study.shards)}
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name not in keep)
