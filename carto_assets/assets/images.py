"""The ``images`` asset: the study's image manifest (and ground-truth concepts)."""

import shutil

import dagster as dg
import polars as pl

from carto_assets.assets._metadata import frame_table, table_metadata
from carto_assets.assets.partitions import CLASS_CHUNKS, SHARDS
from carto_assets.assets.resources import StudyResource
from carto_assets.stages.activations import stale_shard_dirs
from carto_assets.stages.images import build_manifest, save_manifest, write_images_tables
from carto_assets.storage import quality
from carto_assets.storage.sharding import chunk_key, n_class_chunks, shard_key


@dg.asset(
    group_name="data",
    kinds={"duckdb", "parquet"},
    check_specs=[
        dg.AssetCheckSpec("image_ids_dense_and_unique", asset="images"),
        dg.AssetCheckSpec("every_shard_has_images", asset="images"),
    ],
)
def images(context: dg.AssetExecutionContext, study: StudyResource) -> dg.MaterializeResult:
    """The image manifest images(image_id, shard, source, label, label_name), image_annotations."""
    prepared = study.prepare()
    cfg, store = prepared.study, prepared.store
    manifest = build_manifest(cfg)
    save_manifest(cfg, manifest)
    counts = write_images_tables(cfg, manifest, store)

    # Keep the shard partitions in step with the study: add new keys, drop stale ones.
    _sync_partitions(context.instance, SHARDS.name, [shard_key(s) for s in range(cfg.shards)])
    _sync_partitions(
        context.instance,
        CLASS_CHUNKS.name,
        [
            chunk_key(i)
            for i in range(n_class_chunks(len(manifest.class_names), cfg.graph.classes_per_chunk))
        ],
    )
    for stale in stale_shard_dirs(cfg):
        shutil.rmtree(stale, ignore_errors=True)

    imgs = manifest.images
    ids = imgs["image_id"].to_numpy()
    per_shard = imgs.group_by("shard").len().sort("shard")
    per_class = imgs.group_by("label_name").len().sort("len", descending=True)
    skipped = pl.DataFrame(
        {
            "path": [s.path for s in manifest.skipped],
            "reason": [s.reason for s in manifest.skipped],
        },
        schema={"path": pl.Utf8, "reason": pl.Utf8},
    )
    metadata = {
        **table_metadata(store, "images"),
        "n_classes": len(manifest.class_names),
        "n_shards": cfg.shards,
        "images_per_class": frame_table(per_class.head(50)),
        "n_skipped_files": len(manifest.skipped),
        "skipped_files": frame_table(skipped.head(200)) if len(skipped) else "none",
        "image_concepts_rows": counts.get("image_concepts", 0),
        "image_annotations_rows": counts.get("image_annotations", 0),
        **quality.metadata(store.figures(), "images"),
        "image_masks_rows": counts.get("image_masks", 0),
        "study": dg.MetadataValue.json(cfg.to_dict()),
    }
    checks = [
        dg.AssetCheckResult(
            check_name="image_ids_dense_and_unique",
            passed=bool(
                len(ids) == len(set(ids.tolist())) and ids.min() == 0 and ids.max() == len(ids) - 1
            ),
        ),
        dg.AssetCheckResult(
            check_name="every_shard_has_images",
            passed=bool(len(per_shard) == cfg.shards and per_shard["len"].min() > 0),
            metadata={"min_images_per_shard": int(per_shard["len"].min())},
        ),
    ]
    context.log.info(f"{len(imgs)} images in {cfg.shards} shards; {len(skipped)} files skipped")
    return dg.MaterializeResult(metadata=metadata, check_results=checks)


def _sync_partitions(instance: dg.DagsterInstance, name: str, wanted: list[str]) -> None:
    """Add the study's partition keys and drop stale ones (from an earlier, larger study)."""
    existing = set(instance.get_dynamic_partitions(name))
    instance.add_dynamic_partitions(name, [k for k in wanted if k not in existing])
    for key in sorted(existing - set(wanted)):
        instance.delete_dynamic_partition(name, key)
