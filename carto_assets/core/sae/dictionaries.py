"""Dictionary features, the pure pieces: sample a layer's activation vectors, train a top-k
sparse autoencoder per layer and store it.

A channel is one coordinate of a layer's activation vector ``x`` (one vector per spatial
position, or per token). A *feature* is one latent of the layer's SAE,
``z = TopK(ReLU(W_enc (x - b_dec) + b_enc))``, computed at every position. An image's
activation for a feature is then exactly what it is for a channel: the maximum of the feature's
map over space, with its position (:func:`carto_assets.core.network.recorder.spatial_max`), so
features go through the same streaming top-k, clustering and gain code as channels.

Two steps, each with fixed memory:

1. :func:`sample_activations`: one forward pass over a subset of images; each image's
   strongest position vectors (largest norm: the positions that decide an image's spatial
   maximum) and a few of its other positions drawn uniformly (:func:`pick_positions`) are
   offered to a :class:`~carto_assets.core.sae.autoencoder.ReservoirSampler` per layer, so memory
   is ``capacity x channels`` per layer whatever the number of images;
2. :func:`train_dictionaries`: one SAE per layer on its sample, each a
   :class:`~carto_assets.core.sae.layer.FeatureLayer` with its fit (:func:`save_dictionaries` /
   :func:`load_dictionaries` keep the weights with a fingerprint of the settings).

What a trained dictionary does with a layer's output (each image's feature maxima in the
activation pass, feature maps in the concept graph) is :mod:`carto_assets.core.sae.layer`.
The study-level wiring (the ``dictionary`` asset, the pseudo-layers) is
:mod:`carto_assets.stages.dictionary`. No study, no dagster here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from carto_assets.core.network.hooks import capture
from carto_assets.core.network.layers import LayerInfo
from carto_assets.core.network.recorder import Batch
from carto_assets.core.sae.autoencoder import (
    ReservoirSampler,
    SaeReport,
    SparseAutoencoder,
    train_sae,
)
from carto_assets.core.sae.layer import _WEIGHT_NAMES, FeatureLayer
from carto_assets.core.validate import check_float, check_int, check_seed
from carto_assets.storage import atomic

#: Bumped when the dictionary training code changes what the same settings produce (stored
#: dictionaries of another revision are retrained: part of their fingerprint).
DICTIONARY_REVISION = 3

WEIGHTS_FILE = "dictionaries.pt"
META_FILE = "meta.json"


def sample_image_ids(image_ids: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """``n`` of ``image_ids`` (all when ``n`` is None or larger), from a seeded shuffle,
    returned in ascending order so the pass reads shards in order."""
    ids = np.asarray(image_ids, dtype=np.int64)
    if n is None or n >= ids.size:
        return np.sort(ids)
    return np.sort(np.random.default_rng(seed).choice(ids, size=n, replace=False))


# ---- 1. sampling ----------------------------------------------------------------------------
def pick_positions(
    output: torch.Tensor,
    strongest: int | None,
    others: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per image, its ``strongest`` position vectors (largest L2 norm), then ``others`` drawn
    uniformly without replacement from its remaining positions: ``(rows, C)``.

    Within an image both parts are in position order; images follow each other. Every
    position (:func:`~carto_assets.core.sae.layer.position_rows`) when ``strongest`` is None;
    a part is cut to the positions there are. ``(B, C)`` outputs have one position per image.
    """
    if output.ndim == 2:
        return output
    if output.ndim == 4:
        per_image = output.flatten(2).transpose(1, 2)  # (B, H x W, C), rows as position_rows
    elif output.ndim == 3:
        per_image = output
    else:
        raise ValueError(f"cannot split an output of shape {tuple(output.shape)} into positions")
    b, p, c = per_image.shape
    if strongest is None or strongest >= p:
        return per_image.reshape(b * p, c)
    top = per_image.norm(dim=2).topk(strongest, dim=1).indices
    parts = [top.sort(dim=1).values]  # (B, strongest)
    if others > 0:
        # Uniform keys, the strongest positions' pushed below any other: the ``others`` largest
        # keys are a uniform draw without replacement from the rest.
        keys = torch.rand((b, p), generator=generator).to(per_image.device)
        keys.scatter_(1, top, -1.0)
        parts.append(keys.topk(min(others, p - strongest), dim=1).indices.sort(dim=1).values)
    keep = torch.cat(parts, dim=1)
    return per_image.gather(1, keep.unsqueeze(2).expand(-1, -1, c)).reshape(-1, c)


def _model_inputs(
    batches: Iterable[Batch | torch.Tensor],
    device: torch.device,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None,
):
    for batch in batches:
        images = batch.images if isinstance(batch, Batch) else batch
        x = images.to(device)
        yield batch, (preprocess(x) if preprocess is not None else x)


@dataclass(frozen=True)
class ActivationSample:
    """Per layer, a uniform sample of its position vectors, and what the pass cost."""

    samples: dict[str, np.ndarray]
    """Layer name -> ``(n, C)`` float32 rows."""
    positions_seen: dict[str, int]
    """Layer name -> positions offered to the sampler."""
    n_images: int
    seconds: float
    sample_bytes: int
    """Bytes the samplers hold (fixed: sum of capacity x C x 4)."""


class SamplingSettings(Protocol):
    """How activation vectors are sampled: a study's ``features`` block has these, as has
    :class:`Sampling` (:func:`sample_activations` documents each)."""

    @property
    def samples(self) -> int: ...
    @property
    def strongest_per_image(self) -> int | None: ...
    @property
    def random_per_image(self) -> int: ...


@dataclass(frozen=True)
class Sampling:
    """:class:`SamplingSettings` for callers without a study: ``samples`` rows per layer,
    by default offered every position of every image."""

    samples: int
    strongest_per_image: int | None = None
    random_per_image: int = 0


def sample_activations(
    model: nn.Module,
    layers: Sequence[LayerInfo],
    batches: Iterable[Batch | torch.Tensor],
    sampling: SamplingSettings,
    seed: int,
    *,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int, float], None] | None = None,
) -> ActivationSample:
    """One pass over ``batches``; each layer's position vectors go to its own reservoir.

    Parameters
    ----------
    model
        The network (put in eval mode here).
    layers
        Layers to sample, with known channel counts.
    batches
        :class:`Batch` es or bare image tensors: model inputs, or raw images ``preprocess``
        turns into model inputs on ``device``. Pass the subset of images to sample from.
    sampling
        A study's ``features`` block or :class:`Sampling`:

        ``samples``: rows kept per layer (the capacity): the sample is uniform over the
        positions offered.

        ``strongest_per_image``, ``random_per_image``: offer only each image's
        ``strongest_per_image`` strongest positions (largest L2 norm) and ``random_per_image``
        of its other positions drawn uniformly (:func:`pick_positions`); ``None``: every
        position. An image's activation for a unit is its maximum over space,
        so the strong positions are the ones that decide top images: a dictionary trained on
        them spends its features there rather than on background, and the uniform part keeps
        the weak positions reconstructed.
    seed
        Layer ``i``'s sampler and position draws are seeded with ``seed + i``.
    progress
        ``progress(images_done, seconds)`` after every batch.

    Returns
    -------
    ActivationSample
    """
    capacity = sampling.samples
    strongest_per_image, random_per_image = (
        sampling.strongest_per_image,
        sampling.random_per_image,
    )
    check_int("capacity", capacity, minimum=1)
    check_seed("seed", seed)
    if strongest_per_image is not None:
        check_int("strongest_per_image", strongest_per_image, minimum=1)
    check_int("random_per_image", random_per_image, minimum=0)
    if not layers:
        raise ValueError("layers must name at least one layer, got none")
    dev = torch.device(device)
    samplers = {
        info.name: ReservoirSampler(int(info.channels or 0), capacity, seed=seed + i)
        for i, info in enumerate(layers)
    }
    draws = {info.name: torch.Generator().manual_seed(seed + i) for i, info in enumerate(layers)}

    def offer(name: str, output: object) -> None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"layer {name!r} returned {type(output).__name__}, not a tensor; "
                "choose a module whose output is a tensor"
            )
        rows = pick_positions(
            output.detach().float(), strongest_per_image, random_per_image, draws[name]
        )
        if rows.shape[1] != samplers[name].dim:
            raise ValueError(
                f"layer {name!r} has {rows.shape[1]} channels, expected {samplers[name].dim}"
            )
        samplers[name].offer(rows.cpu().numpy())

    model.eval()
    done = 0
    start = time.perf_counter()
    # The last sampled layer to run ends each forward pass: nothing after it is computed.
    last = max(layers, key=lambda info: info.order).name
    with torch.inference_mode():
        for _, x in _model_inputs(batches, dev, preprocess):
            with capture(model, list(samplers), keep=offer, stop_after=last) as seen:
                model(x)
            missing = set(samplers) - set(seen)
            if missing:
                raise RuntimeError(f"layers did not run in the forward pass: {sorted(missing)}")
            done += x.shape[0]
            if progress is not None:
                progress(done, time.perf_counter() - start)
    return ActivationSample(
        samples={name: s.sample() for name, s in samplers.items()},
        positions_seen={name: s.seen for name, s in samplers.items()},
        n_images=done,
        seconds=time.perf_counter() - start,
        sample_bytes=sum(s.nbytes for s in samplers.values()),
    )


# ---- 2. training, storage ---------------------------------------------------------------------
class DictionarySettings(Protocol):
    """How each dictionary is trained: a study's ``features`` block has these, as has
    :class:`DictionaryTraining`."""

    @property
    def expansion(self) -> int: ...
    @property
    def k(self) -> int: ...
    @property
    def epochs(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def learning_rate(self) -> float: ...


@dataclass(frozen=True)
class DictionaryTraining:
    """:class:`DictionarySettings` with a study's ``features`` defaults, for callers without
    a study."""

    expansion: int = 2
    k: int = 8
    epochs: int = 240
    batch_size: int = 1024
    learning_rate: float = 4e-3


def train_dictionaries(
    samples: Mapping[str, np.ndarray],
    settings: DictionarySettings = DictionaryTraining(),
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: Callable[[str, int, float], None] | None = None,
) -> dict[str, FeatureLayer]:
    """Train one top-k SAE per layer of ``samples`` (layer name -> ``(n, C)`` rows): the
    feature layer of each source layer, with its fit, sample size and training seconds.

    ``settings`` (a study's ``features`` block, or :class:`DictionaryTraining`): layer ``i``
    gets ``expansion x C`` features, ``k`` active per row, and is trained ``epochs`` epochs
    of ``batch_size`` rows at ``learning_rate``, with seed ``seed + i``.
    ``progress(layer, epoch, loss)`` is called after each epoch. Raises ``ValueError`` for
    bad settings, naming the layer where it depends on one (``k`` larger than its features).
    """
    expansion, k, epochs = settings.expansion, settings.k, settings.epochs
    batch_size, learning_rate = settings.batch_size, settings.learning_rate
    check_int("expansion", expansion, minimum=1)
    check_int("k", k, minimum=1)
    check_int("epochs", epochs, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_float("learning_rate", learning_rate, low=0.0, low_open=True)
    check_seed("seed", seed)
    if not samples:
        raise ValueError("samples must hold at least one layer, got none")
    for name, rows in samples.items():
        shape = np.shape(rows)
        if len(shape) != 2 or shape[0] == 0:
            raise ValueError(f"samples[{name!r}] must be a non-empty (n, C) array, got {shape}")
        if k > expansion * shape[1]:
            raise ValueError(
                f"k must be <= expansion x channels = {expansion * shape[1]} for layer "
                f"{name!r}, got {k}"
            )
    out: dict[str, FeatureLayer] = {}
    for i, (name, rows) in enumerate(samples.items()):
        start = time.perf_counter()
        sae, report = train_sae(
            rows,
            n_features=expansion * rows.shape[1],
            k=k,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed + i,
            device=device,
            progress=(lambda e, loss, n=name: progress(n, e, loss)) if progress else None,
        )
        out[name] = FeatureLayer(name, sae, report, len(rows), time.perf_counter() - start)
    return out


class _LayerRecord(BaseModel):
    layer: str
    n_features: int
    k: int
    n_samples: int
    seconds: float
    report: SaeReport


class DictionariesRecord(BaseModel):
    """What a dictionaries folder's ``meta.json`` holds (validated on read)."""

    fingerprint: str
    revision: int
    #: what the sampling pass cost (JSON-able), for the ``dictionary`` asset's metadata
    extra: dict[str, Any] = {}
    layers: list[_LayerRecord]

    @classmethod
    def read(cls, folder: str | Path) -> DictionariesRecord:
        return cls.model_validate_json((Path(folder) / META_FILE).read_text())


def save_dictionaries(
    folder: str | Path,
    dictionaries: Mapping[str, FeatureLayer],
    fingerprint: str,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the weights (plain tensors, ``torch.save``) and a ``meta.json`` into ``folder``.

    ``extra`` (JSON-able, e.g. what the sampling pass cost) is stored under ``meta["extra"]``.
    The folder is replaced atomically: readers see the old dictionaries or the new ones.
    """
    folder = Path(folder)
    _check_fit(dictionaries)
    weights = {
        name: {
            **{w: torch.from_numpy(np.ascontiguousarray(getattr(d.sae, w))) for w in _WEIGHT_NAMES},
            "k": torch.tensor(d.sae.k),
        }
        for name, d in dictionaries.items()
    }
    record = DictionariesRecord(
        fingerprint=fingerprint,
        revision=DICTIONARY_REVISION,
        extra=dict(extra or {}),
        layers=[
            _LayerRecord(
                layer=name,
                n_features=d.n_features,
                k=d.sae.k,
                n_samples=d.n_samples,
                seconds=d.seconds,
                report=d.fit,  # type: ignore[arg-type]
            )
            for name, d in dictionaries.items()
        ],
    )
    with atomic.replacing(folder) as tmp:
        tmp.mkdir()
        torch.save(weights, tmp / WEIGHTS_FILE)
        (tmp / META_FILE).write_text(record.model_dump_json(indent=2))
    return folder


def load_dictionaries(
    folder: str | Path, fingerprint: str | None = None
) -> dict[str, FeatureLayer]:
    """The dictionaries :func:`save_dictionaries` wrote (source layer -> feature layer), in
    the saved layer order.

    Raises ``FileNotFoundError`` when the folder holds none, and ``ValueError`` when
    ``fingerprint`` is given and differs from the stored one (settings or model changed).
    """
    folder = Path(folder)
    if not (folder / META_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"no trained dictionaries under {folder}")
    record = DictionariesRecord.read(folder)
    if fingerprint is not None and record.fingerprint != fingerprint:
        raise ValueError(
            f"the dictionaries under {folder} were trained with other settings or another "
            f"model (fingerprint {record.fingerprint}, expected {fingerprint}); retrain them"
        )
    weights = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    out: dict[str, FeatureLayer] = {}
    for row in record.layers:
        w = weights[row.layer]
        sae = SparseAutoencoder(**{n: w[n].numpy() for n in _WEIGHT_NAMES}, k=int(w["k"]))
        out[row.layer] = FeatureLayer(row.layer, sae, row.report, row.n_samples, row.seconds)
    return out


def _check_fit(dictionaries: Mapping[str, FeatureLayer]) -> None:
    unfit = [name for name, d in dictionaries.items() if d.fit is None]
    if unfit:
        raise ValueError(f"dictionaries {unfit} have no fit (train or load them)")


def describe(dictionaries: Mapping[str, FeatureLayer]) -> list[dict[str, Any]]:
    """One row per layer for logs and metadata: features, FVU, L0, dead, seconds."""
    _check_fit(dictionaries)
    return [
        {
            "layer": name,
            "n_features": d.n_features,
            "k": d.sae.k,
            "fvu": round(d.fit.fvu, 4),  # type: ignore[union-attr]
            "l0": round(d.fit.l0, 2),  # type: ignore[union-attr]
            "dead": d.fit.dead,  # type: ignore[union-attr]
            "n_samples": d.n_samples,
            "seconds": round(d.seconds, 2),
        }
        for name, d in dictionaries.items()
    ]
