"""Every table and view a study's database holds: columns, types, meanings, and the asset that
writes it. This package is the one place a table's columns are written out:
:mod:`~carto_assets.schema.study_tables` and :mod:`~carto_assets.schema.comparison_tables`
declare them (:class:`~carto_assets.schema.columns.Table`); this module puts them together.

It feeds:

- the writers: :meth:`carto_assets.storage.store.CartoStore.replace_tables` checks every declared
  table it writes against its declaration, so a stage that drifts fails loudly, inside the
  transaction, before anything is published;
- the Dagster UI: the column schema (with descriptions) of every table asset's metadata;
- ``docs/schema.md``: its column tables are generated from here (``python -m
  carto_assets.schema docs/schema.md`` rewrites them in place) and a test checks they agree;
- empty frames and frames built from columns (:func:`empty_frame`, :func:`frame`), used by
  stages and by the synthetic view data.

Types are DuckDB's. ``FLOAT[dim]`` and ``UINTEGER[num_perm]`` are fixed-size arrays whose size is
a study setting. No dagster or torch here: ``carto check`` and the views import it.
"""

from __future__ import annotations

import re

import duckdb
import polars as pl

from carto_assets.schema.columns import (
    FEATURE_SUFFIX,
    PREDICTION,
    PREDICTION_CLUSTER,
    Column,
    SchemaError,
    Table,
)
from carto_assets.schema.comparison_tables import COMPARISON_TABLES
from carto_assets.schema.study_tables import STUDY_TABLES

__all__ = [
    "COMPARISON_TABLES",
    "FEATURE_SUFFIX",
    "PREDICTION",
    "PREDICTION_CLUSTER",
    "STUDY_TABLES",
    "TABLES",
    "Column",
    "SchemaError",
    "Table",
]

#: Every declared table and view, by name: a study's database's, then a comparison's.
TABLES: dict[str, Table] = {t.name: t for t in (*STUDY_TABLES, *COMPARISON_TABLES)}


def table(name: str) -> Table:
    """The declaration of ``name``; a clear error for a table that is not declared."""
    try:
        return TABLES[name]
    except KeyError:
        raise SchemaError(
            f"table {name!r} is not declared in carto_assets/schema/study_tables.py or "
            f"comparison_tables.py; declared: "
            f"{', '.join(TABLES)}"
        ) from None


def _declared_in(name: str) -> str:
    return "comparison_tables.py" if table(name).database == "comparison" else "study_tables.py"


def column_names(name: str) -> list[str]:
    return table(name).column_names


# ---- polars --------------------------------------------------------------------------------
_POLARS_SCALARS: dict[str, pl.DataType] = {
    "BIGINT": pl.Int64(),
    "INTEGER": pl.Int32(),
    "UINTEGER": pl.UInt32(),
    "DOUBLE": pl.Float64(),
    "FLOAT": pl.Float32(),
    "VARCHAR": pl.Utf8(),
    "BOOLEAN": pl.Boolean(),
    "BLOB": pl.Binary(),
}
_ARRAY = re.compile(r"^([A-Z]+)\[(\w*)\]$")


def polars_type(duckdb_type: str, sizes: dict[str, int] | None = None) -> pl.DataType:
    """The polars dtype that DuckDB stores as ``duckdb_type``.

    ``X[]`` is a list; ``X[name]`` an array whose size ``sizes[name]`` gives (a list when it
    is not given).
    """
    match = _ARRAY.match(duckdb_type)
    if match is None:
        return _POLARS_SCALARS[duckdb_type]
    inner, size = _POLARS_SCALARS[match.group(1)], match.group(2)
    if size and sizes and size in sizes:
        return pl.Array(inner, sizes[size])
    return pl.List(inner)


def polars_schema(name: str, sizes: dict[str, int] | None = None) -> dict[str, pl.DataType]:
    return {c.name: polars_type(c.type, sizes) for c in table(name).columns}


def empty_frame(name: str, sizes: dict[str, int] | None = None) -> pl.DataFrame:
    """A frame with no rows and the table's columns and types."""
    return pl.DataFrame(schema=polars_schema(name, sizes))


def frame(name: str, data: dict[str, object], sizes: dict[str, int] | None = None) -> pl.DataFrame:
    """A frame of the table from column data (any order), cast to the declared types and order.

    Raises :class:`SchemaError` naming missing or unknown columns.
    """
    declared = column_names(name)
    missing = [c for c in declared if c not in data]
    unknown = [c for c in data if c not in declared]
    if missing or unknown:
        raise SchemaError(
            f"table {name!r}: missing columns {missing}, unknown columns {unknown}; "
            f"declared: {declared}"
        )
    schema = polars_schema(name, sizes)
    return pl.DataFrame({c: data[c] for c in declared}).cast(schema)


# ---- checking what was written -------------------------------------------------------------
def type_matches(declared: str, actual: str) -> bool:
    """Whether DuckDB's ``actual`` type is the ``declared`` one (array sizes are settings)."""
    pattern = re.escape(declared).replace(r"\[", "[").replace(r"\]", "]")
    pattern = re.sub(r"\[(\w+)\]", r"\\[\\d+\\]", pattern).replace("[]", r"\[\]")
    return re.fullmatch(pattern, actual) is not None


def describe(con: duckdb.DuckDBPyConnection, name: str) -> list[tuple[str, str]]:
    """(column, DuckDB type) pairs of table or view ``name`` as ``con`` sees it, in order."""
    return con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = ? ORDER BY ordinal_position",
        [name],
    ).fetchall()


def check_columns(name: str, actual: list[tuple[str, str]]) -> None:
    """Raise :class:`SchemaError` unless ``actual`` (name, DuckDB type) pairs are the declared
    columns, in order, with matching types."""
    expected = table(name).columns
    names = [n for n, _ in actual]
    if names != [c.name for c in expected]:
        raise SchemaError(
            f"table {name!r} has columns {names}; carto_assets/schema/{_declared_in(name)} "
            f"declares {[c.name for c in expected]}"
        )
    for column, (_, got) in zip(expected, actual, strict=True):
        if not type_matches(column.type, got):
            raise SchemaError(
                f"table {name!r}, column {column.name!r}: type {got}, declared {column.type}"
            )


# ---- documentation -------------------------------------------------------------------------
_BLOCK = re.compile(r"<!-- columns: (\w+) -->\n.*?<!-- end columns -->", re.DOTALL)


def markdown(name: str) -> str:
    """The Markdown column table of ``name``, as docs/schema.md holds it."""
    rows = ["| column | type | meaning |", "|---|---|---|"]
    rows += [f"| {c.name} | {c.type} | {c.description} |" for c in table(name).columns]
    return "\n".join(rows)


def documented_blocks(doc: str) -> dict[str, str]:
    """The generated column tables in a document, by table name."""
    return {
        m.group(1): m.group(0).split("\n", 1)[1].rsplit("\n", 1)[0] for m in _BLOCK.finditer(doc)
    }


def render_doc(doc: str) -> str:
    """``doc`` with every ``<!-- columns: name -->`` block regenerated from :data:`TABLES`."""
    return _BLOCK.sub(
        lambda m: f"<!-- columns: {m.group(1)} -->\n{markdown(m.group(1))}\n<!-- end columns -->",
        doc,
    )
