"""The ``model`` asset: the study's network, trained (built-in) or loaded (torchvision)."""

import dagster as dg
import polars as pl

from carto_assets import pipeline
from carto_assets.assets._metadata import frame_table
from carto_assets.resources import StudyResource


@dg.asset(group_name="model", kinds={"pytorch"}, deps=["images"])
def model(context: dg.AssetExecutionContext, study: StudyResource) -> dg.MaterializeResult:
    """The network to map, with its layers resolved; the built-in CNN is trained and cached."""
    cfg = study.load()
    meta = pipeline.prepare_model(cfg, progress=context.log.info)
    layers = pl.DataFrame(meta["layers"])
    metadata: dict[str, object] = {
        "model": cfg.model,
        "weights": cfg.weights,
        "input_size": meta["input_size"],
        "n_parameters": meta["n_parameters"],
        "n_neurons": meta["n_neurons"],
        "layers": frame_table(layers),
        "reused_cached_checkpoint": bool(meta["cached"]),
        "checkpoint_dir": dg.MetadataValue.path(str(pipeline.model_dir(cfg))),
    }
    if meta.get("holdout_accuracy") is not None:
        metadata["holdout_accuracy"] = float(meta["holdout_accuracy"])
        metadata["train_accuracy"] = float(meta["train_accuracy"])
        metadata["epoch_losses"] = dg.MetadataValue.json(
            [round(x, 5) for x in meta["epoch_losses"]]
        )
        metadata["n_holdout_images"] = int(meta["n_holdout"])
    return dg.MaterializeResult(metadata=metadata)
