"""The study's network: trained (built-in CNN) or loaded (torchvision), its layers resolved and
cached under ``model/<fingerprint>/`` (``model.pt``, ``meta.json``) in the study's files.

The built-in training also keeps the network after every earlier epoch
(``checkpoints/epoch-<e>.pt``, epoch 0 = the seeded initial weights), so a study that maps one
of them (``training.checkpoint_epoch``) can reuse it from the same files folder; elsewhere it
runs the same seeded training up to that epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from carto_assets.core.network.layers import LayerInfo, probe_layers, resolve_layers
from carto_assets.core.network.zoo import BuiltinCNN, torchvision_model
from carto_assets.runtime import progress as progress_of
from carto_assets.sources.datasets import ImageFolderSource, ImageSource, study_image_size
from carto_assets.stages.images import source_for_manifest
from carto_assets.stages.stored_model import (
    BUILTIN_MEAN,
    BUILTIN_STD,
    META_FILE,
    ModelInfo,
    bundle_for,
    checkpoint_path,
    kept_checkpoint,
    model_dir,
    model_key,
    saves_state,
)
from carto_assets.storage import atomic
from carto_assets.storage.fingerprints import model_fingerprint
from carto_assets.study import Study

if TYPE_CHECKING:
    from carto_assets.stages.prepared import PreparedStudy

log = logging.getLogger("carto")


def layer_table(layers: list[LayerInfo]) -> list[dict[str, Any]]:
    return [
        {
            "layer": i.name,
            "type": i.type,
            "channels": i.channels,
            "map_height": i.map_size[0],
            "map_width": i.map_size[1],
            "order": i.order,
        }
        for i in layers
    ]


def prepare_model(
    prepared: PreparedStudy,
    progress: Callable[[str], None] | None = None,
) -> ModelInfo:
    """Train (built-in) or load (torchvision) the study's model, resolve its layers, cache it.

    A cached checkpoint is reused while the study's model and dataset settings are unchanged
    (they make up the cache key).
    """
    say = progress or log.info
    study = prepared.study
    images, class_names = prepared.images, prepared.class_names
    out = model_dir(study)
    if (out / META_FILE).is_file():
        say(f"reusing cached model {out}")
        return ModelInfo.read(out)
    size = study_image_size(study)
    training: dict[str, Any] = {}
    kept: dict[int, dict[str, torch.Tensor]] = {}
    if study.is_builtin_model:
        module, training, kept = _builtin_network(study, images, class_names, say)
    else:
        # Random init (weights: none) is seeded and saved below, so every shard, process and
        # later stage sees the same network.
        torch.manual_seed(study.seed)
        module = torchvision_model(study.torchvision_name or "", study.weights)
    infos = probe_layers(module.eval(), size)
    layers = resolve_layers(infos, study.layers, model_key(study))
    info = ModelInfo(
        model=study.model,
        weights=study.weights,
        input_size=size,
        fingerprint=model_fingerprint(study),
        layers=layer_table(layers),
        n_neurons=sum(int(i.channels or 0) for i in layers),
        n_parameters=sum(p.numel() for p in module.parameters()),
        **training,
    )
    with atomic.replacing(out) as tmp:
        tmp.mkdir()
        if saves_state(study):
            torch.save(module.state_dict(), tmp / "model.pt")
        for epoch, state in kept.items():
            path = checkpoint_path(tmp, epoch)
            path.parent.mkdir(exist_ok=True)
            torch.save(state, path)
        (tmp / META_FILE).write_text(info.model_dump_json(indent=2))
    return info


@dataclass(frozen=True)
class SourceRows:
    """The manifest's images by position, loaded from the source when a batch asks for them
    (the training's :class:`~carto_assets.core.network.training.ImageRows`)."""

    source: ImageSource
    #: the manifest's image ids, by position
    image_ids: np.ndarray

    @property
    def image_size(self) -> int:
        return self.source.image_size

    def __len__(self) -> int:
        return len(self.image_ids)

    def rows(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Image folders decode with a few threads (PIL releases the GIL), as the shards do.
        workers = 4 if isinstance(self.source, ImageFolderSource) else 1
        return self.source.load_many(self.image_ids[positions].tolist(), workers=workers)


def _builtin_network(
    study: Study, images: Any, class_names: list[str], say: Callable[[str], None]
) -> tuple[torch.nn.Module, dict[str, Any], dict[int, dict[str, torch.Tensor]]]:
    """The built-in CNN the study maps (trained, or copied from a kept checkpoint), its
    training figures and the earlier epochs' weights the training keeps."""
    from carto_assets.core.network.training import accuracy, split_holdout, train_builtin

    source = source_for_manifest(study, images, class_names)
    say(f"training on {len(images)} images, loaded batch by batch")
    streamed = SourceRows(source, images["image_id"].to_numpy())
    labels = images["label"].to_numpy()
    t = study.training
    n_classes = len(class_names)
    copied = kept_checkpoint(study)
    if copied is not None:
        say(f"mapping epoch {t.checkpoint_epoch} of the training kept at {copied}")
        module = BuiltinCNN(n_classes)
        module.load_state_dict(torch.load(copied, map_location="cpu", weights_only=True))
        bundle = bundle_for(study, module)
        train_idx, hold_idx = split_holdout(len(streamed), t.holdout_fraction, study.training_seed)
        return (
            module,
            {
                "n_classes": n_classes,
                "holdout_accuracy": accuracy(bundle, streamed, labels, hold_idx),
                "train_accuracy": accuracy(bundle, streamed, labels, train_idx[:2000]),
                "n_train": len(train_idx),
                "n_holdout": len(hold_idx),
                "checkpoint_epoch": t.checkpoint_epoch,
                "copied_from": str(copied),
            },
            {},
        )
    last = t.epochs if t.checkpoint_epoch is None else t.checkpoint_epoch
    kept: dict[int, dict[str, torch.Tensor]] = {}

    def keep(epoch: int, model: torch.nn.Module) -> None:
        if epoch < last:  # the last epoch is model.pt itself
            kept[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    progress_of.advance("model training", 0, max(1, last), "batches")
    result = train_builtin(
        streamed,
        labels,
        n_classes,
        epochs=t.epochs,
        learning_rate=t.learning_rate,
        batch_size=t.batch_size,
        holdout_fraction=t.holdout_fraction,
        seed=study.training_seed,
        mean=BUILTIN_MEAN,
        std=BUILTIN_STD,
        progress=lambda e, loss, s: say(f"epoch {e}/{t.epochs}: loss {loss:.4f} ({s:.0f} s)"),
        on_batch=lambda done, total: progress_of.advance("model training", done, total, "batches"),
        stop_after=t.checkpoint_epoch,
        on_epoch=keep,
    )
    return (
        result.bundle.module,
        {
            "n_classes": n_classes,
            "holdout_accuracy": result.holdout_accuracy,
            "train_accuracy": result.train_accuracy,
            "epoch_losses": result.epoch_losses,
            "n_train": result.n_train,
            "n_holdout": result.n_holdout,
            "training_seconds": result.seconds,
            "checkpoint_epoch": t.checkpoint_epoch,
            "kept_checkpoints": sorted(kept),
        },
        kept,
    )
