"""Concepts (a study's clusters) shared by two models, or held by one alone.

A concept is described by the union of its member units' top images, the set its label was read
from. Concepts of different models are matched like units
(:func:`carto_assets.core.comparison.matching.match_units` on those sets): a concept is *shared*
with another model when its best match there reaches the concept threshold, and *only* in its own
model otherwise. For shared concepts, ``label_changed`` says whether the two labels name different
things: neither label's leading term (what its cluster is most distinctive for) is among the other
label's terms (``colour=red, size=large`` against ``size=large, colour=red`` is no change;
``colour=red`` against ``shape=heart`` is). For concepts only in their model,
``same_label_elsewhere`` says whether the other model has a concept leading with the same term (a
``shape=heart`` detector of its own, on other heart images) or none: matching is by images, so two
networks' detectors of one concept that prefer different images of it do not match.

Pure numpy and polars; no dagster.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from carto_assets.core.cluster_labels import label_terms, leading_term
from carto_assets.core.comparison.matching import BestMatches, UnitSets, unit_sets


def labels_differ(label: str | None, other: str | None) -> bool:
    """Whether neither label's leading term is among the other's terms."""
    a, b = label_terms(label), label_terms(other)
    if not a or not b:
        return a != b
    return a[0] not in b and b[0] not in a


def concept_sets(
    units: UnitSets, concept_of_unit: np.ndarray, study_of_concept: np.ndarray
) -> UnitSets:
    """One row per concept: the union of its units' top images (each image's best rank).

    ``concept_of_unit[u]`` is unit ``u``'s concept row (-1: none); ``study_of_concept[c]``
    its model.
    """
    lengths = np.diff(units.indptr)
    concept = np.repeat(np.asarray(concept_of_unit, dtype=np.int64), lengths)
    keep = concept >= 0
    return unit_sets(concept[keep], units.images[keep], units.ranks[keep], study_of_concept)


def concept_frame(
    concepts: pl.DataFrame, best: BestMatches, study_names: list[str]
) -> pl.DataFrame:
    """``concept_matches`` rows: every concept against every other study.

    Parameters
    ----------
    concepts
        ``row`` (the concept's row in the sets matched), ``study``, ``cluster_id``, ``layer``,
        ``size``, ``label``.
    best
        The concepts' best matches (``other_study`` indexes ``study_names``).
    study_names
        The studies' names in index order.
    """
    other = concepts.select(
        match="row", match_cluster_id="cluster_id", match_layer="layer", match_label="label"
    )
    leads = (
        concepts.select(
            "study", lead=pl.col("label").map_elements(leading_term, return_dtype=pl.Utf8)
        )
        .unique()
        .rename({"study": "other_study"})
        .with_columns(same_label_elsewhere=pl.lit(True))
    )
    matched = pl.col("match") >= 0
    differ = pl.struct("label", "match_label").map_elements(
        lambda r: labels_differ(r["label"], r["match_label"]), return_dtype=pl.Boolean
    )
    return (
        best.frame()
        .rename({"unit": "row"})
        .join(concepts, on="row")
        .join(other, on="match", how="left")
        .with_columns(
            other_study=pl.col("other_study").replace_strict(
                dict(enumerate(study_names)), return_dtype=pl.Utf8
            ),
            jaccard=pl.when(matched).then(pl.col("jaccard")),
            status=pl.when(matched).then(pl.lit("shared")).otherwise(pl.lit("only")),
            label_changed=pl.when(matched).then(differ),
            lead=pl.col("label").map_elements(leading_term, return_dtype=pl.Utf8),
        )
        .join(leads, on=["other_study", "lead"], how="left")
        .with_columns(
            same_label_elsewhere=pl.when(~matched).then(
                pl.col("same_label_elsewhere").fill_null(False)
            )
        )
        .sort("row", "other_study")
        .select(
            "study",
            "cluster_id",
            "layer",
            "size",
            "label",
            "other_study",
            "match_cluster_id",
            "match_layer",
            "match_label",
            "jaccard",
            "mutual",
            "status",
            "label_changed",
            "same_label_elsewhere",
        )
    )
