"""Atomic replacement: no duplicates on re-run; a failed write leaves the previous table."""

import os

import polars as pl
import pytest

from carto_assets.storage.store import CartoStore, write_parquet_atomic


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


# ---- readers never block a writer; writers publish whole snapshots --------------------------
READER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
for line in sys.stdin:
    print(con.execute(line).fetchall(), flush=True)
"""


class Reader:
    """A read-only DuckDB session held open in another process (like a notebook)."""

    def __init__(self, db):
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, "-c", READER, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, sql: str) -> str:
        self.proc.stdin.write(sql + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def test_a_reader_in_another_process_keeps_its_snapshot_and_never_blocks(tmp_path):
    db = tmp_path / "r.duckdb"
    store = CartoStore(db)
    store.replace_tables({"t": pl.DataFrame({"a": [1, 2]}), "u": pl.DataFrame({"b": [10]})})
    reader = Reader(db)
    try:
        query = "SELECT (SELECT sum(a) FROM t), (SELECT sum(b) FROM u)"
        assert reader.ask(query) == "[(3, 10)]"
        store.replace_tables({"t": pl.DataFrame({"a": [5, 6, 7]})}, drop=["u"])
        # The open session still sees the whole snapshot it opened; new connections the new one.
        assert reader.ask(query) == "[(3, 10)]"
        assert store.query("SELECT sum(a) AS s FROM t")["s"][0] == 18
        assert not store.table_exists("u")
    finally:
        reader.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.duckdb", "r.duckdb.lock"]


def test_reads_in_this_process_see_a_replaced_file(tmp_path):
    """DuckDB caches one instance per path per process; the store's reads must not reuse it."""
    import duckdb

    db = tmp_path / "c.duckdb"
    store = CartoStore(db)
    store.replace_tables({"t": pl.DataFrame({"a": [1]})})
    held = duckdb.connect(str(db), read_only=True)  # e.g. a notebook cell in this process
    store.replace_tables({"t": pl.DataFrame({"a": [2]})})
    assert store.query("SELECT a FROM t")["a"].to_list() == [2]
    assert held.execute("SELECT a FROM t").fetchall() == [(1,)]
    held.close()


def test_a_writer_killed_before_publishing_leaves_the_previous_snapshot(tmp_path):
    import subprocess
    import sys

    db = tmp_path / "k2.duckdb"
    CartoStore(db).replace_tables({"t": pl.DataFrame({"a": [1, 2]})})
    script = f"""
import os
from carto_assets.storage.store import CartoStore
with CartoStore({str(db)!r}).write() as con:
    con.execute("CREATE OR REPLACE TABLE t AS SELECT range AS a FROM range(100000)")
    os._exit(9)  # killed before the copy is renamed into place
"""
    assert subprocess.run([sys.executable, "-c", script], check=False).returncode == 9
    assert CartoStore(db).query("SELECT count(*) AS n FROM t")["n"][0] == 2
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # the killed writer's copy
    CartoStore(db).replace_tables({"v": pl.DataFrame({"b": [1]})})  # the next write cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k2.duckdb", "k2.duckdb.lock"]


def test_a_second_writer_is_told_who_holds_the_study(tmp_path):
    import subprocess
    import sys

    from carto_assets.storage.store import DatabaseBusyError, current_writer, exclusive_writer

    db = tmp_path / "w.duckdb"
    script = f"""
import sys
from carto_assets.storage.store import exclusive_writer
with exclusive_writer({str(db)!r}, "`carto run` of study 'w' (pid 4242)"):
    print("held", flush=True)
    sys.stdin.readline()
"""
    holder = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert "carto run` of study 'w'" in current_writer(db)
        with pytest.raises(DatabaseBusyError, match=r"being written by another run: `carto run`"):
            CartoStore(db, lock_timeout_s=0.2).replace_tables({"t": pl.DataFrame({"a": [1]})})
        assert not db.exists()  # nothing was written
    finally:
        holder.kill()  # a killed holder's lock is released by the kernel
        holder.wait(timeout=30)
    assert current_writer(db) is None
    with exclusive_writer(db, "me"), exclusive_writer(db, "me again"):  # re-entrant in a process
        CartoStore(db).replace_tables({"t": pl.DataFrame({"a": [1]})})
    assert CartoStore(db).query("SELECT a FROM t")["a"].to_list() == [1]


# ---- DuckDB's memory is bounded: larger work spills beside the database ----------------------
def test_connections_take_the_memory_limit_and_spill_beside_the_database(tmp_path):
    db = tmp_path / "m.duckdb"
    # A sort of ~300 MB of rows under a 128 MB limit: it spills, finishes, and cleans up.
    # (Under 64 MB DuckDB 1.x sometimes fails to pin a block with two threads: 1 run in 4.)
    store = CartoStore(db, memory_limit="128MB")
    counts = store.replace_tables(
        {"t": "SELECT range AS a, md5(range::VARCHAR) AS b FROM range(3000000) ORDER BY b"}
    )
    assert counts == {"t": 3_000_000}
    with store.connect() as con:
        limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    assert limit == "122.0 MiB"  # 128 MB in DuckDB's units
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.duckdb", "m.duckdb.lock"]


def test_a_killed_process_spill_folder_is_removed_by_the_next_write(tmp_path):
    db = tmp_path / "s.duckdb"
    store = CartoStore(db)
    store.replace_tables({"t": pl.DataFrame({"a": [1]})})
    dead = tmp_path / ".s.duckdb.999999999.spill"  # no such pid
    dead.mkdir()
    (dead / "duckdb_temp_block").write_bytes(b"x")
    live = tmp_path / f".s.duckdb.{os.getpid()}.spill"  # a live process's: left alone
    live.mkdir()
    store.replace_tables({"t": pl.DataFrame({"a": [2]})})
    assert not dead.exists() and live.exists()
