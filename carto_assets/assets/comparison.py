"""The comparison's assets: thin wrappers around :mod:`carto_assets.stages.comparison`.

Each reads the comparison's tables (the first, the studies' own), calls its stage, replaces
its tables atomically and attaches what a person looks at in the UI.
"""

import base64
from typing import Any

import dagster as dg
from pydantic import Field

from carto_assets.assets._metadata import table_metadata
from carto_assets.stages import comparison as stage
from carto_assets.stages.prepared import PreparedComparison
from carto_assets.study.comparison import Comparison, load_comparison

GROUP = "comparison"


class ComparisonResource(dg.ConfigurableResource):
    """The comparison being materialized (its studies, settings and DuckDB store)."""

    comparison_file: str = Field(description="Path of the comparison YAML.")

    def load(self) -> Comparison:
        return load_comparison(self.comparison_file)

    def prepare(self) -> PreparedComparison:
        """The comparison, read once, with its store; its studies are prepared on first use."""
        return PreparedComparison.load(
            self.comparison_file, owner=f"`carto compare` {self.comparison_file}"
        )


def _write(prepared: PreparedComparison, result: stage.Result) -> dict[str, Any]:
    store = prepared.store
    store.replace_tables(result.tables)
    meta: dict[str, Any] = {}
    for i, name in enumerate(result.tables):
        table_meta = table_metadata(store, name, preview_rows=5)
        if i == 0:
            meta.update(table_meta)
        else:
            meta[f"{name}_rows"] = table_meta["dagster/row_count"]
    for key, value in result.figures.items():
        meta[key] = dg.MetadataValue.json(value) if isinstance(value, dict | list) else value
    return meta


@dg.asset(group_name=GROUP, kinds={"duckdb"})
def compare_units(comparison: ComparisonResource) -> dg.MaterializeResult:
    """The studies' units, top images, concepts, graphs and patches, checked to map the same
    images, copied into the comparison."""
    prepared = comparison.prepare()
    return dg.MaterializeResult(metadata=_write(prepared, stage.collect(prepared)))


@dg.asset(group_name=GROUP, kinds={"duckdb"}, deps=[compare_units])
def unit_matches(comparison: ComparisonResource) -> dg.MaterializeResult:
    """Each unit's best match in every other study (MinHash + one LSH index + exact Jaccard)."""
    prepared = comparison.prepare()
    result = stage.matches(prepared.comparison, prepared.store)
    return dg.MaterializeResult(metadata=_write(prepared, result))


@dg.asset(group_name=GROUP, kinds={"duckdb", "pytorch"}, deps=[unit_matches])
def layer_matches(
    context: dg.AssetExecutionContext, comparison: ComparisonResource
) -> dg.MaterializeResult:
    """Per pair of layers: the share of units with a mutual match, a shuffled null, CKA."""
    prepared = comparison.prepare()
    result = stage.layers(prepared, progress=context.log.info)
    return dg.MaterializeResult(metadata=_write(prepared, result))


@dg.asset(group_name=GROUP, kinds={"duckdb"}, deps=[compare_units])
def concept_matches(comparison: ComparisonResource) -> dg.MaterializeResult:
    """Every concept (a cluster's words): shared with each other study that has the same
    formula, or only in its own; matched by top images where a study has no words."""
    prepared = comparison.prepare()
    result = stage.concepts(prepared.comparison, prepared.store)
    return dg.MaterializeResult(metadata=_write(prepared, result))


@dg.asset(group_name=GROUP, kinds={"duckdb", "pytorch"}, deps=[unit_matches])
def compare_embedding(
    context: dg.AssetExecutionContext, comparison: ComparisonResource
) -> dg.MaterializeResult:
    """One skip-gram embedding of every study's units (each image's list holds them all)."""
    prepared = comparison.prepare()
    result = stage.embedding(prepared.comparison, prepared.store, progress=context.log.info)
    return dg.MaterializeResult(metadata=_write(prepared, result))


@dg.asset(group_name=GROUP, kinds={"duckdb", "umap"}, deps=[compare_embedding])
def compare_projection(comparison: ComparisonResource) -> dg.MaterializeResult:
    """One 2-D map of every study's units, and each unit's nearest units of other studies."""
    prepared = comparison.prepare()
    result = stage.projection(prepared.comparison, prepared.store)
    return dg.MaterializeResult(metadata=_write(prepared, result))


@dg.asset(
    group_name=GROUP,
    kinds={"html", "altair"},
    deps=[compare_projection, layer_matches, concept_matches],
)
def compare_views(comparison: ComparisonResource) -> dg.MaterializeResult:
    """The compare page: both models in one map, matches side by side, the layer matrix,
    model-only concepts and per class the two concept graphs, as one offline index.html."""
    from carto_viz.compare_page import export_compare

    cfg = comparison.load()
    result = export_compare(cfg.database_path, cfg.views_path, name=cfg.name)
    picture = base64.b64encode(result.png_bytes).decode()
    return dg.MaterializeResult(
        metadata={
            "index_html": dg.MetadataValue.path(str(result.html_path)),
            "page_bytes": result.page_bytes,
            "units": result.n_units,
            "picture": dg.MetadataValue.md(f"![compare](data:image/png;base64,{picture})"),
        }
    )


ASSETS = [
    compare_units,
    unit_matches,
    layer_matches,
    concept_matches,
    compare_embedding,
    compare_projection,
    compare_views,
]
