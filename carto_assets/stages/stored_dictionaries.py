"""The ``dictionary`` asset's stored files, read: where a study's trained dictionaries live
(``dictionary/<fingerprint>/``), the fingerprint they must have now (and the record the asset
leaves of it, ``dictionary/current.json``), and the dictionaries as pseudo-layers.

What a step reads of the dictionaries (through
:class:`~carto_assets.stages.prepared.PreparedStudy`);
the asset's work (sampling, training, storing) is :mod:`carto_assets.stages.dictionary`. No
import of :mod:`carto_assets.stages.prepared`, so the prepared study can read through this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from carto_assets.core.sae.dictionaries import META_FILE, load_dictionaries, sample_image_ids
from carto_assets.core.sae.layer import FeatureLayer
from carto_assets.stages.images import manifest_identity
from carto_assets.stages.stored_model import ModelInfo
from carto_assets.storage import atomic
from carto_assets.storage.fingerprints import (
    cache_folder,
    dictionary_fingerprint,
    dictionary_settings_key,
)
from carto_assets.study import FeaturesConfig, Study


def features_settings(study: Study) -> FeaturesConfig:
    """The study's ``features`` block (the dictionaries' settings); raises without one."""
    if study.features is None:
        raise ValueError("the study maps no features (study field 'features' is unset)")
    return study.features


def dictionary_sample(study: Study, images) -> tuple[np.ndarray, list[str]]:
    """The seeded subset of the manifest's images the dictionaries are trained on."""
    ids = sample_image_ids(
        images["image_id"].to_numpy(), features_settings(study).sample_images, study.seed
    )
    sources = dict(zip(images["image_id"].to_list(), images["source"].to_list()))
    return ids, [sources[int(i)] for i in ids]


#: The record the ``dictionary`` asset leaves under ``dictionary/``: the fingerprint it found
#: and what it found it from (see :func:`current_fingerprint`).
CURRENT_FILE = "current.json"


def sample_fingerprint(study: Study, images) -> str:
    """The fingerprint of the study's dictionaries, from its settings, network and the sample
    drawn from ``images`` (the manifest frame): draws the sample and hashes its images."""
    ids, sources = dictionary_sample(study, images)
    return dictionary_fingerprint(study, ids.tolist(), sources)


def _current_inputs(study: Study, manifest: tuple | None = None) -> dict[str, Any]:
    """What the recorded fingerprint was found from: the settings and network (hashed) and
    the manifest files' identity (replaced by rename whenever ``images`` writes them;
    ``manifest`` where given, else the files' now)."""
    identity = manifest_identity(study) if manifest is None else manifest
    return {
        "settings": dictionary_settings_key(study),
        "manifest": json.loads(json.dumps(identity)),
    }


def record_fingerprint(study: Study, fingerprint: str, manifest: tuple | None = None) -> None:
    """Record ``fingerprint`` as the study's current one, for :func:`current_fingerprint`.

    ``manifest``: the identity of the manifest files the fingerprint was drawn from, taken when
    they were read (:attr:`~carto_assets.stages.prepared.StoredManifest.identity`); a manifest
    another run wrote since then is not paired with it. None: the files' identity now."""
    root = study.files_dir / "dictionary"
    root.mkdir(parents=True, exist_ok=True)
    record = {"fingerprint": fingerprint, "inputs": _current_inputs(study, manifest)}
    atomic.write_text(root / CURRENT_FILE, json.dumps(record, sort_keys=True))


def current_fingerprint(study: Study, images) -> str:
    """The fingerprint the study's dictionaries must have now (settings, network, sample).

    Read from the record the ``dictionary`` asset left (:func:`record_fingerprint`) while it
    still holds: same settings and network (their hash) and the same manifest files (their
    inode, size and time: ``images`` replaces them by rename, so a new manifest never matches).
    Otherwise the sample is drawn from ``images`` and hashed again
    (:func:`sample_fingerprint`), so a stale record can only cost time, never a wrong folder.
    """
    try:
        record = json.loads((study.files_dir / "dictionary" / CURRENT_FILE).read_text())
        if record.get("inputs") == _current_inputs(study):
            return str(record["fingerprint"])
    except (OSError, ValueError, AttributeError):
        pass
    return sample_fingerprint(study, images)


def dictionary_dir(study: Study, fingerprint: str) -> Path:
    return cache_folder(study.files_dir, "dictionary", fingerprint)


def feature_layers(study: Study, fingerprint: str, info: ModelInfo) -> list[FeatureLayer]:
    """The study's dictionaries as pseudo-layers, in the order of their source layers.

    ``fingerprint``: the one they must have now (:func:`current_fingerprint`); ``info``: the
    prepared model's record (its layers' forward order). ``[]`` when the study has no
    ``features``. Raises ``FileNotFoundError`` naming the ``dictionary`` asset when the
    dictionaries for the current settings, model and images are not stored (never trained, or
    trained for something that changed since). A step reads them through
    :attr:`carto_assets.stages.prepared.PreparedStudy.feature_layers`.
    """
    if study.features is None:
        return []
    folder = dictionary_dir(study, fingerprint)
    if not (folder / META_FILE).is_file():
        others = sorted(p.name for p in folder.parent.glob("*") if p.is_dir())
        why = (
            f"the stored ones ({', '.join(others[:3])}) were trained for other features "
            "settings, another model or other images"
            if others
            else "none were trained yet"
        )
        raise FileNotFoundError(
            f"no dictionaries for this study's features at {folder} ({why}); "
            "materialize `dictionary` first"
        )
    stored = load_dictionaries(folder, fingerprint)
    # The layers' forward order is in the model's record: no need to build the model.
    order = {row["layer"]: row["order"] for row in info.layers}
    missing = [name for name in study.features.layers if name not in stored]
    unknown = [name for name in stored if name not in order]
    if missing or unknown:
        what = [f"no dictionary for {', '.join(missing)}"] if missing else []
        if unknown:
            what.append(f"dictionaries for {', '.join(unknown)}, not a layer of the stored model")
        raise ValueError(
            f"the dictionaries under {folder} do not match the study's layers "
            f"({'; '.join(what)}); re-materialize `dictionary`"
        )
    return [stored[name] for name in sorted(stored, key=order.__getitem__)]
