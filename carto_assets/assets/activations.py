"""The ``activations`` asset: one forward pass per shard, top-k candidates and class statistics."""

import dagster as dg

from carto_assets.assets.partitions import SHARDS
from carto_assets.assets.resources import StudyResource
from carto_assets.stages.activations import run_shard, shard_dir
from carto_assets.storage.sharding import shard_index


@dg.asset(
    group_name="activations",
    kinds={"pytorch", "parquet"},
    partitions_def=SHARDS,
    deps=["images", "model", "dictionary"],
)
def activations(context: dg.AssetExecutionContext, study: StudyResource) -> dg.MaterializeResult:
    """Per-shard top-k candidates per neuron and per-class neuron statistics, as Parquet."""
    prepared = study.prepare()
    shard = shard_index(context.partition_key)
    # Writes only Parquet (never the database), so shards can run in parallel processes.
    summary = run_shard(prepared, shard, progress=context.log.info)
    return dg.MaterializeResult(
        metadata={
            "n_images": summary.n_images,
            "n_processed": summary.n_processed,
            "n_failed_to_decode": summary.n_failed,
            "failed": dg.MetadataValue.json(summary.failed[:50]),
            "images_per_second": round(summary.images_per_second, 1),
            "seconds": round(summary.seconds, 2),
            "device": summary.device,
            "n_neurons": summary.n_neurons,
            "shard_dir": dg.MetadataValue.path(str(shard_dir(prepared.study, shard))),
        }
    )
