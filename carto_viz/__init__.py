"""Linked interactive views of a Cartography study, exported as self-contained offline HTML.

Never imports Dagster: everything takes a DuckDB path or polars DataFrames.
"""

from carto_viz.charts import views_chart, views_spec
from carto_viz.data import REQUIRED_TABLES, load_tables, view_data
from carto_viz.export import ExportResult, export_views, render_page, script_json

__all__ = [
    "REQUIRED_TABLES",
    "ExportResult",
    "export_views",
    "load_tables",
    "render_page",
    "script_json",
    "view_data",
    "views_chart",
    "views_spec",
]
