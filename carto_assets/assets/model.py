"""The ``model`` asset: the study's network, trained (built-in) or loaded (torchvision)."""

import dagster as dg
import polars as pl

from carto_assets.assets._metadata import frame_table
from carto_assets.assets.resources import StudyResource
from carto_assets.stages.model import prepare_model
from carto_assets.stages.stored_model import model_dir
from carto_assets.storage import quality
from carto_assets.storage.quality import Figure


@dg.asset(group_name="model", kinds={"pytorch"}, deps=["images"])
def model(context: dg.AssetExecutionContext, study: StudyResource) -> dg.MaterializeResult:
    """The network to map, with its layers resolved; the built-in CNN is trained and cached."""
    prepared = study.prepare()
    cfg = prepared.study
    info = prepare_model(prepared, progress=context.log.info)
    layers = pl.DataFrame(info.layers)
    metadata: dict[str, object] = {
        "model": cfg.model,
        "weights": cfg.weights,
        "input_size": info.input_size,
        "n_parameters": info.n_parameters,
        "n_neurons": info.n_neurons,
        "layers": frame_table(layers),
        "reused_cached_checkpoint": info.cached,
        "checkpoint_dir": dg.MetadataValue.path(str(model_dir(cfg))),
    }
    figures = []
    if info.holdout_accuracy is not None:
        figures = [
            Figure(
                "holdout_accuracy",
                float(info.holdout_accuracy),
                f"the trained model's accuracy on the {info.n_holdout} held-out images",
            ),
            Figure(
                "train_accuracy",
                float(info.train_accuracy or 0.0),
                "the trained model's accuracy on its training images",
            ),
        ]
    # Torchvision models measure nothing here: writing no figures clears an earlier model's.
    store = prepared.store
    store.replace_tables({}, figures=("model", figures))
    metadata.update(quality.metadata(store.figures(), "model"))
    if info.holdout_accuracy is not None:
        metadata["epoch_losses"] = dg.MetadataValue.json(
            [round(x, 5) for x in info.epoch_losses or []]
        )
        metadata["n_holdout_images"] = int(info.n_holdout or 0)
    if info.checkpoint_epoch is not None:
        metadata["checkpoint_epoch"] = int(info.checkpoint_epoch)
    if info.kept_checkpoints:
        metadata["kept_checkpoints"] = dg.MetadataValue.json(info.kept_checkpoints)
    if info.copied_from:
        metadata["copied_from_checkpoint"] = dg.MetadataValue.path(info.copied_from)
    return dg.MaterializeResult(metadata=metadata)
