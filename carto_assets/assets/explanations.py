"""The ``explanations`` asset: every class chunk's per-image explanations, merged."""

import dagster as dg

from carto_assets.assets._metadata import frame_table, table_metadata
from carto_assets.assets.partitions import CLASS_CHUNKS
from carto_assets.assets.resources import StudyResource
from carto_assets.stages import explanations as stage
from carto_assets.stages.concept_graph import read_chunk_tables
from carto_assets.stages.explanation_chunk import TABLES
from carto_assets.storage import quality


@dg.asset(group_name="explanations", kinds={"duckdb"}, deps=["explanation_chunk"])
def explanations(context: dg.AssetExecutionContext, study: StudyResource) -> dg.MaterializeResult:
    """Per explained image: its concepts' relevance per layer with coarse maps, the
    completeness gap, and the faithfulness checks; each concept's relevance exemplars."""
    prepared = study.prepare()
    cfg, store = prepared.study, prepared.store
    keys = sorted(context.instance.get_dynamic_partitions(CLASS_CHUNKS.name))
    parts = [read_chunk_tables(cfg, key, TABLES) for key in keys]
    merged = stage.merge_explanations(parts)
    tables = {**merged.tables, "relevance_exemplars": merged.exemplars}
    store.replace_tables(tables, figures=("explanations", stage.explanation_figures(merged)))
    figures = quality.metadata(store.figures(), "explanations")
    return dg.MaterializeResult(
        metadata={
            **table_metadata(store, "explanation_concepts", preview_rows=0),
            "enabled": cfg.explain.enabled,
            **figures,
            "images_preview": frame_table(merged.tables["explained_images"].head(15)),
        }
    )
