"""Fingerprints: what a cached result depends on, hashed, so a stale one is recomputed.

- :func:`shard_model_identity`: everything an activation shard depends on besides its images
  (model, weights, preprocessing, layers, activation-pass settings);
- :func:`shard_fingerprint` / :func:`expected_shard_fingerprint`: one shard's inputs (its images,
  the class list and the identity above); a shard whose stored fingerprint matches is up to
  date.

- :func:`model_fingerprint`: every setting the trained or loaded model depends on, the key
  of its checkpoint cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import polars as pl

from carto_assets.sources.datasets import study_image_size
from carto_assets.study import (
    BUILTIN_REVISION,
    BUILTIN_WIDTHS,
    SHAPES_REVISION,
    Study,
)


def _hash(relevant: object, length: int) -> str:
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def model_fingerprint(study: Study) -> str:
    """Hash of every setting the trained/loaded model depends on (its checkpoint's cache key)."""
    builtin = study.is_builtin_model
    relevant = {
        "model": study.model,
        "weights": study.weights,
        "dataset": study.dataset.model_dump(),
        "training": study.training.model_dump() if builtin else None,
        "seed": study.seed if builtin or study.weights == "none" else None,
        "builtin": [list(BUILTIN_WIDTHS), BUILTIN_REVISION] if builtin else None,
        "shapes": SHAPES_REVISION if study.dataset.kind == "shapes" else None,
    }
    return _hash(relevant, 16)


def shard_model_identity(study: Study) -> str:
    """What a shard's activations depend on besides its images: model, weights, preprocessing,
    layers and the activation-pass settings.

    The built-in model is trained on the study's dataset, so its full fingerprint (dataset
    included) counts: growing the dataset retrains it and every shard is recomputed. A
    torchvision model does not depend on the dataset's size, so adding images keeps it.
    """
    model = (
        model_fingerprint(study)
        if study.is_builtin_model
        else {"model": study.model, "weights": study.weights, "kind": study.dataset.kind}
    )
    relevant = {
        "model": model,
        "image_size": study_image_size(study),
        "layers": list(study.layers) if isinstance(study.layers, tuple) else study.layers,
        "top_k": study.top_k,
        "mass_fraction": study.mass_fraction,
        # Settings other parts of the project may add; absent ones hash as None.
        "precision": getattr(study, "precision", None),
        "channels_last": getattr(study, "channels_last", None),
    }
    return _hash(relevant, 16)


def shard_fingerprint(
    image_ids: Sequence[int],
    sources: Sequence[str],
    labels: Sequence[int],
    class_names: Sequence[str],
    model_identity: str,
) -> str:
    """Identity of one shard's inputs: its images (ids, sources, labels), the class list and
    :func:`shard_model_identity`. A shard whose stored fingerprint matches is up to date."""
    h = hashlib.sha256()
    h.update(model_identity.encode())
    h.update(json.dumps(list(class_names)).encode())
    for i, src, lbl in zip(image_ids, sources, labels, strict=True):
        h.update(f"{int(i)}\x1f{src}\x1f{int(lbl)}\x1e".encode())
    return h.hexdigest()[:24]


def expected_shard_fingerprint(
    images: pl.DataFrame, class_names: Sequence[str], shard: int, identity: str
) -> str:
    """The fingerprint a shard's summary must hold to be up to date: only this shard's images
    (and the model/settings) count, so images added in new shards leave the others valid."""
    part = images.filter(pl.col("shard") == shard).sort("image_id")
    return shard_fingerprint(
        part["image_id"].to_list(),
        part["source"].to_list(),
        part["label"].to_list(),
        class_names,
        identity,
    )
