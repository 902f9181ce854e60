"""The ``model`` asset's stored files, read: the prepared model's record (``meta.json``), its
cache folder and kept checkpoints, and the network built from them.

What a step reads of the model (through :class:`~carto_assets.stages.prepared.PreparedStudy`); the
asset's work (training or loading, then storing) is :mod:`carto_assets.stages.model`. No
import of :mod:`carto_assets.stages.prepared`, so the prepared study can read through this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from carto_assets.core.network.layers import LayerInfo, probe_layers, resolve_layers
from carto_assets.core.network.zoo import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BuiltinCNN,
    ModelBundle,
    torchvision_model,
)
from carto_assets.sources.datasets import study_image_size
from carto_assets.storage.fingerprints import cache_folder, model_fingerprint
from carto_assets.study import Study

BUILTIN_MEAN = (0.5, 0.5, 0.5)
BUILTIN_STD = (0.25, 0.25, 0.25)


class ModelInfo(BaseModel):
    """The prepared model: what ``model/<fingerprint>/meta.json`` holds (validated on read)."""

    model_config = ConfigDict(frozen=True)

    model: str
    weights: str
    input_size: int
    #: the study's model fingerprint (the cache key)
    fingerprint: str
    #: one row per mapped layer: layer, type, channels, map_height, map_width, order
    layers: list[dict[str, Any]]
    n_neurons: int
    n_parameters: int
    #: the built-in CNN's classes; None for torchvision models
    n_classes: int | None = None
    #: the built-in CNN's training figures; None for torchvision models
    holdout_accuracy: float | None = None
    train_accuracy: float | None = None
    epoch_losses: list[float] | None = None
    n_train: int | None = None
    n_holdout: int | None = None
    training_seconds: float | None = None
    #: the built-in CNN: the epoch of its training this network is (None: the final one)
    checkpoint_epoch: int | None = None
    #: the built-in CNN: epochs whose checkpoints ``checkpoints/`` keeps beside ``model.pt``
    kept_checkpoints: list[int] | None = None
    #: the kept checkpoint this network was copied from, instead of training (None: trained)
    copied_from: str | None = None
    #: whether this call reused a cached checkpoint (not stored)
    cached: bool = Field(False, exclude=True)

    @classmethod
    def read(cls, folder: Path) -> ModelInfo:
        """The record stored in ``folder`` (a cached checkpoint's)."""
        info = cls.model_validate_json((folder / META_FILE).read_text())
        return info.model_copy(update={"cached": True})


#: The record of a prepared model in its cache folder; written last, so its presence means the
#: folder is complete.
META_FILE = "meta.json"


def model_dir(study: Study) -> Path:
    return cache_folder(study.files_dir, "model", model_fingerprint(study))


#: Where a model folder keeps the built-in training's earlier epochs.
CHECKPOINTS = "checkpoints"


def checkpoint_path(folder: Path, epoch: int) -> Path:
    """The checkpoint of ``epoch`` kept in a model folder (epoch 0: the initial weights)."""
    return folder / CHECKPOINTS / f"epoch-{epoch}.pt"


def kept_checkpoint(study: Study) -> Path | None:
    """The checkpoint ``training.checkpoint_epoch`` names, where the whole training (same
    settings, same files folder) already kept it; else None."""
    epoch = study.training.checkpoint_epoch
    if not study.is_builtin_model or epoch is None:
        return None
    whole = cache_folder(study.files_dir, "model", model_fingerprint(study, final=True))
    if not (whole / META_FILE).is_file():
        return None
    path = whole / "model.pt" if epoch == study.training.epochs else checkpoint_path(whole, epoch)
    return path if path.is_file() else None


def bundle_for(study: Study, module: torch.nn.Module) -> ModelBundle:
    """The model in eval mode with the normalization its weights were trained with.

    Torchvision weights (``DEFAULT`` or an enum name) bring their own preprocessing: mean/std
    come from ``get_model_weights(name)[weights].transforms()`` (metadata, no download). Those
    transforms also resize (e.g. 256) and centre-crop (e.g. 224; 384 for ViT SWAG E2E weights);
    the image sources already resize and centre-crop to ``dataset.image_size``, so that is the
    size to set. Random init and checkpoints keep ImageNet's statistics.
    """
    from carto_assets.core.network.zoo import weights_normalization

    size = study_image_size(study)
    if study.is_builtin_model:
        return ModelBundle(module.eval(), "builtin", size, BUILTIN_MEAN, BUILTIN_STD)
    mean, std = weights_normalization(
        study.torchvision_name or "", study.weights, fallback=(IMAGENET_MEAN, IMAGENET_STD)
    )
    return ModelBundle(module.eval(), study.model, size, mean, std)


def saves_state(study: Study) -> bool:
    """Whether the model's weights live in the cache: trained, or randomly initialised."""
    return study.is_builtin_model or study.weights == "none"


def model_key(study: Study) -> str:
    return "builtin" if study.is_builtin_model else (study.torchvision_name or "")


def model_info(study: Study) -> ModelInfo:
    """The prepared model's record (layers, sizes, training figures), without building it."""
    folder = model_dir(study)
    if not (folder / META_FILE).is_file():
        raise FileNotFoundError(
            f"no prepared model for this study at {folder}; materialize `model` first"
        )
    return ModelInfo.read(folder)


def load_model(
    study: Study, info: ModelInfo | None = None
) -> tuple[ModelBundle, list[LayerInfo], ModelInfo]:
    """The prepared model in eval mode and its resolved layers (from the ``model`` asset).

    ``info``: its record, where the caller has read it (else read here).
    """
    info = info or model_info(study)
    if study.is_builtin_model:
        module: torch.nn.Module = BuiltinCNN(int(info.n_classes or 0))
        state = torch.load(model_dir(study) / "model.pt", map_location="cpu", weights_only=True)
        module.load_state_dict(state)
    else:
        module = torchvision_model(study.torchvision_name or "", study.weights)
        if saves_state(study):
            state = torch.load(model_dir(study) / "model.pt", map_location="cpu", weights_only=True)
            module.load_state_dict(state)
    bundle = bundle_for(study, module)
    infos = probe_layers(bundle.module, bundle.input_size)
    layers = resolve_layers(infos, [row["layer"] for row in info.layers], model_key(study))
    return bundle, layers, info
