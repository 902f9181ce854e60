"""The ``unit_labels`` asset: each unit's and each cluster's words (``unit_labels``,
``cluster_labels``)."""

import dagster as dg
import polars as pl

from carto_assets.assets._metadata import frame_table, table_metadata
from carto_assets.assets.resources import StudyResource
from carto_assets.stages import unit_labels as stage
from carto_assets.storage import quality

TABLES = ("unit_labels", "cluster_labels")


@dg.asset(group_name="words", kinds={"duckdb"}, deps=["top_images", "neuron_clusters"])
def unit_labels(context: dg.AssetExecutionContext, study: StudyResource) -> dg.MaterializeResult:
    """Each unit's and cluster's words: the formula over annotation values that best separates
    the images it fires on, with its AUC and p-value (none where no word fits)."""
    prepared = study.prepare()
    store = prepared.store
    if not prepared.study.labels.enabled:
        store.replace_tables({}, drop=TABLES, figures=("unit_labels", []))
        return dg.MaterializeResult(metadata={"enabled": False})
    labels = stage.unit_labels(prepared, progress=context.log.info)
    store.replace_tables(
        {"unit_labels": labels.units, "cluster_labels": labels.clusters},
        figures=("unit_labels", stage.label_figures(labels)),
    )
    examples = (
        labels.units.filter(pl.col("formula").is_not_null())
        .sort("auc", descending=True)
        .unique("layer", keep="first", maintain_order=True)
        .select("neuron_id", "layer", "formula", pl.col("auc").round(3))
    )
    return dg.MaterializeResult(
        metadata={
            **table_metadata(store, "unit_labels"),
            "clusters_labelled": int(labels.clusters["formula"].is_not_null().sum()),
            "sample_images": labels.n_images,
            "annotation_values": labels.n_terms,
            "images_left_out_unannotated": labels.n_unannotated,
            "formulas_scored_per_unit": labels.n_formulas,
            "seconds_by_phase": dg.MetadataValue.json(
                {k: round(v, 2) for k, v in labels.seconds.items()}
            ),
            **quality.metadata(store.figures(), "unit_labels"),
            "best_words_per_layer": frame_table(examples),
        }
    )
