"""A partition's results as a folder of Parquet tables and a summary, written whole or not at all.

A partition that runs in its own process (an ``activations`` shard, a ``concept_graph_chunk``)
never writes the study database (one writer per file): it writes its folder under the study's
data folder, which a later asset reads back::

    <folder>/<table>.parquet   one file per table of the layout
    <folder>/summary.json      the partition's record (a pydantic model), written last

The folder is built under a temporary name and renamed over the previous one
(:func:`carto_assets.storage.atomic.replacing`), so a writer killed midway leaves the previous
complete folder readable; inside it the summary is written last, so a folder with a summary is
complete even where a folder is not renamed in one step (the commit marker a bucket would use).

A :class:`PartitionLayout` declares a folder's tables once, each file by the declared table
(:mod:`carto_assets.schema`) its rows are, and the summary's type; writers and readers name
tables through it, so a name outside the layout is refused. No dagster, no torch here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import polars as pl
from pydantic import BaseModel

from carto_assets import schema
from carto_assets.storage import atomic

SUMMARY = "summary.json"

Summary = TypeVar("Summary", bound=BaseModel)


class IncompleteFolder(FileNotFoundError):
    """A partition folder without its summary or one of its required tables: never finished,
    or written by a version with other tables."""


@dataclass(frozen=True)
class PartitionLayout(Generic[Summary]):
    """What a partition folder holds: its tables and its summary's type.

    ``tables`` maps each file's name (``<name>.parquet``) to the declared table its rows are
    (:func:`carto_assets.schema.table`), or to ``None`` for a frame that is not a database
    table (kept for the merge's metadata). ``optional`` tables may be absent from a complete
    folder (a feature turned off); every other table is required.
    """

    tables: Mapping[str, str | None]
    summary: type[Summary]
    optional: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for declared in self.tables.values():
            if declared is not None:
                schema.table(declared)  # raises for a table the schema does not declare
        self._known(self.optional)

    @property
    def required(self) -> list[str]:
        return [name for name in self.tables if name not in self.optional]

    def _known(self, names: Iterable[str]) -> list[str]:
        names = list(names)
        unknown = [n for n in names if n not in self.tables]
        if unknown:
            raise ValueError(
                f"{unknown} are not tables of a {self.summary.__name__} folder; "
                f"its tables: {', '.join(self.tables)}"
            )
        return names

    def path(self, folder: Path, name: str) -> Path:
        """The file of table ``name`` in ``folder``."""
        self._known([name])
        return Path(folder) / f"{name}.parquet"

    def write(self, folder: Path, tables: Mapping[str, pl.DataFrame], summary: Summary) -> Path:
        """Write ``tables`` (every required one, any optional ones) and ``summary`` as
        ``folder``, replacing the previous folder whole; returns ``folder``."""
        self._known(tables)
        missing = [n for n in self.required if n not in tables]
        if missing:
            raise ValueError(f"a {self.summary.__name__} folder needs the tables {missing}")
        if not isinstance(summary, self.summary):
            raise TypeError(f"expected a {self.summary.__name__}, got {type(summary).__name__}")
        with atomic.replacing(folder) as tmp:
            tmp.mkdir()
            for name, frame in tables.items():
                frame.write_parquet(tmp / f"{name}.parquet")
            (tmp / SUMMARY).write_text(summary.model_dump_json(indent=2))
        return Path(folder)

    def read_summary(self, folder: Path) -> Summary | None:
        """The folder's summary; ``None`` where it has none (never finished). A summary that
        does not validate raises a ``ValueError``."""
        try:
            text = (Path(folder) / SUMMARY).read_text()
        except FileNotFoundError:
            return None
        return self.summary.model_validate_json(text)

    def missing(self, folder: Path) -> list[str]:
        """What a complete folder would have that ``folder`` lacks: the summary and the
        required tables' names."""
        folder = Path(folder)
        absent = [] if (folder / SUMMARY).is_file() else [SUMMARY]
        return absent + [n for n in self.required if not self.path(folder, n).is_file()]

    def is_complete(self, folder: Path) -> bool:
        return not self.missing(folder)

    def read(self, folder: Path, names: Iterable[str] | None = None) -> dict[str, pl.DataFrame]:
        """The tables ``names`` (default: every table) of a complete folder, by name; an
        optional table the folder lacks is left out. Raises :class:`IncompleteFolder` for a
        folder that is not complete, ``ValueError`` for a name outside the layout."""
        wanted = self._known(self.tables if names is None else names)
        missing = self.missing(folder)
        if missing:
            raise IncompleteFolder(
                f"{folder} is not a complete partition (no {', '.join(missing)})"
            )
        paths = {name: self.path(folder, name) for name in wanted}
        return {name: pl.read_parquet(p) for name, p in paths.items() if p.is_file()}
