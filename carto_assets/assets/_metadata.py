"""Metadata a person looks at in the Dagster UI: row counts, column schemas, previews."""

from __future__ import annotations

import dagster as dg
import polars as pl

from carto_assets.storage import CartoStore

#: One-line descriptions of every column, shared with docs/schema.md.
COLUMN_DOCS: dict[str, dict[str, str]] = {
    "images": {
        "image_id": "dense id, 0..N-1 in manifest order",
        "shard": "activation partition the image belongs to",
        "source": "where it came from: shapes:<i>, digits:<i> or a path relative to the folder",
        "label": "class index",
        "label_name": "class name",
    },
    "image_concepts": {
        "image_id": "image",
        "concept": "ground-truth concept (shape, colour, ...)",
        "value": "the concept's value in that image",
    },
    "neurons": {
        "neuron_id": "dense id over all mapped layers, in forward order",
        "layer": "module name",
        "layer_index": "position of the layer in forward order",
        "channel": "channel index within the layer",
        "map_height": "height of the layer's map",
        "map_width": "width of the layer's map",
    },
    "top_images": {
        "neuron_id": "neuron",
        "rank": "1 = strongest",
        "image_id": "image",
        "activation": "max of the channel's map over space",
        "y": "argmax row in the map",
        "x": "argmax column in the map",
    },
}


def table_metadata(store: CartoStore, table: str, preview_rows: int = 10) -> dict[str, object]:
    """Row count, column schema (with descriptions) and a Markdown preview of a table."""
    cols = store.column_schema(table)
    docs = COLUMN_DOCS.get(table, {})
    schema = dg.TableSchema(
        columns=[dg.TableColumn(name=c, type=t, description=docs.get(c)) for c, t in cols]
    )
    count = int(store.query(f'SELECT count(*) AS n FROM "{table}"')["n"][0])
    preview = store.query(f'SELECT * FROM "{table}" LIMIT {preview_rows}')
    return {
        "dagster/row_count": count,
        "dagster/column_schema": schema,
        "preview": dg.MetadataValue.md(frame_to_markdown(preview)),
        "database": dg.MetadataValue.path(str(store.database_path)),
    }


def frame_to_markdown(df: pl.DataFrame, max_chars: int = 60) -> str:
    """A Markdown table; cell text is escaped so data never becomes markup."""

    def cell(v: object) -> str:
        s = str(v)
        s = s if len(s) <= max_chars else s[: max_chars - 1] + "…"
        for ch, rep in (("\\", "\\\\"), ("|", "\\|"), ("<", "&lt;"), (">", "&gt;"), ("\n", " ")):
            s = s.replace(ch, rep)
        return s

    head = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    sep = "|" + "---|" * len(df.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.iter_rows()]
    return "\n".join([head, sep, *rows])
