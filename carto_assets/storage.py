"""DuckDB and Parquet storage with atomic replacement.

Every table an asset writes is replaced inside one transaction, so a re-run never duplicates
rows and a run killed midway leaves the previous materialization readable. Per-shard outputs
are Parquet files written to a temporary name and renamed into place, so partitions can run in
parallel processes without touching the database (DuckDB allows one writing process per file).

This module never imports dagster.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import duckdb
import polars as pl


class DatabaseLockedError(RuntimeError):
    """Another process holds the DuckDB file."""


class CartoStore:
    """The study's DuckDB database: atomic table replacement and SQL reads.

    Parameters
    ----------
    database_path
        The ``.duckdb`` file; its folder is created on first write.
    lock_timeout_s
        How long to wait for another process to release the file before failing.
    """

    def __init__(self, database_path: str | Path, lock_timeout_s: float = 30.0) -> None:
        self.database_path = Path(database_path)
        self.lock_timeout_s = lock_timeout_s

    @contextlib.contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open a short-lived connection, waiting while another process holds the file."""
        if read_only and not self.database_path.exists():
            raise FileNotFoundError(
                f"database {self.database_path} does not exist yet; materialize the assets first"
            )
        self.database_path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                con = duckdb.connect(str(self.database_path), read_only=read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    if "lock" in str(exc).lower():
                        raise DatabaseLockedError(
                            f"{self.database_path} is held by another process "
                            f"(DuckDB allows one writer per file; close other sessions): {exc}"
                        ) from exc
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        try:
            yield con
        finally:
            con.close()

    def replace_tables(
        self,
        tables: Mapping[str, pl.DataFrame | str],
        views: Mapping[str, str] | None = None,
    ) -> dict[str, int]:
        """Replace tables (DataFrames or SELECT statements) and views in ONE transaction.

        Returns the row count of every table written.
        """
        counts: dict[str, int] = {}
        with self.connect() as con:
            run = lambda sql: con.execute(sql).fetchall()  # noqa: E731 - duckdb 2 wants results drained
            run("BEGIN TRANSACTION")
            try:
                for name, data in tables.items():
                    if isinstance(data, pl.DataFrame):
                        con.register("_carto_incoming", data)
                        run(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM _carto_incoming')
                        con.unregister("_carto_incoming")
                    else:
                        run(f'CREATE OR REPLACE TABLE "{name}" AS {data}')
                    counts[name] = run(f'SELECT count(*) FROM "{name}"')[0][0]
                for name, select in (views or {}).items():
                    run(f'CREATE OR REPLACE VIEW "{name}" AS {select}')
                run("COMMIT")
            except BaseException:
                run("ROLLBACK")
                raise
        return counts

    def query(self, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
        """Run a read query and return a polars DataFrame."""
        with self.connect(read_only=True) as con:
            return con.sql(sql, params=params).pl() if params else con.sql(sql).pl()

    def table_exists(self, name: str) -> bool:
        if not self.database_path.exists():
            return False
        with self.connect(read_only=True) as con:
            row = con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
            ).fetchone()
        return bool(row and row[0])

    def column_schema(self, name: str) -> list[tuple[str, str]]:
        """(column, type) pairs of a table or view."""
        with self.connect(read_only=True) as con:
            rows = con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = ? ORDER BY ordinal_position",
                [name],
            ).fetchall()
        return [(r[0], r[1]) for r in rows]


def write_parquet_atomic(df: pl.DataFrame, path: str | Path) -> Path:
    """Write ``df`` via a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.write_parquet(tmp)
    os.replace(tmp, path)
    return path


def sql_path_list(paths: list[Path]) -> str:
    """A DuckDB list literal of file paths, quoted safely."""
    quoted = ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths)
    return f"[{quoted}]"
