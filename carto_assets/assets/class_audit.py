"""The ``class_audit`` asset: what each class's prediction relies on, candidate shortcuts and
their causal checks (``class_audit``, ``class_audit_images``)."""

import dagster as dg
import polars as pl

from carto_assets.assets._metadata import frame_table, table_metadata
from carto_assets.assets.partitions import CLASS_CHUNKS
from carto_assets.assets.resources import StudyResource
from carto_assets.stages import class_audit as stage
from carto_assets.stages.audit_checks import TABLES as CHUNK_TABLES
from carto_assets.stages.concept_graph import read_chunk_tables
from carto_assets.storage import quality

TABLES = ("class_audit", "class_audit_images")


@dg.asset(group_name="audit", kinds={"duckdb"}, deps=["concept_graph", "unit_labels"])
def class_audit(context: dg.AssetExecutionContext, study: StudyResource) -> dg.MaterializeResult:
    """Per class: its terms by share of its relevance, the ones that are not its own and look
    like a shortcut flagged, and whether zeroing their units (and, where the world renders
    them, changing them in the images) confirms that the model uses them."""
    prepared = study.prepare()
    store = prepared.store
    cfg = prepared.study
    if not (cfg.audit.enabled and cfg.labels.enabled):
        store.replace_tables({}, drop=TABLES, figures=("class_audit", []))
        return dg.MaterializeResult(metadata={"enabled": False})
    # The causal checks ran in the concept graph's chunks, on the graph's passes.
    keys = sorted(context.instance.get_dynamic_partitions(CLASS_CHUNKS.name))
    chunks = [read_chunk_tables(cfg, key, CHUNK_TABLES) for key in keys]
    audit = stage.class_audit(prepared, progress=context.log.info, chunks=chunks)
    store.replace_tables(
        {"class_audit": audit.terms, "class_audit_images": audit.images},
        figures=("class_audit", stage.audit_figures(audit)),
    )
    flagged = audit.terms.filter(pl.col("flagged")).select(
        "class_name",
        "term",
        pl.col("relevance_share").round(3),
        pl.col("ablation_drop").round(3),
        pl.col("counterfactual_accuracy").round(3),
        "confirmed",
    )
    return dg.MaterializeResult(
        metadata={
            **table_metadata(store, "class_audit", preview_rows=0),
            **quality.metadata(store.figures(), "class_audit"),
            "seconds_by_phase": dg.MetadataValue.json(
                {k: round(v, 2) for k, v in audit.seconds.items()}
            ),
            "checks_from_the_graph_chunks": audit.reused,
            "checks_run_here": audit.checked_here,
            "flagged": frame_table(flagged),
        }
    )
