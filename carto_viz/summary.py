"""The header's study summary: what was mapped and the quality figures, as plain text rows."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from carto_assets.storage import quality


def neurons_with_kind(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    """``neurons`` with ``kind`` and ``channel`` (all channels, no index, where absent)."""
    neurons = tables["neurons"]
    if "kind" not in neurons.columns:
        neurons = neurons.with_columns(kind=pl.lit("channel"))
    if "channel" not in neurons.columns:
        neurons = neurons.with_columns(channel=pl.lit(None, pl.Int32))
    return neurons


def study_summary(
    tables: Mapping[str, pl.DataFrame], study_info: Mapping[str, object] | None = None
) -> dict:
    """The page header: what was mapped and how good the result is.

    Counts come from the tables; ``study_info`` adds what only the study knows (``name``,
    ``model``, ``weights``, ``dataset``). The quality figures are the headline rows of
    ``study_quality``, each written by the asset that measured it
    (:mod:`carto_assets.storage.quality`).
    A study with dictionary features counts its units by kind ("240 channels + 1,024
    features") and its layers without the feature pseudo-layers.
    Every value is plain text; the page shows it with ``textContent``.
    """
    info = dict(study_info or {})
    images = tables.get("image_count")
    n_images = int(images["n"][0]) if images is not None else None
    clusters = tables["clusters"]
    neurons = neurons_with_kind(tables)
    counts = dict(neurons.group_by("kind").len().iter_rows())
    units = f"{neurons.height:,}"
    if counts.get("feature"):
        units = f"{counts.get('channel', 0):,} channels + {counts['feature']:,} features"
    # Feature pseudo-layers are not layers of the model.
    model_layers = neurons.filter(pl.col("kind") == "channel") if counts.get("channel") else neurons
    layers = model_layers.select("layer", "layer_index").unique().sort("layer_index")
    n_multi = clusters.filter(pl.col("size") >= 2).height
    facts = [
        ["model", " · ".join(str(info[k]) for k in ("model", "weights") if info.get(k))],
        ["dataset", str(info.get("dataset") or "")],
        ["images", f"{n_images:,}" if n_images is not None else ""],
        ["classes", f"{tables['images'].height:,}"],
        [
            "layers",
            f"{layers.height} ({', '.join(layers['layer'].head(4).to_list())}"
            + (", …)" if layers.height > 4 else ")"),
        ],
        ["neurons", units],
        ["clusters", f"{clusters.height:,} ({n_multi:,} with 2+ neurons)"],
    ]
    figures = quality.headline(tables.get(quality.TABLE))
    return {
        "title": str(info.get("name") or "Cartography study"),
        "facts": [[k, v] for k, v in facts if v],
        "quality": figures,
    }
