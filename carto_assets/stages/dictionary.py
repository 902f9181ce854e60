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
``dictionary/<fingerprint>/``;
:func:`~carto_assets.stages.stored_dictionaries.feature_layers` loads them: the pseudo-layers
``<layer>:features`` whose units (``neurons.kind = 'feature'``) follow their source layer's
channels in neuron order. Put on the pass's device (:meth:`FeatureLayer.on
<carto_assets.core.sae.layer.FeatureLayer.on>`), they are the units the activation pass
derives from their source's output, recording their maxima in the same forward pass as the
channels.

No dagster imports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from carto_assets.core.network.layers import LayerInfo
from carto_assets.core.network.zoo import resolve_device
from carto_assets.core.sae.dictionaries import (
    META_FILE,
    DictionariesRecord,
    describe,
    load_dictionaries,
    sample_activations,
    save_dictionaries,
    train_dictionaries,
)
from carto_assets.core.sae.layer import FeatureLayer, source_layer
from carto_assets.runtime import progress as progress_of
from carto_assets.stages.stored_dictionaries import (
    dictionary_dir,
    dictionary_sample,
    features_settings,
    record_fingerprint,
    sample_fingerprint,
)
from carto_assets.study import FeaturesConfig

if TYPE_CHECKING:
    from carto_assets.stages.prepared import PreparedStudy

log = logging.getLogger("carto")


# ---- in a study: the `dictionary` asset, the pseudo-layers ---------------------------------------
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
    settings = features_settings(study)
    bundle, layers = prepared.model
    chosen = dictionary_layers(settings, layers)
    if (folder / META_FILE).is_file():
        say(f"reusing trained dictionaries {folder}")
        record_fingerprint(study, fingerprint, prepared.manifest.identity)
        return _info(folder, load_dictionaries(folder, fingerprint), cached=True)
    device = resolve_device(study.device)
    model = bundle.module.to(device)
    source = prepared.source
    ids, _ = dictionary_sample(study, images)

    def batches():
        for lo in range(0, len(ids), study.batch_size):
            pixels, ok = source.load_many(ids[lo : lo + study.batch_size].tolist(), workers=4)
            if ok.any():
                yield torch.from_numpy(pixels)

    say(f"sampling {settings.samples} activation vectors per layer from {len(ids)} images")
    progress_of.advance("dictionary sample", 0, len(ids), "images")
    sample = sample_activations(
        model,
        chosen,
        batches(),
        settings,
        study.seed,
        preprocess=bundle.normalize,
        device=device,
        progress=lambda done, _s: progress_of.advance(
            "dictionary sample", done, len(ids), "images"
        ),
    )
    order = {name: i for i, name in enumerate(sample.samples)}
    epochs = settings.epochs * len(order)  # every layer's, one after another

    def trained(layer: str, epoch: int, loss: float) -> None:
        say(f"{layer}: epoch {epoch}/{settings.epochs}, loss {loss:.4f}")
        done = order[layer] * settings.epochs + epoch
        progress_of.advance("dictionary training", done, epochs, "epochs")

    progress_of.advance("dictionary training", 0, epochs, "epochs")
    dictionaries = train_dictionaries(
        sample.samples, settings, seed=study.seed, device=device, progress=trained
    )
    extra = {
        "sample_images": sample.n_images,
        "sample_seconds": sample.seconds,
        "sample_bytes": sample.sample_bytes,
        "positions_seen": sample.positions_seen,
    }
    save_dictionaries(folder, dictionaries, fingerprint, extra)
    record_fingerprint(study, fingerprint, prepared.manifest.identity)
    return _info(folder, dictionaries, cached=False)


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
