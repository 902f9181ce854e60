"""A user's own per-image annotations (the study's ``annotations`` file), read and checked.

The file is a CSV (UTF-8) or Parquet table: a column ``path`` names each image by its path
inside the image folder (``images.source``: ``cat/001.jpg``; ``shapes:17`` for the built-in
world), every other column is a concept (its name: ``weather``) whose cells are the image's
values (``snow``); a cell may hold several values separated by ``|`` (``snow|fog``), an empty
cell holds none. Every problem is one :class:`AnnotationError` line naming the file, what is
wrong and the fix; ``carto check`` prints it, the ``images`` asset raises it.

No dagster, no torch here.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

#: The column that names the image of a row.
PATH_COLUMN = "path"
#: Separates several values of one cell.
VALUE_SEPARATOR = "|"
#: Concepts every study annotates itself: a user's column may not take these names.
CLASS_CONCEPT = "class"


class AnnotationError(ValueError):
    """The annotation table cannot be used, in one line."""


@dataclass(frozen=True)
class UserAnnotations:
    """The user's table as ``image_annotations`` rows, with what it leaves out."""

    #: ``image_id, concept, value`` (int64, str, str), one row per value of a cell
    rows: pl.DataFrame
    #: the user's concepts (the table's columns besides ``path``), in the file's order
    concepts: tuple[str, ...]
    #: images of the study with no value in the table (not listed, or only empty cells)
    n_unannotated: int
    n_images: int


def _cells(frame: pl.DataFrame) -> pl.DataFrame:
    """Every column as text, stripped; nulls as empty text. A list cell (a Parquet list column:
    several values of the image) becomes its values joined by ``|``."""

    def text(name: str) -> pl.Expr:
        column = pl.col(name)
        if isinstance(frame.schema[name], pl.List):
            column = column.list.eval(pl.element().cast(pl.Utf8)).list.join(VALUE_SEPARATOR)
        return column.cast(pl.Utf8).fill_null("").str.strip_chars().alias(name)

    try:
        return frame.select(text(c) for c in frame.columns)
    except pl.exceptions.PolarsError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AnnotationError(
            f"annotations: a column is not text or a list of text: {first}"
        ) from None


def _read_csv(path: Path) -> pl.DataFrame:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AnnotationError(
            f"annotations file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at "
            f"offset {exc.start}); save it as UTF-8"
        ) from None
    if not data.strip():
        raise AnnotationError(
            f"annotations file {path} has no rows; give one row per image: a `path` column "
            "and one column per concept"
        )
    header = next(csv.reader(io.StringIO(data.decode("utf-8").lstrip("\ufeff"))), [])
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise AnnotationError(
            f"annotations file {path} names the column(s) {repeated} more than once; give each "
            "concept one column (several values go in one cell, separated by |)"
        )
    try:
        return pl.read_csv(data, infer_schema=False)
    except pl.exceptions.PolarsError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AnnotationError(f"annotations file {path} is not a readable CSV: {first}") from None


def first_row(path: str | Path) -> int:
    """The number an error gives the table's first row: 2 in a CSV file (its line: the header
    is line 1), 1 in a Parquet file (no header row)."""
    return 1 if Path(path).suffix.lower() == ".parquet" else 2


def _read_parquet(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AnnotationError(
            f"annotations file {path} is not a readable Parquet file: {first}"
        ) from None


def _clean_path(text: str) -> str:
    text = text.replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return text


def read_annotation_table(
    path: str | Path, reserved: Iterable[str] = (CLASS_CONCEPT,)
) -> pl.DataFrame:
    """The file as a text table (``path`` first, then the concepts' columns), checked on its
    own: UTF-8, at least one row, a ``path`` column, each path once, every concept column with
    at least two distinct values, no column named after a concept the study annotates itself
    (``reserved``: the class, the world's concepts). Raises :class:`AnnotationError`."""
    path = Path(path)
    frame = _read_parquet(path) if path.suffix.lower() == ".parquet" else _read_csv(path)
    if PATH_COLUMN not in frame.columns:
        raise AnnotationError(
            f"annotations file {path} has no `{PATH_COLUMN}` column (columns: "
            f"{', '.join(frame.columns) or 'none'}); name the column that holds each image's "
            f"path inside the image folder `{PATH_COLUMN}`"
        )
    if frame.height == 0:
        raise AnnotationError(
            f"annotations file {path} has no rows; give one row per image: a `path` column "
            "and one column per concept"
        )
    frame = _cells(frame)
    frame = frame.with_columns(
        pl.col(PATH_COLUMN).map_elements(_clean_path, return_dtype=pl.Utf8)
    ).select(PATH_COLUMN, *[c for c in frame.columns if c != PATH_COLUMN])
    concepts = frame.columns[1:]
    if not concepts:
        raise AnnotationError(
            f"annotations file {path} has only a `{PATH_COLUMN}` column; add one column per "
            "concept (e.g. weather) holding each image's values"
        )
    blank = [i for i, c in enumerate(concepts) if not c.strip()]
    if blank:
        raise AnnotationError(
            f"annotations file {path}: column {blank[0] + 2} has no name; name every concept "
            "column in the header"
        )
    taken = sorted(set(concepts) & set(reserved))
    if taken:
        raise AnnotationError(
            f"annotations file {path}: column {taken[0]!r} is a concept the study already "
            "annotates (the class, the dataset's ground truth); rename the column"
        )
    paths = frame[PATH_COLUMN]
    if (paths == "").any():
        line = int(np.flatnonzero((paths == "").to_numpy())[0]) + first_row(path)
        raise AnnotationError(
            f"annotations file {path}: row {line} has an empty `{PATH_COLUMN}`; name the image "
            "of every row"
        )
    dup = frame.group_by(PATH_COLUMN, maintain_order=True).len().filter(pl.col("len") > 1)
    if dup.height:
        first = dup[PATH_COLUMN][0]
        lines = (np.flatnonzero((paths == first).to_numpy()) + first_row(path)).tolist()
        raise AnnotationError(
            f"annotations file {path} lists {dup.height} path(s) more than once, the first "
            f"{first!r} (rows {', '.join(map(str, lines[:5]))}); give each image one row "
            f"(several values go in one cell, separated by {VALUE_SEPARATOR})"
        )
    for concept in concepts:
        values = _values(frame[concept])
        distinct = sorted(set(values))
        # A tag column (one value on some rows, empty on others) tells the tagged images from
        # the rest; one value on every row, or none anywhere, tells nothing.
        tagged = sum(any(v.strip() for v in cell.split(VALUE_SEPARATOR)) for cell in frame[concept])
        if len(distinct) == 0 or (len(distinct) == 1 and tagged == frame.height):
            what = f"one value ({distinct[0]!r})" if distinct else "no values"
            raise AnnotationError(
                f"annotations file {path}: column {concept!r} has {what} over all rows, which "
                "tells no images apart; drop the column or give it at least two values"
            )
    return frame


def _values(cells: pl.Series) -> list[str]:
    return [v.strip() for cell in cells.to_list() for v in cell.split(VALUE_SEPARATOR) if v.strip()]


def user_annotations(
    table: pl.DataFrame, path: str | Path, sources: Sequence[str]
) -> UserAnnotations:
    """The checked ``table`` (:func:`read_annotation_table`) as rows over the study's images,
    whose ``images.source`` are ``sources`` (image id = position). Raises
    :class:`AnnotationError` for paths that are not among them."""
    index = {s: i for i, s in enumerate(sources)}
    paths = table[PATH_COLUMN].to_list()
    unknown = [(line, p) for line, p in enumerate(paths, start=first_row(path)) if p not in index]
    if unknown:
        line, first = unknown[0]
        example = f", e.g. {sources[0]!r}" if sources else ""
        raise AnnotationError(
            f"annotations file {path} names {len(unknown)} image(s) that are not among the "
            f"study's {len(sources)} images, the first {first!r} (row {line}); paths are "
            f"relative to the image folder{example}"
        )
    ids = np.array([index[p] for p in paths], dtype=np.int64)
    parts = []
    for concept in table.columns[1:]:
        long = (
            pl.DataFrame({"image_id": ids, "cell": table[concept]})
            .with_columns(pl.col("cell").str.split(VALUE_SEPARATOR))
            .explode("cell")
            .with_columns(pl.col("cell").str.strip_chars())
            .filter(pl.col("cell") != "")
            .select("image_id", pl.lit(concept).alias("concept"), pl.col("cell").alias("value"))
            .unique(maintain_order=True)
        )
        parts.append(long)
    rows = pl.concat(parts).sort("image_id", "concept", "value", maintain_order=True)
    annotated = rows["image_id"].n_unique()
    return UserAnnotations(
        rows=rows,
        concepts=tuple(table.columns[1:]),
        n_unannotated=len(sources) - annotated,
        n_images=len(sources),
    )


def load_user_annotations(
    path: str | Path, sources: Sequence[str], reserved: Iterable[str] = (CLASS_CONCEPT,)
) -> UserAnnotations:
    """:func:`read_annotation_table` then :func:`user_annotations`: the file checked whole."""
    return user_annotations(read_annotation_table(path, reserved), path, sources)
