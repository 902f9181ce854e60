"""Atomic replacement: no duplicates on re-run; a failed write leaves the previous table."""

import polars as pl
import pytest

from carto_assets.storage import CartoStore, write_parquet_atomic


def test_replace_is_idempotent_and_atomic(tmp_path):
    store = CartoStore(tmp_path / "t.duckdb")
    df = pl.DataFrame({"a": [1, 2, 3]})
    store.replace_tables({"t": df, "u": "SELECT 42 AS answer"})
    store.replace_tables({"t": df})
    assert store.query("SELECT count(*) AS n FROM t")["n"][0] == 3
    with pytest.raises(Exception, match="no_such_table"):
        store.replace_tables({"t": pl.DataFrame({"a": [9]}), "u": "SELECT * FROM no_such_table"})
    # The whole transaction rolled back: t still holds the previous rows.
    assert store.query("SELECT sum(a) AS s FROM t")["s"][0] == 6
    assert store.query("SELECT answer FROM u")["answer"][0] == 42


def test_killed_writer_leaves_previous_rows(tmp_path):
    """A process killed mid-transaction: the committed table survives (WAL replay)."""
    import subprocess
    import sys

    db = tmp_path / "k.duckdb"
    CartoStore(db).replace_tables({"t": pl.DataFrame({"a": [1, 2]})})
    script = f"""
import duckdb, os
con = duckdb.connect({str(db)!r})
con.execute("BEGIN TRANSACTION")
con.execute("CREATE OR REPLACE TABLE t AS SELECT range AS a FROM range(1000000)")
os._exit(9)  # killed before COMMIT
"""
    subprocess.run([sys.executable, "-c", script], check=False)
    assert CartoStore(db).query("SELECT count(*) AS n FROM t")["n"][0] == 2


def test_parquet_written_atomically(tmp_path):
    path = write_parquet_atomic(pl.DataFrame({"x": [1]}), tmp_path / "d" / "f.parquet")
    assert pl.read_parquet(path)["x"].to_list() == [1]
    assert [p.name for p in path.parent.iterdir()] == ["f.parquet"]


def test_read_before_any_write_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="materialize the assets first"):
        CartoStore(tmp_path / "none.duckdb").query("SELECT 1")
