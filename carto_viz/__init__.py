"""Linked interactive views of a Cartography study, exported as self-contained offline HTML.

Never imports Dagster: everything takes a DuckDB path or polars DataFrames.
"""

from carto_viz.charts import detail_spec, graph_spec, projection_spec, views_spec
from carto_viz.data import REQUIRED_TABLES, load_tables, view_data
from carto_viz.export import ExportResult, export_views, render_page, script_json

__all__ = [
    "REQUIRED_TABLES",
    "ExportResult",
    "detail_spec",
    "export_views",
    "graph_spec",
    "load_tables",
    "projection_spec",
    "render_page",
    "script_json",
    "view_data",
    "views_spec",
]
