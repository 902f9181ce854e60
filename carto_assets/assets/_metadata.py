"""Metadata a person looks at in the Dagster UI: row counts, column schemas, previews.

Column descriptions come from :mod:`carto_assets.schema`; previews are Dagster table metadata
(the UI renders and escapes them), never hand-built Markdown.
"""

from __future__ import annotations

import dagster as dg
import polars as pl

from carto_assets import schema
from carto_assets.storage.store import CartoStore

#: Longest cell text shown in a preview; longer values (lists, blobs) are cut with an ellipsis.
MAX_CELL_CHARS = 60


def table_metadata(store: CartoStore, table: str, preview_rows: int = 10) -> dict[str, object]:
    """Row count, column schema (types from the database, descriptions from the schema module)
    and a preview of a table."""
    docs = {c.name: c.description for c in schema.table(table).columns}
    column_schema = dg.TableSchema(
        columns=[
            dg.TableColumn(name=c, type=t, description=docs.get(c))
            for c, t in store.column_schema(table)
        ]
    )
    count = int(store.query(f'SELECT count(*) AS n FROM "{table}"')["n"][0])
    meta: dict[str, object] = {
        "dagster/row_count": count,
        "dagster/column_schema": column_schema,
        "database": dg.MetadataValue.path(str(store.database_path)),
    }
    if preview_rows > 0:
        meta["preview"] = frame_table(store.query(f'SELECT * FROM "{table}" LIMIT {preview_rows}'))
    return meta


def _cell(value: object) -> str | int | float | bool | None:
    if value is None or isinstance(value, bool | int | float):
        return value
    text = f"<{len(value)} bytes>" if isinstance(value, bytes) else str(value)
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def frame_table(df: pl.DataFrame) -> dg.TableMetadataValue:
    """A small frame as Dagster table metadata (shown as a table in the UI)."""
    columns = [dg.TableColumn(name=c, type=str(t)) for c, t in df.schema.items()]
    records = [
        dg.TableRecord({c: _cell(v) for c, v in row.items()}) for row in df.iter_rows(named=True)
    ]
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=columns))
