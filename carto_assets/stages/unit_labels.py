"""The ``unit_labels`` stage: each unit's words and each cluster's, the formula over annotation
values that best separates the images it fires on, searched over the labels' sample
(:mod:`carto_assets.stages.label_sample`) by
:func:`carto_assets.core.words.search.label_units` (docs/words.md). No dagster imports.

A unit's words are chosen on the sample (a seeded subset of the images, every image in a small
study) by AUC with a Bonferroni-corrected Mann-Whitney p-value; a unit no formula describes
gets no words (``formula`` NULL), never a guess. A cluster is labelled the same way on its
pooled activation (each member divided by its maximum over the sample, then averaged).

Each unit and cluster also gets its *on share*, the share of the sampled images it is on for
(at least half its largest activation), and is *always on* where that reaches
``labels.always_on``: such a concept adds a fixed part to a logit whatever the image, and the
explanations list it after the concepts that are not (docs/words.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from scipy import sparse

from carto_assets import schema
from carto_assets.core.words.formula import NO_WORD_FITS, Term
from carto_assets.core.words.search import (
    UnitWords,
    label_units,
    on_shares,
    pooled_activations,
    term_indicator,
)
from carto_assets.sources.annotations import CLASS_CONCEPT
from carto_assets.stages.label_sample import load_label_sample
from carto_assets.storage.quality import Figure, per_layer

if TYPE_CHECKING:
    from carto_assets.stages.prepared import PreparedStudy


@dataclass(frozen=True)
class Labels:
    """The ``unit_labels`` and ``cluster_labels`` rows, and what the search saw."""

    units: pl.DataFrame
    clusters: pl.DataFrame
    n_images: int
    n_terms: int
    #: sampled images left out because the study's annotations table gives them no value
    n_unannotated: int
    #: formulas scored per unit (the p-values' Bonferroni factor)
    n_formulas: int
    seconds: dict[str, float] = field(default_factory=dict)


def distinct_terms(
    terms: list[Term], indicator: sparse.csc_matrix
) -> tuple[list[Term], sparse.csc_matrix]:
    """The terms with one of each set of terms that hold on exactly the same sampled images:
    an annotation's own term is kept over the class's (the shapes world's ``shape=heart`` over
    ``class=heart``), else the first. The search breaks ties by term order, so without this a
    label would name whichever sorts first."""
    indicator = sparse.csc_matrix(indicator)
    seen: dict[bytes, int] = {}
    keep: list[int] = []
    for j in range(indicator.shape[1]):
        rows = indicator.indices[indicator.indptr[j] : indicator.indptr[j + 1]]
        key = np.sort(rows).astype(np.int64).tobytes()
        if key not in seen:
            seen[key] = len(keep)
            keep.append(j)
        elif terms[keep[seen[key]]].concept == CLASS_CONCEPT and terms[j].concept != CLASS_CONCEPT:
            keep[seen[key]] = j
    keep.sort()
    return [terms[j] for j in keep], indicator[:, keep]


def _word_columns(words: UnitWords) -> dict[str, object]:
    columns = words.columns()
    columns["n_terms_over_08"] = np.asarray(columns["n_terms_over_08"], dtype=np.int32)
    return columns


def _sharing() -> pl.Expr:
    """Per row, how many other rows have the same formula (NULL where there is none)."""
    return (
        pl.when(pl.col("formula").is_not_null())
        .then(pl.len().over("formula") - 1)
        .otherwise(None)
        .cast(pl.Int32)
    )


def _cluster_columns(
    words: UnitWords, maxima, pooled, groups, terms, indicator, study
) -> dict[str, object]:
    """The clusters' word columns: each cluster's words on its pooled activation. A cluster
    of one unit whose largest activation is positive has its unit's words: its pooled
    activation is the unit's divided by that maximum, the same order and ties, and the words
    are chosen on ranks alone (84% of the googlenet rehearsal's 3,967 clusters; searching them
    again cost 3 s of its labelling). The others are searched."""
    top = np.asarray(maxima).max(axis=0) if len(maxima) else np.zeros(np.shape(maxima)[1])
    own = np.array([int(g[0]) if len(g) == 1 and top[int(g[0])] > 0 else -1 for g in groups])
    searched = np.flatnonzero(own < 0)
    units = _word_columns(words)
    columns = {name: [None] * len(groups) for name in units}
    for k in np.flatnonzero(own >= 0):
        for name, values in units.items():
            columns[name][k] = values[own[k]]
    if len(searched):
        found = _word_columns(label_units(pooled[:, searched], terms, indicator, study.labels))
        for n, k in enumerate(searched):
            for name, values in found.items():
                columns[name][k] = values[n]
    return {
        name: np.asarray(values, dtype=units[name].dtype)
        if isinstance(units[name], np.ndarray)
        else values
        for name, values in columns.items()
    }


def _on(shares: np.ndarray, always_on: float) -> list[pl.Series]:
    """``on_share`` and ``always_on`` columns (:func:`on_shares`, ``labels.always_on``)."""
    shares = np.asarray(shares, dtype=np.float64)
    return [pl.Series("on_share", shares), pl.Series("always_on", shares >= always_on)]


def unit_labels(prepared: PreparedStudy, progress: Callable[[str], None] | None = None) -> Labels:
    """Every unit's and every cluster's words over the labels' sample."""
    say = progress or (lambda message: None)
    study, store = prepared.study, prepared.store
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    sample = load_label_sample(prepared)
    ann = sample.annotations
    terms, indicator = term_indicator(
        sample.image_ids,
        ann["image_id"].to_numpy(),
        ann["concept"].to_list(),
        ann["value"].to_list(),
    )
    terms, indicator = distinct_terms(terms, indicator)
    seconds["sample"] = time.perf_counter() - start
    say(
        f"labelling {sample.n_units} units over {sample.n_images} images and {len(terms)} "
        "annotation values"
    )
    words = label_units(sample.maxima, terms, indicator, study.labels, timings=seconds)
    neurons = store.query("SELECT neuron_id, layer FROM neurons ORDER BY neuron_id")
    if not np.array_equal(neurons["neuron_id"].to_numpy(), sample.neuron_ids):
        raise RuntimeError("the labels' sample is out of date with `neurons`; re-run the shards")
    suffix = schema.FEATURE_SUFFIX
    units = (
        pl.DataFrame({"neuron_id": sample.neuron_ids.astype(np.int64), "layer": neurons["layer"]})
        .with_columns(
            kind=pl.when(pl.col("layer").str.ends_with(suffix))
            .then(pl.lit("feature"))
            .otherwise(pl.lit("channel"))
        )
        .with_columns(pl.DataFrame(_word_columns(words)))
        .with_columns(n_sharing_formula=_sharing())
        .with_columns(_on(on_shares(sample.maxima), study.labels.always_on))
        .with_columns(n_images=pl.lit(sample.n_images, dtype=pl.Int32))
    )
    start = time.perf_counter()
    members = store.query(
        "SELECT cluster_id, any_value(layer) AS layer, list(neuron_id ORDER BY neuron_id) AS "
        "members FROM neuron_clusters GROUP BY cluster_id ORDER BY cluster_id"
    )
    # neuron ids are 0..M-1 in the sample's column order (checked above)
    groups = [np.asarray(m, dtype=np.int64) for m in members["members"].to_list()]
    pooled = pooled_activations(sample.maxima, groups)
    cluster_words = _cluster_columns(words, sample.maxima, pooled, groups, terms, indicator, study)
    seconds["clusters"] = time.perf_counter() - start
    clusters = (
        members.select(
            pl.col("cluster_id").cast(pl.Int64),
            "layer",
            size=pl.col("members").list.len().cast(pl.Int32),
        )
        .with_columns(pl.DataFrame(cluster_words))
        .with_columns(_on(on_shares(pooled), study.labels.always_on))
        .with_columns(n_images=pl.lit(sample.n_images, dtype=pl.Int32))
    )
    # As declared (a sample where no unit has words would leave `formula` without a type).
    units = units.select(schema.column_names("unit_labels")).cast(
        schema.polars_schema("unit_labels")
    )
    clusters = clusters.select(schema.column_names("cluster_labels")).cast(
        schema.polars_schema("cluster_labels")
    )
    return Labels(
        units,
        clusters,
        sample.n_images,
        len(terms),
        sample.n_unannotated,
        words.n_formulas,
        seconds,
    )


def label_figures(labels: Labels) -> list[Figure]:
    """The words' figures: the share of units with words and their median AUC on the sample,
    for the study and per layer."""
    units = labels.units
    worded = units.filter(pl.col("formula").is_not_null())
    share = worded.height / max(1, units.height)
    median = float(worded["auc"].median()) if worded.height else float("nan")
    by_layer = units.group_by("layer", maintain_order=True).agg(
        share=pl.col("formula").is_not_null().mean(),
        median=pl.col("auc").filter(pl.col("formula").is_not_null()).median(),
    )
    figures = [
        Figure(
            "units_with_words",
            share,
            "share of units whose words (a formula over annotation values) reach the labels' "
            "AUC and p-value bounds on the sample",
            name="units with words",
            shown=f"{share:.0%} (median AUC {median:.2f} on {labels.n_images:,} images)"
            if worded.height
            else f"none of {units.height:,} units (on {labels.n_images:,} images)",
        ),
        Figure(
            "words_median_auc",
            median,
            "median AUC of the units' words on the labels' sample",
        ),
    ]
    figures += per_layer(
        "layer_units_with_words",
        dict(zip(by_layer["layer"], by_layer["share"].fill_null(0.0))),
        "share of the layer's units that have words",
    )
    figures += per_layer(
        "layer_words_median_auc",
        dict(zip(by_layer["layer"], by_layer["median"].fill_null(float("nan")))),
        "median AUC of the layer's units' words",
    )
    return figures


def cluster_words(store) -> dict[int, str]:
    """Each cluster's words as the product prints them: ``formula (AUC 0.93)``, or
    :data:`NO_WORD_FITS`, with `` · always on`` after them for a cluster that is
    (``cluster_labels.always_on``). A study mapped without labels (``labels.enabled: false``) has no
    ``cluster_labels``: its clusters' top-image labels (``clusters.label``) are used instead."""
    if not store.table_exists("cluster_labels"):
        return dict(store.query("SELECT cluster_id, label FROM clusters").iter_rows())
    # A database written before `always_on` has none (the next run adds the column).
    on = "always_on" if "always_on" in store.columns("cluster_labels") else "false"
    rows = store.query(f"SELECT cluster_id, formula, auc, {on} FROM cluster_labels")
    return {
        int(c): (f"{f} (AUC {a:.2f})" if f is not None else NO_WORD_FITS)
        + (" · always on" if on else "")
        for c, f, a, on in rows.iter_rows()
    }
