"""DuckDB and Parquet storage: published database snapshots, atomic Parquet files.

Readers never block a run and never see a half-written state. DuckDB allows one writing
process per file and a read-only connection in another process (a notebook, the DuckDB CLI)
holds a lock that makes a writer fail. So nothing ever writes the published database file:

* every write (one asset's tables) copies the published file to a private temporary file
  beside it, writes there, checkpoints, and renames the copy over the published file
  (``os.replace``, atomic on POSIX). A reader that has the old file open keeps reading the
  snapshot it opened (its file handle still points at the old file); every new connection sees
  the new one. A writer killed midway leaves only a temporary file, removed by the next write;
* writers take an exclusive lock on ``<database>.lock`` (``flock``, released by the kernel if
  the process dies) and record who they are in it, so two writers never race and a second
  ``carto run`` on the same study fails at once naming the first;
* reads ``ATTACH`` the published file read-only from a fresh in-memory connection, so a
  process never reuses a DuckDB instance cached for a file that has since been replaced.

Per-shard outputs are Parquet files written to a temporary name and renamed into place, so
partitions can run in parallel processes without touching the database.

This module never imports dagster.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from carto_assets import schema
from carto_assets.runtime import environment
from carto_assets.storage import atomic, quality


class DatabaseBusyError(RuntimeError):
    """Another run (process) is writing the study database; the message names it."""


def describe_writer(label: str | None = None) -> str:
    """Who this process is, for the lock record: a label, the pid, host and start time."""
    label = (
        label or "`" + " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv)) + "`"
    )
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{label} (pid {os.getpid()} on {socket.gethostname()}, since {now})"


@dataclass
class PublishStats:
    """What publishing snapshots cost this process: the price of never writing in place."""

    writes: int = 0
    #: Seconds spent copying the published file, syncing the copy and renaming it into place.
    seconds: float = 0.0
    #: Bytes copied.
    bytes_copied: int = 0


#: Totals for this process (see :class:`PublishStats`); ``carto run`` reports them.
PUBLISH_STATS = PublishStats()

#: DuckDB's memory limit for a store's connections (the study's ``database_memory_limit``);
#: why this size: :data:`carto_assets.runtime.environment.DEFAULT_MEMORY_LIMIT`.
DEFAULT_MEMORY_LIMIT = environment.DEFAULT_MEMORY_LIMIT


def duckdb_config(memory_limit: str, spill_dir: Path) -> dict[str, str]:
    """Connection settings: the memory limit, and where larger intermediates spill."""
    return {"memory_limit": memory_limit, "temp_directory": str(spill_dir)}


@dataclass
class _Held:
    fd: int
    owner: str
    depth: int


#: Writer locks this process holds, by lock path: re-entrant within a process (``carto run``
#: holds the lock for the whole run while its in-process asset steps write).
_HELD: dict[str, _Held] = {}


def lock_path(database_path: str | Path) -> Path:
    """The lock file of a database: ``<database>.lock``."""
    db = Path(database_path).resolve()
    return db.with_name(db.name + ".lock")


def current_writer(database_path: str | Path) -> str | None:
    """The holder recorded in the lock file, or None when no process holds it."""
    path = lock_path(database_path)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_owner(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_owner(path: Path) -> str:
    try:
        record = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        record = {}
    return record.get("owner") or "another process (it did not record its name)"


@contextlib.contextmanager
def exclusive_writer(
    database_path: str | Path, owner: str | None = None, wait_s: float = 0.0
) -> Iterator[str]:
    """Hold the database's writer lock; yields the owner string recorded in it.

    Parameters
    ----------
    database_path
        The study database.
    owner
        Who holds it (see :func:`describe_writer`); shown to anyone who finds it held.
    wait_s
        How long to wait for another holder to finish before raising.

    Raises
    ------
    DatabaseBusyError
        Naming the holder, when another process holds the lock for longer than ``wait_s``.
    """
    path = lock_path(database_path)
    held = _HELD.get(str(path))
    if held is not None:
        held.depth += 1
        try:
            yield held.owner
        finally:
            held.depth -= 1
        return
    owner = owner or describe_writer()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise DatabaseBusyError(
                    f"{Path(database_path)} is being written by another run: "
                    f"{_read_owner(path)}. Wait for it to finish (or stop it) and run again; "
                    "readers are never the cause (they do not take this lock)"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"owner": owner, "pid": os.getpid()}).encode(), 0)
    _HELD[str(path)] = _Held(fd=fd, owner=owner, depth=1)
    try:
        yield owner
    finally:
        del _HELD[str(path)]
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _remove_stale_spills(db: Path) -> None:
    """Spill folders of processes that no longer exist (DuckDB removes its own on close)."""
    for folder in db.parent.glob(f".{db.name}.*.spill"):
        pid = folder.name[len(db.name) + 2 : -len(".spill")]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CartoStore:
    """The study's DuckDB database: published snapshots, atomic table replacement, SQL reads.

    Parameters
    ----------
    database_path
        The ``.duckdb`` file; its folder is created on first write.
    lock_timeout_s
        How long a write waits for another writer (e.g. a parallel step of the same run) to
        publish before failing with :class:`DatabaseBusyError` naming it.
    owner
        How this writer names itself to others (default: the command line and pid).
    memory_limit
        DuckDB's memory limit for every connection (e.g. ``"2GB"``; default
        :data:`DEFAULT_MEMORY_LIMIT`); sorts, joins and aggregates beyond it spill to a
        temporary folder beside the database.
    """

    def __init__(
        self,
        database_path: str | Path,
        lock_timeout_s: float = 60.0,
        owner: str | None = None,
        memory_limit: str = DEFAULT_MEMORY_LIMIT,
    ) -> None:
        self.database_path = Path(database_path)
        self.lock_timeout_s = lock_timeout_s
        self.owner = owner
        self.memory_limit = memory_limit

    def _config(self) -> dict[str, str]:
        db = self.database_path.resolve()
        return duckdb_config(self.memory_limit, db.with_name(f".{db.name}.{os.getpid()}.spill"))

    @contextlib.contextmanager
    def connect(self, read_only: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived read-only connection to the published snapshot.

        The file is attached to a fresh in-memory database, so a DuckDB instance cached in
        this process for an older, since-replaced file is never reused.
        """
        if not read_only:
            raise ValueError("CartoStore.connect is read-only; write with CartoStore.write()")
        if not self.database_path.exists():
            raise FileNotFoundError(
                f"database {self.database_path} does not exist yet; materialize the assets first"
            )
        con = duckdb.connect(":memory:", config=self._config())
        try:
            path = str(self.database_path.resolve()).replace("'", "''")
            con.execute(f"ATTACH '{path}' AS carto (READ_ONLY)").fetchall()
            con.execute("USE carto").fetchall()
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to a private copy of the database, published when the block succeeds.

        The copy replaces the published file atomically (``os.replace``); on an exception it is
        discarded and the published file is untouched.
        """
        db = self.database_path.resolve()
        with exclusive_writer(db, self.owner, self.lock_timeout_s):
            db.parent.mkdir(parents=True, exist_ok=True)
            # Only the lock holder writes copies: any left over are from a killed writer.
            for stale in db.parent.glob(f".{db.name}.*.tmp*"):
                stale.unlink(missing_ok=True)
            _remove_stale_spills(db)
            tmp = atomic.temporary(db)
            wal = db.with_name(db.name + ".wal")
            start = time.perf_counter()
            con = None
            try:
                if db.exists():
                    shutil.copyfile(db, tmp)
                    PUBLISH_STATS.bytes_copied += tmp.stat().st_size
                    if wal.exists():  # left by a writer of an older version: replay it
                        shutil.copyfile(wal, tmp.with_name(tmp.name + ".wal"))
                copied = time.perf_counter() - start
                con = duckdb.connect(str(tmp), config=self._config())
                yield con
                con.execute("CHECKPOINT").fetchall()
                con.close()
                start = time.perf_counter()
                _fsync(tmp)
            except BaseException:
                # A full disk can fail the copy, the writes or the checkpoint: the published
                # file is untouched either way, and the partial copy goes.
                if con is not None:
                    con.close()
                for p in (tmp, tmp.with_name(tmp.name + ".wal")):
                    p.unlink(missing_ok=True)
                raise
            wal.unlink(missing_ok=True)
            os.replace(tmp, db)
            _fsync(db.parent)
            PUBLISH_STATS.writes += 1
            PUBLISH_STATS.seconds += copied + time.perf_counter() - start

    def replace_tables(
        self,
        tables: Mapping[str, pl.DataFrame | str],
        views: Mapping[str, str] | None = None,
        drop: Iterable[str] = (),
        figures: tuple[str, Sequence[quality.Figure]] | None = None,
    ) -> dict[str, int]:
        """Replace tables (DataFrames or SELECT statements) and views, published at once.

        ``drop`` names tables to remove if they exist. ``figures`` is ``(asset, figures)``:
        the quality figures ``asset`` measured replace its rows of ``study_quality`` (see
        :mod:`carto_assets.storage.quality`) in the same snapshot. Returns the row count of every
        table written. A table or view declared in :mod:`carto_assets.schema` must come out
        with exactly its declared columns and types, or nothing is published
        (:class:`~carto_assets.schema.SchemaError`).
        """
        counts: dict[str, int] = {}
        with self.write() as con:
            run = lambda sql: con.execute(sql).fetchall()  # noqa: E731 - duckdb 2 wants results drained
            for name, data in tables.items():
                if isinstance(data, pl.DataFrame):
                    con.register("_carto_incoming", data)
                    run(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM _carto_incoming')
                    con.unregister("_carto_incoming")
                else:
                    run(f'CREATE OR REPLACE TABLE "{name}" AS {data}')
                _check_declared(con, name)
                counts[name] = run(f'SELECT count(*) FROM "{name}"')[0][0]
            for name, select in (views or {}).items():
                run(f'CREATE OR REPLACE VIEW "{name}" AS {select}')
                _check_declared(con, name)
            for name in drop:
                run(f'DROP TABLE IF EXISTS "{name}"')
            if figures is not None:
                asset, rows = figures
                con.register("_carto_incoming", quality.figure_frame(asset, rows))
                run(
                    f'CREATE TABLE IF NOT EXISTS "{quality.TABLE}" AS '
                    "SELECT * FROM _carto_incoming LIMIT 0"
                )
                con.execute(f'DELETE FROM "{quality.TABLE}" WHERE asset = ?', [asset]).fetchall()
                run(f'INSERT INTO "{quality.TABLE}" SELECT * FROM _carto_incoming')
                con.unregister("_carto_incoming")
                _check_declared(con, quality.TABLE)
        return counts

    def figures(self) -> pl.DataFrame:
        """Every ``study_quality`` row (an empty frame before any asset wrote one)."""
        if not self.table_exists(quality.TABLE):
            return schema.empty_frame(quality.TABLE)
        return self.query(f'SELECT * FROM "{quality.TABLE}"')

    def query(self, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
        """Run a read query and return a polars DataFrame."""
        with self.connect() as con:
            return con.sql(sql, params=params).pl() if params else con.sql(sql).pl()

    def columns(self, name: str) -> set[str]:
        """The column names of table ``name`` (empty where there is no such table)."""
        if not self.database_path.exists():
            return set()
        with self.connect() as con:
            rows = con.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_catalog = 'carto' AND table_name = ?",
                [name],
            ).fetchall()
        return {row[0] for row in rows}

    def table_exists(self, name: str) -> bool:
        """Whether table (or view) ``name`` exists: it has columns."""
        return bool(self.columns(name))

    def column_schema(self, name: str) -> list[tuple[str, str]]:
        """(column, type) pairs of a table or view."""
        with self.connect() as con:
            rows = con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_catalog = 'carto' AND table_name = ? ORDER BY ordinal_position",
                [name],
            ).fetchall()
        return [(r[0], r[1]) for r in rows]


def _check_declared(con: duckdb.DuckDBPyConnection, name: str) -> None:
    if name in schema.TABLES:
        schema.check_columns(name, schema.describe(con, name))


def write_parquet_atomic(df: pl.DataFrame, path: str | Path) -> Path:
    """Write ``df`` via a temporary file and a rename, so readers never see half a file."""
    with atomic.replacing(path) as tmp:
        df.write_parquet(tmp)
    return Path(path)


def sql_path_list(paths: list[Path]) -> str:
    """A DuckDB list literal of file paths, quoted safely."""
    quoted = ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths)
    return f"[{quoted}]"
