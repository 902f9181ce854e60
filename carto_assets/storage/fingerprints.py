"""Fingerprints: what a cached result depends on, hashed, so a stale one is recomputed.

- :func:`shard_model_identity`: everything an activation shard depends on besides its images
  (model, weights, preprocessing, layers, activation-pass settings);
- :func:`shard_fingerprint` / :func:`expected_shard_fingerprint`: one shard's inputs (its images,
  the class list, the identity above and which of its images the labels' sample holds); a shard
  whose stored fingerprint matches is up to date.

- :func:`model_fingerprint`: every setting the trained or loaded model depends on, the key
  of its checkpoint cache.
- :func:`dictionary_fingerprint`: what the trained dictionaries (``features``) depend on, the
  key of their cache; a study with features folds it into every shard's identity.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from carto_assets.core.network.zoo import BUILTIN_REVISION, BUILTIN_WIDTHS
from carto_assets.core.sae.dictionaries import DICTIONARY_REVISION
from carto_assets.sources.datasets import study_image_size
from carto_assets.sources.shapes import SHAPES_REVISION
from carto_assets.study import Study


def cache_folder(files_dir: Path, kind: str, fingerprint: str) -> Path:
    """Where a cached result of ``kind`` (``model``, ``dictionary``) for ``fingerprint`` lives:
    ``<files>/<kind>/<fingerprint>``. A changed input gives another fingerprint, hence another
    folder; a folder is written whole (:func:`carto_assets.storage.atomic.replacing`)."""
    return files_dir / kind / fingerprint


def _hash(relevant: object, length: int) -> str:
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def _dataset_identity(study: Study) -> dict[str, object]:
    """The dataset block as the fingerprints hash it: ``shortcuts`` only where some are planted,
    so studies without them keep the keys they had before shortcuts existed."""
    if not study.dataset.shortcuts:
        return study.dataset.model_dump(exclude={"shortcuts"})
    return study.dataset.model_dump(by_alias=True)


def model_fingerprint(study: Study, *, final: bool = False) -> str:
    """Hash of every setting the trained/loaded model depends on (its checkpoint's cache key).

    A built-in study that maps a checkpoint of its training (``training.checkpoint_epoch``)
    adds the epoch; ``final=True`` leaves it out: the key of the whole training, whose folder
    keeps every epoch's checkpoint. ``training.seed`` counts only where it differs from the
    study's seed, so studies written before these fields keep their keys.
    """
    builtin = study.is_builtin_model
    relevant: dict[str, object] = {
        "model": study.model,
        "weights": study.weights,
        "dataset": _dataset_identity(study),
        "training": study.training.model_dump(exclude={"seed", "checkpoint_epoch"})
        if builtin
        else None,
        "seed": study.seed if builtin or study.weights == "none" else None,
        "builtin": [list(BUILTIN_WIDTHS), BUILTIN_REVISION] if builtin else None,
        "shapes": SHAPES_REVISION if study.dataset.kind == "shapes" else None,
    }
    if builtin and study.training_seed != study.seed:
        relevant["training_seed"] = study.training_seed
    if builtin and not final and study.training.checkpoint_epoch is not None:
        relevant["checkpoint_epoch"] = study.training.checkpoint_epoch
    return _hash(relevant, 16)


def _network_identity(study: Study) -> object:
    """The network as the activation pass sees it (the built-in one depends on its dataset)."""
    if study.is_builtin_model:
        return model_fingerprint(study)
    identity: dict[str, object] = {
        "model": study.model,
        "weights": study.weights,
        "kind": study.dataset.kind,
    }
    if study.dataset.shortcuts:  # planted values change the pixels under the same sources
        identity["shortcuts"] = _dataset_identity(study)["shortcuts"]
    return identity


def dictionary_fingerprint(
    study: Study, sample_ids: Sequence[int], sample_sources: Sequence[str]
) -> str:
    """Hash of what the study's dictionaries depend on: the network, the input size, the
    ``features`` settings, the seed and the images sampled to train them (ids and sources).

    The model fingerprint itself never includes the features: changing them retrains the
    dictionaries and recomputes the shards, never the model.
    """
    if study.features is None:
        raise ValueError("the study maps no features (study field 'features' is unset)")
    images = hashlib.sha256()
    for i, src in zip(sample_ids, sample_sources, strict=True):
        images.update(f"{int(i)}\x1f{src}\x1e".encode())
    relevant = {
        "network": _network_identity(study),
        "image_size": study_image_size(study),
        "features": study.features.model_dump(),
        "seed": study.seed,
        "images": images.hexdigest(),
        "revision": DICTIONARY_REVISION,
    }
    return _hash(relevant, 16)


def dictionary_settings_key(study: Study) -> str:
    """Hash of what :func:`dictionary_fingerprint` covers besides the sampled images (the
    network, the input size, the ``features`` settings, the seed): with the manifest's identity,
    what a recorded fingerprint must still match to be reused without drawing the sample."""
    relevant = {
        "network": _network_identity(study),
        "image_size": study_image_size(study),
        "features": study.features.model_dump() if study.features is not None else None,
        "seed": study.seed,
        "revision": DICTIONARY_REVISION,
    }
    return _hash(relevant, 16)


def shard_model_identity(study: Study, dictionary: str | None = None) -> str:
    """What a shard's activations depend on besides its images: model, weights, preprocessing,
    layers and the activation-pass settings.

    The built-in model is trained on the study's dataset, so its full fingerprint (dataset
    included) counts: growing the dataset retrains it and every shard is recomputed. A
    torchvision model does not depend on the dataset's size, so adding images keeps it.

    With ``features``, their settings and ``dictionary`` (the trained dictionaries'
    :func:`dictionary_fingerprint`) count too; a study without them hashes as before.
    """
    relevant: dict[str, object] = {
        "model": _network_identity(study),
        "image_size": study_image_size(study),
        "layers": list(study.layers) if isinstance(study.layers, tuple) else study.layers,
        "top_k": study.top_k,
        "mass_fraction": study.mass_fraction,
        # Settings other parts of the project may add; absent ones hash as None.
        "precision": getattr(study, "precision", None),
        "channels_last": getattr(study, "channels_last", None),
    }
    if study.features is not None:
        relevant["features"] = study.features.model_dump()
        relevant["dictionary"] = dictionary
    return _hash(relevant, 16)


def shard_fingerprint(
    image_ids: Sequence[int],
    sources: Sequence[str],
    labels: Sequence[int],
    class_names: Sequence[str],
    model_identity: str,
    sampled: Sequence[int] | None = None,
) -> str:
    """Identity of one shard's inputs: its images (ids, sources, labels), the class list,
    :func:`shard_model_identity` and ``sampled``, the shard's images whose every unit's
    activation it keeps for the labels (None: it keeps none, and hashes as before the labels
    existed). A shard whose stored fingerprint matches is up to date."""
    h = hashlib.sha256()
    h.update(model_identity.encode())
    h.update(json.dumps(list(class_names)).encode())
    for i, src, lbl in zip(image_ids, sources, labels, strict=True):
        h.update(f"{int(i)}\x1f{src}\x1f{int(lbl)}\x1e".encode())
    if sampled is not None:
        h.update(("unit_maxima:" + ",".join(str(int(i)) for i in sampled)).encode())
    return h.hexdigest()[:24]


def expected_shard_fingerprint(
    images: pl.DataFrame,
    class_names: Sequence[str],
    shard: int,
    identity: str,
    sample_ids: np.ndarray | None = None,
) -> str:
    """The fingerprint a shard's summary must hold to be up to date: only this shard's images
    (and the model/settings) count, so images added in new shards leave the others valid.

    ``sample_ids`` is the labels' sample over every image (None: no sample); the shard's part
    of it counts, so another sample (size, seed) recomputes the shards whose part changed.
    """
    part = images.filter(pl.col("shard") == shard).sort("image_id")
    ids = part["image_id"].to_numpy()
    sampled = None if sample_ids is None else np.intersect1d(sample_ids, ids).tolist()
    return shard_fingerprint(
        ids.tolist(),
        part["source"].to_list(),
        part["label"].to_list(),
        class_names,
        identity,
        sampled,
    )
