"""The words of units and clusters as the page shows them (``unit_labels``, ``cluster_labels``).

A concept is named by its formula with its AUC (``shape=heart OR shape=circle · 0.93``), or
"no word fits" where the labels found none (formula NULL): never by the leading term of what
its top images share, once the study has words. Databases older than the words keep the
leading term (:func:`carto_viz.short_names.short_label`).
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from carto_assets.core.words.formula import NO_WORD_FITS

#: the tables that hold the words (asset ``unit_labels``); optional: older databases lack them.
TABLES = ("unit_labels", "cluster_labels")

#: what a unit or a cluster without words is called.
NO_WORD = NO_WORD_FITS

QUERIES = {
    "unit_labels": "SELECT neuron_id, formula, auc, p_value, single_term, single_auc, "
    "n_terms_over_08, n_sharing_formula, on_share, always_on FROM unit_labels",
    "cluster_labels": "SELECT cluster_id, formula, auc, p_value, always_on FROM cluster_labels",
}

#: columns a database written before them lacks, and what stands in for them there
OLDER = {"on_share": "CAST(NULL AS DOUBLE) AS on_share", "always_on": "false AS always_on"}


def query(name: str, columns: set[str]) -> str:
    """:data:`QUERIES`' ``name`` for a table holding ``columns``: a column of :data:`OLDER` it
    lacks (a database written before it) is read as its stand-in (no always-on concept)."""
    text = QUERIES[name]
    for column, stand_in in OLDER.items():
        if column not in columns:
            text = text.replace(f" {column},", f" {stand_in},").replace(
                f" {column} FROM", f" {stand_in} FROM"
            )
    return text


#: the per-unit fields each neuron record carries where the study has words (record name ->
#: ``unit_labels`` column).
UNIT_FIELDS = {
    "words": "formula",
    "words_auc": "auc",
    "p_value": "p_value",
    "single_term": "single_term",
    "single_auc": "single_auc",
    "n_terms_over_08": "n_terms_over_08",
    "n_sharing_formula": "n_sharing_formula",
    "on_share": "on_share",
    "always_on": "always_on",
}

#: what a caption adds for a concept that is always on (``always_on``).
ALWAYS_ON = "always on"


def has_words(tables: Mapping[str, object]) -> bool:
    """Whether the study's tables hold the words (both tables)."""
    return all(name in tables for name in TABLES)


def caption(formula: str | None, auc: float | None, always_on: bool = False) -> str:
    """``"shape=heart OR shape=circle · 0.93"``; :data:`NO_WORD` without a formula; ``" ·
    always on"`` after it for a concept that is (``cluster_labels.always_on``)."""
    if formula is None:
        text = NO_WORD
    else:
        text = formula if auc is None or auc != auc else f"{formula} · {auc:.2f}"
    return f"{text} · {ALWAYS_ON}" if always_on else text


def cluster_captions(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    """``cluster_id``, ``words`` (formula or null), ``words_auc`` and ``caption`` per cluster
    of ``cluster_labels`` (a cluster without a row has no words)."""
    rows = tables["cluster_labels"]
    captions = [
        caption(f, a, bool(on))
        for f, a, on in rows.select("formula", "auc", "always_on").iter_rows()
    ]
    return rows.select(
        "cluster_id", pl.col("formula").alias("words"), pl.col("auc").alias("words_auc")
    ).with_columns(caption=pl.Series(captions, dtype=pl.Utf8))


def rounded(value: float | None, digits: int = 4) -> float | None:
    """``value`` rounded; None for a missing value or NaN (JSON has no NaN)."""
    return None if value is None or value != value else round(float(value), digits)


def _p(value: float | None) -> float | None:
    """A p-value with 3 significant digits (they span many orders of magnitude)."""
    return None if value is None or value != value else float(f"{value:.3g}")


def unit_fields(row: Mapping[str, object]) -> dict:
    """A neuron record's word fields from its ``unit_labels`` row (:data:`UNIT_FIELDS`)."""
    count = row.get("n_sharing_formula")
    over = row.get("n_terms_over_08")
    return {
        "words": row.get("formula"),
        "words_auc": rounded(row.get("auc")),
        "p_value": _p(row.get("p_value")),
        "single_term": row.get("single_term"),
        "single_auc": rounded(row.get("single_auc")),
        "n_terms_over_08": None if over is None else int(over),
        "n_sharing_formula": None if count is None else int(count),
        "on_share": rounded(row.get("on_share"), 3),
        "always_on": bool(row.get("always_on")),
    }


def cluster_classes(tables: Mapping[str, pl.DataFrame]) -> dict[int, list[int]]:
    """``cluster_id -> labels``: the classes whose concept graphs have the cluster as a node
    (``concept_graph_nodes``), ascending."""
    per_cluster = (
        tables["concept_graph_nodes"]
        .group_by("cluster_id")
        .agg(pl.col("label").unique().sort())
        .sort("cluster_id")
    )
    return {int(c): [int(x) for x in labels] for c, labels in per_cluster.iter_rows()}
