"""Match shares per pair of layers, and what chance gives (the shuffled-image null).

For a study A and another study B, the share of A's layer-``i`` units whose best match in B is
mutual and lies in B's layer ``j`` (Li et al. 2015 report the diagonal of this matrix for two
seeds). A unit of A matches at most one unit of B mutually, so each row sums to the share of
the layer's units that have a mutual counterpart anywhere in B.

The null relabels B's images with a random permutation (:meth:`UnitSets.relabel_images`):
every unit keeps its set size and B keeps its structure, but what an image is to A no longer
has anything to do with what it is to B; the share that still matches is chance.

Pure numpy and polars; no dagster.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from carto_assets.core.comparison.matching import UnitSets, match_units
from carto_assets.core.similarity.lsh import MinHashLsh, MinHashLshSettings

#: Columns of the layer matrix as :func:`layer_shares` returns them.
KEYS = ["study", "layer", "other_study", "other_layer"]


def layer_shares(units: pl.DataFrame, best: pl.DataFrame) -> pl.DataFrame:
    """Every (study, layer) x (other study, layer) with its counts and share.

    Parameters
    ----------
    units
        ``unit``, ``study``, ``layer``, ``layer_index``: every unit.
    best
        ``unit``, ``match``, ``mutual``: each unit's best match in each other study
        (``match`` -1 for none), as :meth:`BestMatches.frame` gives.

    Returns
    -------
    polars.DataFrame
        ``study, layer, layer_index, other_study, other_layer, other_layer_index, units,
        matched, mutual, share``: ``units`` of the layer; of them, ``matched`` have their best
        match in the other layer and ``mutual`` a mutual one; ``share = mutual / units``.
    """
    layers = units.group_by("study", "layer", "layer_index").agg(units=pl.len())
    others = layers.select(
        other_study="study", other_layer="layer", other_layer_index="layer_index"
    )
    grid = layers.join(others, how="cross").filter(pl.col("study") != pl.col("other_study"))
    target = units.select(match="unit", other_study="study", other_layer="layer")
    counts = (
        best.filter(pl.col("match") >= 0)
        .select("unit", "match", "mutual")
        .join(units.select("unit", "study", "layer"), on="unit")
        .join(target, on="match")
        .group_by("study", "layer", "other_study", "other_layer")
        .agg(matched=pl.len(), mutual=pl.col("mutual").sum())
    )
    return (
        grid.join(counts, on=KEYS, how="left")
        .with_columns(
            units=pl.col("units").cast(pl.Int64),
            matched=pl.col("matched").fill_null(0).cast(pl.Int64),
            mutual=pl.col("mutual").fill_null(0).cast(pl.Int64),
        )
        .with_columns(share=pl.col("mutual") / pl.col("units"))
        .sort("study", "layer_index", "other_study", "other_layer_index")
        .select(
            "study",
            "layer",
            "layer_index",
            "other_study",
            "other_layer",
            "other_layer_index",
            "units",
            "matched",
            "mutual",
            "share",
        )
    )


def shuffled_null(
    units: UnitSets,
    frame: pl.DataFrame,
    *,
    draws: int,
    threshold: float,
    minhash: MinHashLshSettings = MinHashLsh(),
) -> pl.DataFrame:
    """The mean share per layer pair over ``draws`` shuffled-image draws.

    Each draw relabels, for every pair of studies, the second study's images with a random
    permutation and matches the pair again. ``frame`` is the units frame of
    :func:`layer_shares`. Returns ``KEYS + [null_share]``; empty without draws.
    """
    if draws <= 0:
        study = frame.schema["study"]
        return pl.DataFrame(
            schema={
                "study": study,
                "layer": pl.Utf8,
                "other_study": study,
                "other_layer": pl.Utf8,
                "null_share": pl.Float64,
            }
        )
    seed = minhash.seed
    rng = np.random.default_rng([seed, 7])
    n_images = int(units.images.max()) + 1 if units.images.size else 1
    shares = []
    for draw in range(draws):
        for a in range(units.n_studies):
            for b in range(a + 1, units.n_studies):
                rows_ab = np.flatnonzero((units.study == a) | (units.study == b))
                sub = units.rows(rows_ab).relabel_images(b, rng.permutation(n_images))
                # Each draw its own MinHash permutations (a comparison's seed is checked to
                # leave room for them).
                reseeded = MinHashLsh(minhash.num_perm, seed + draw, minhash.bands, minhash.rows)
                _, best = match_units(sub, threshold=threshold, minhash=reseeded)
                local = pl.DataFrame(
                    {
                        "unit": rows_ab[best.unit],
                        "match": np.where(best.match >= 0, rows_ab[best.match], -1),
                        "mutual": best.mutual,
                    }
                )
                pair_units = frame.filter(pl.col("unit").is_in(rows_ab.tolist()))
                shares.append(layer_shares(pair_units, local).select(*KEYS, "share"))
    return pl.concat(shares).group_by(KEYS).agg(null_share=pl.col("share").sum() / draws)
