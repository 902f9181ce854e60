"""Dictionary features as a second kind of unit: sample a layer's activation vectors, train a
top-k sparse autoencoder per layer, and reduce each image to its features' spatial maxima.

A channel is one coordinate of a layer's activation vector ``x`` (one vector per spatial
position, or per token). A *feature* is one latent of the layer's SAE,
``z = TopK(ReLU(W_enc (x - b_dec) + b_enc))``, computed at every position. An image's
activation for a feature is then exactly what it is for a channel: the maximum of the feature's
map over space, with its position (:func:`carto_assets.core.network.recorder.spatial_max`), so
features go through the same streaming top-k, clustering and gain code as channels.

The sampling, training and storage are in :mod:`carto_assets.core.sae.dictionaries`; a
dictionary on a layer is one :class:`~carto_assets.core.sae.layer.FeatureLayer` from training
to the concept graph. In a study (``features`` block), :func:`prepare_dictionaries` samples and
trains them for the ``dictionary`` asset and caches the weights under
``dictionary/<fingerprint>/``; :func:`feature_layers` loads them: the pseudo-layers
``<layer>:features`` whose units (``neurons.kind = 'feature'``) follow their source layer's
channels in neuron order. Put on the pass's device (:meth:`FeatureLayer.on
<carto_assets.core.sae.layer.FeatureLayer.on>`), they are the units the activation pass
derives from their source's output, recording their maxima in the same forward pass as the
channels.

No dagster imports.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from carto_assets import atomic
from carto_assets.core.network.layers import LayerInfo
from carto_assets.core.network.zoo import resolve_device
from carto_assets.core.sae.dictionaries import (
    META_FILE,
    DictionariesRecord,
    describe,
    load_dictionaries,
    sample_activations,
    sample_image_ids,
    save_dictionaries,
    train_dictionaries,
)
from carto_assets.core.sae.layer import FeatureLayer, source_layer
from carto_assets.fingerprints import (
    cache_folder,
    dictionary_fingerprint,
    dictionary_settings_key,
)
from carto_assets.stages.manifest import manifest_identity
from carto_assets.study import FeaturesConfig, Study

if TYPE_CHECKING:
    from carto_assets.prepared import PreparedStudy
    from carto_assets.stages.model import ModelInfo

log = logging.getLogger("carto")


# ---- in a study: the `dictionary` asset, the pseudo-layers ---------------------------------------
def _features(study: Study) -> FeaturesConfig:
    """The study's ``features`` block (the dictionaries' settings); raises without one."""
    if study.features is None:
        raise ValueError("the study maps no features (study field 'features' is unset)")
    return study.features


def dictionary_layers(features: FeaturesConfig, layers: Sequence[LayerInfo]) -> list[LayerInfo]:
    """The :class:`LayerInfo` of each ``features.layers`` entry, in the network's order.

    Raises ``ValueError`` for a layer that is not among ``layers`` and for ``k`` larger than a
    layer's feature count (``expansion x channels``).
    """
    by_name = {info.name: info for info in layers}
    unknown = [name for name in features.layers if name not in by_name]
    if unknown:
        raise ValueError(
            f"features.layers must be layers of the study, got {unknown}; valid: {sorted(by_name)}"
        )
    chosen = [info for info in layers if info.name in set(features.layers)]
    for info in chosen:
        n_features = features.expansion * int(info.channels or 0)
        if features.k > n_features:
            raise ValueError(
                f"features.k must be <= expansion x channels = {n_features} for layer "
                f"{info.name!r}, got {features.k}"
            )
    return chosen


def _sample(study: Study, images) -> tuple[np.ndarray, list[str]]:
    """The seeded subset of the manifest's images the dictionaries are trained on."""
    ids = sample_image_ids(
        images["image_id"].to_numpy(), _features(study).sample_images, study.seed
    )
    sources = dict(zip(images["image_id"].to_list(), images["source"].to_list()))
    return ids, [sources[int(i)] for i in ids]


#: The record the ``dictionary`` asset leaves under ``dictionary/``: the fingerprint it found
#: and what it found it from (see :func:`current_fingerprint`).
CURRENT_FILE = "current.json"


def sample_fingerprint(study: Study, images) -> str:
    """The fingerprint of the study's dictionaries, from its settings, network and the sample
    drawn from ``images`` (the manifest frame): draws the sample and hashes its images."""
    ids, sources = _sample(study, images)
    return dictionary_fingerprint(study, ids.tolist(), sources)


def _current_inputs(study: Study) -> dict[str, Any]:
    """What the recorded fingerprint was found from: the settings and network (hashed) and
    the manifest files' identity (replaced by rename whenever ``images`` writes them)."""
    return {
        "settings": dictionary_settings_key(study),
        "manifest": json.loads(json.dumps(manifest_identity(study))),
    }


def record_fingerprint(study: Study, fingerprint: str) -> None:
    """Record ``fingerprint`` as the study's current one, for :func:`current_fingerprint`."""
    root = study.files_dir / "dictionary"
    root.mkdir(parents=True, exist_ok=True)
    record = {"fingerprint": fingerprint, "inputs": _current_inputs(study)}
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


@dataclass(frozen=True)
class DictionaryInfo:
    """What the ``dictionary`` asset shows: one row per layer and what sampling cost."""

    fingerprint: str
    folder: Path
    #: :func:`describe` rows, plus ``dead_share``
    layers: list[dict[str, Any]]
    #: images the sampling pass read, its seconds and the reservoirs' bytes
    sample_images: int
    sample_seconds: float
    sample_bytes: int
    #: whether this call reused stored dictionaries
    cached: bool


def _info(folder: Path, dictionaries: Mapping[str, FeatureLayer], cached: bool) -> DictionaryInfo:
    record = DictionariesRecord.read(folder)
    extra = record.extra
    rows = describe(dictionaries)
    for row in rows:
        row["dead_share"] = round(row["dead"] / max(1, row["n_features"]), 4)
    return DictionaryInfo(
        fingerprint=record.fingerprint,
        folder=folder,
        layers=rows,
        sample_images=int(extra.get("sample_images", 0)),
        sample_seconds=float(extra.get("sample_seconds", 0.0)),
        sample_bytes=int(extra.get("sample_bytes", 0)),
        cached=cached,
    )


def prepare_dictionaries(
    prepared: PreparedStudy, progress: Callable[[str], None] | None = None
) -> DictionaryInfo | None:
    """Sample, train and store one dictionary per ``features`` layer (None without features).

    Stored dictionaries are reused while the fingerprint (settings, network, sampled images)
    matches, as the model's checkpoint is. Raises ``ValueError`` naming ``features.layers``
    when a layer is not among the study's mapped layers.
    """
    study = prepared.study
    if study.features is None:
        return None
    say = progress or log.info
    images = prepared.images
    # The asset draws the sample itself (it trains on it) and records what it found, so later
    # steps find the folder without drawing it again.
    fingerprint = sample_fingerprint(study, images)
    folder = dictionary_dir(study, fingerprint)
    settings = _features(study)
    bundle, layers = prepared.model
    chosen = dictionary_layers(settings, layers)
    if (folder / META_FILE).is_file():
        say(f"reusing trained dictionaries {folder}")
        record_fingerprint(study, fingerprint)
        return _info(folder, load_dictionaries(folder, fingerprint), cached=True)
    device = resolve_device(study.device)
    model = bundle.module.to(device)
    source = prepared.source
    ids, _ = _sample(study, images)

    def batches():
        for lo in range(0, len(ids), study.batch_size):
            pixels, ok = source.load_many(ids[lo : lo + study.batch_size].tolist(), workers=4)
            if ok.any():
                yield torch.from_numpy(pixels)

    say(f"sampling {settings.samples} activation vectors per layer from {len(ids)} images")
    sample = sample_activations(
        model,
        chosen,
        batches(),
        settings,
        study.seed,
        preprocess=bundle.normalize,
        device=device,
    )
    dictionaries = train_dictionaries(
        sample.samples,
        settings,
        seed=study.seed,
        device=device,
        progress=lambda layer, epoch, loss: say(
            f"{layer}: epoch {epoch}/{settings.epochs}, loss {loss:.4f}"
        ),
    )
    extra = {
        "sample_images": sample.n_images,
        "sample_seconds": sample.seconds,
        "sample_bytes": sample.sample_bytes,
        "positions_seen": sample.positions_seen,
    }
    save_dictionaries(folder, dictionaries, fingerprint, extra)
    record_fingerprint(study, fingerprint)
    return _info(folder, dictionaries, cached=False)


def feature_layers(study: Study, fingerprint: str, info: ModelInfo) -> list[FeatureLayer]:
    """The study's dictionaries as pseudo-layers, in the order of their source layers.

    ``fingerprint``: the one they must have now (:func:`current_fingerprint`); ``info``: the
    prepared model's record (its layers' forward order). ``[]`` when the study has no
    ``features``. Raises ``FileNotFoundError`` naming the ``dictionary`` asset when the
    dictionaries for the current settings, model and images are not stored (never trained, or
    trained for something that changed since). A step reads them through
    :attr:`carto_assets.prepared.PreparedStudy.feature_layers`.
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
    if missing or any(name not in order for name in stored):
        raise ValueError(
            f"the dictionaries under {folder} do not match the study's layers "
            f"(missing {missing}); re-materialize `dictionary`"
        )
    return [stored[name] for name in sorted(stored, key=order.__getitem__)]


def features_vs_channels(
    mean_gain: Mapping[str, float], high_share: Mapping[str, float]
) -> dict[str, dict[str, float]]:
    """Per feature pseudo-layer, its single-unit gain beside its source layer's channels.

    ``mean_gain`` and ``high_share`` map layer names (pseudo-layers included) to the mean
    single-unit gain and the share of units with gain >= 0.8. Returns
    ``{source: {channels, features, delta, channels_share_0_8, features_share_0_8}}``.
    """
    out: dict[str, dict[str, float]] = {}
    for name, features in mean_gain.items():
        source = source_layer(name)
        if source == name or source not in mean_gain:
            continue
        channels = mean_gain[source]
        out[source] = {
            "channels": round(channels, 4),
            "features": round(features, 4),
            "delta": round(features - channels, 4),
            "channels_share_0_8": round(high_share.get(source, float("nan")), 4),
            "features_share_0_8": round(high_share.get(name, float("nan")), 4),
        }
    return out
