"""carto_assets/schema/: the one declaration of every table, and what it feeds."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest

from carto_assets import schema
from carto_assets.storage.store import CartoStore

SCHEMA_DOC = Path(__file__).resolve().parents[1] / "docs" / "schema.md"


def test_docs_schema_md_holds_the_generated_column_table_of_every_table() -> None:
    blocks = schema.documented_blocks(SCHEMA_DOC.read_text())
    assert sorted(blocks) == sorted(schema.TABLES), (
        "run: python -m carto_assets.schema docs/schema.md"
    )
    for name, block in blocks.items():
        assert block == schema.markdown(name), f"docs/schema.md's {name} table is out of date"


def test_every_declared_type_maps_to_polars_and_back_to_duckdb(tmp_path: Path) -> None:
    sizes = {"dim": 3, "num_perm": 4}
    con = duckdb.connect(str(tmp_path / "t.duckdb"))
    for name in schema.TABLES:
        empty = schema.empty_frame(name, sizes)
        con.register("incoming", empty)
        con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM incoming')
        con.unregister("incoming")
        schema.check_columns(name, schema.describe(con, name))


def test_type_matching_treats_array_sizes_as_settings() -> None:
    assert schema.type_matches("FLOAT[dim]", "FLOAT[30]")
    assert schema.type_matches("BIGINT[]", "BIGINT[]")
    assert not schema.type_matches("FLOAT[dim]", "FLOAT[]")
    assert not schema.type_matches("FLOAT[dim]", "DOUBLE[30]")
    assert not schema.type_matches("INTEGER", "BIGINT")


def test_frame_casts_orders_and_names_bad_columns() -> None:
    df = schema.frame("neuron_projection", {"y": [1, 2], "x": [0.5, 1.5], "neuron_id": [3, 4]})
    assert df.columns == ["neuron_id", "x", "y"]
    assert df.schema["neuron_id"] == pl.Int64 and df.schema["y"] == pl.Float64
    with pytest.raises(
        schema.SchemaError, match=r"missing columns \['y'\], unknown columns \['z'\]"
    ):
        schema.frame("neuron_projection", {"neuron_id": [1], "x": [0.0], "z": [1.0]})
    with pytest.raises(schema.SchemaError, match="not declared"):
        schema.table("no_such_table")


def test_the_store_refuses_a_declared_table_with_other_columns(tmp_path: Path) -> None:
    store = CartoStore(tmp_path / "carto.duckdb")
    good = schema.frame("neuron_projection", {"neuron_id": [1], "x": [0.0], "y": [1.0]})
    store.replace_tables({"neuron_projection": good})
    with pytest.raises(schema.SchemaError, match=r"neuron_projection.*type FLOAT, declared DOUBLE"):
        store.replace_tables({"neuron_projection": good.with_columns(pl.col("y").cast(pl.Float32))})
    with pytest.raises(schema.SchemaError, match="has columns"):
        store.replace_tables({"neuron_projection": "SELECT 1 AS neuron_id, 2.0 AS x"})
    # Nothing of the refused writes was published; undeclared tables are not checked.
    assert store.query("SELECT * FROM neuron_projection")["y"].to_list() == [1.0]
    store.replace_tables({"scratch": "SELECT 1 AS anything"})


def test_the_synthetic_view_database_holds_declared_tables(tmp_path: Path) -> None:
    from carto_viz.synthetic import make_database

    path = make_database(tmp_path / "synthetic.duckdb", words=("shape=heart", None))
    con = duckdb.connect(str(path), read_only=True)
    names = [
        r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    ]
    assert set(names) <= set(schema.TABLES)
    assert {"unit_labels", "cluster_labels"} <= set(names)
    for name in names:
        schema.check_columns(name, schema.describe(con, name))
