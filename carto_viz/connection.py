"""A read-only connection to a study's published database, for the modules that read it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import duckdb

from carto_assets.storage.store import DEFAULT_MEMORY_LIMIT, CartoStore


@contextlib.contextmanager
def attached_store(
    database_path: str | Path, memory_limit: str = DEFAULT_MEMORY_LIMIT
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to the published study database (the store's own reader), for a
    ``with`` block.

    Raises
    ------
    ValueError
        If the file does not exist.
    """
    path = Path(database_path)
    if not path.is_file():
        raise ValueError(f"database {str(path)!r} does not exist; materialize the assets first")
    with CartoStore(path, memory_limit=memory_limit).connect() as con:
        yield con
