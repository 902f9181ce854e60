"""Study-level quality figures: each written once, by the asset that measured it, to the
``study_quality`` table.

A figure is one number an asset measured about the whole study (or one layer of it): LSH pair
recall, the clusters' concept gain, the Spearman correlation of edge weight with ablation drop, a
dictionary's FVU. The asset that measures it writes it here, in the same database snapshot as its
tables (:meth:`carto_assets.storage.store.CartoStore.replace_tables` with ``figures=``); everyone
else reads it from the table:

- the page header (:func:`carto_viz.summary.study_summary`) shows the *headline* figures (those
  with a ``name``), each with the asset that measured it;
- ``carto run`` prints the same headline figures in its summary;
- the Dagster metadata of the measuring asset is built from the rows it just wrote
  (:func:`metadata`), under the keys the UI always showed.

``export_views`` on a database alone therefore shows every figure; nothing is recomputed from
the tables or read back from the Dagster instance.

No dagster, no torch here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import polars as pl

from carto_assets import schema

TABLE = "study_quality"

#: The assets that write figures, in pipeline order: the order the header lists them in.
ASSET_ORDER = (
    "images",
    "model",
    "dictionary",
    "cluster_quality",
    "unit_labels",
    "neuron_embedding",
    "concept_graph",
)


@dataclass(frozen=True)
class Figure:
    """One measured figure.

    Attributes
    ----------
    figure
        Its key, stable across runs (``pair_recall``, ``concept_cluster_gain``): the Dagster
        metadata key and what SQL selects on.
    value
        The number (NaN where there was nothing to measure, e.g. no multi-unit cluster).
    definition
        What it measures, in one sentence (shown in docs and SQL, not in the header).
    name
        The header's label; empty for figures that are only stored (per-layer detail, counts).
    shown
        The value as the header and ``carto run`` show it; empty: the value with 3 significant
        digits.
    layer
        The layer (or feature pseudo-layer) a per-layer figure is about; None for the study.
    """

    figure: str
    value: float
    definition: str
    name: str = ""
    shown: str = ""
    layer: str | None = None

    def __post_init__(self) -> None:
        if not self.figure or not self.definition:
            raise ValueError("a figure needs a key and a definition")
        if self.name and self.layer is not None:
            raise ValueError(f"figure {self.figure!r}: headline figures are study-level")


def figure_frame(asset: str, figures: Sequence[Figure]) -> pl.DataFrame:
    """The ``study_quality`` rows of ``figures`` measured by ``asset``, in their order."""
    keys = [(f.figure, f.layer) for f in figures]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1}, key=str)
        raise ValueError(f"asset {asset!r} gives figure(s) {dup} twice")
    return schema.frame(
        TABLE,
        {
            "asset": [asset] * len(figures),
            "figure": [f.figure for f in figures],
            "layer": [f.layer for f in figures],
            "value": [float(f.value) for f in figures],
            "name": [f.name for f in figures],
            "shown": [f.shown or _format(f.value) for f in figures],
            "definition": [f.definition for f in figures],
            "position": list(range(len(figures))),
        },
    )


def _format(value: float) -> str:
    if value != value:
        return "n/a"
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.3g}"


def ordered(rows: pl.DataFrame) -> pl.DataFrame:
    """``study_quality`` rows in pipeline order (:data:`ASSET_ORDER`), then as written."""
    rank = {a: i for i, a in enumerate(ASSET_ORDER)}
    return (
        rows.with_columns(
            _rank=pl.col("asset").replace_strict(rank, default=len(rank), return_dtype=pl.Int32)
        )
        .sort("_rank", "asset", "position")
        .drop("_rank")
    )


def headline(rows: pl.DataFrame | None) -> list[dict[str, str]]:
    """The figures the header and ``carto run`` show: ``{"figure", "value", "asset",
    "definition"}`` each, in pipeline order (plain text; the page draws it with
    ``textContent``, one line per figure, the definition on hover)."""
    if rows is None or rows.height == 0:
        return []
    shown = ordered(rows.filter(pl.col("name") != ""))
    return [
        {
            "figure": r["name"],
            "value": r["shown"],
            "asset": r["asset"],
            "definition": r["definition"],
        }
        for r in shown.iter_rows(named=True)
    ]


def metadata(rows: pl.DataFrame, asset: str) -> dict[str, object]:
    """Dagster metadata of ``asset``'s figures: study-level figures under their key (rounded to
    4 decimals), per-layer figures as one ``{layer: value}`` mapping per key."""
    mine = rows.filter(pl.col("asset") == asset).sort("position")
    out: dict[str, object] = {}
    for r in mine.iter_rows(named=True):
        value = r["value"]
        value = round(value, 4) if isinstance(value, float) and math.isfinite(value) else value
        if r["layer"] is None:
            out[r["figure"]] = value
        else:
            out.setdefault(r["figure"], {})[r["layer"]] = value  # type: ignore[index]
    return out


def figures_of(rows: pl.DataFrame, asset: str | None = None) -> dict[tuple[str, str | None], float]:
    """``(figure, layer) -> value`` of one asset's rows (every asset's when None)."""
    part = rows if asset is None else rows.filter(pl.col("asset") == asset)
    return {(r["figure"], r["layer"]): r["value"] for r in part.iter_rows(named=True)}


def per_layer(
    figure: str,
    values: dict[str, float],
    definition: str,
) -> Iterable[Figure]:
    """One per-layer :class:`Figure` per ``layer -> value`` entry."""
    for layer, value in values.items():
        yield Figure(figure, float(value), definition, layer=layer)
