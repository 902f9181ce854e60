"""Concepts (a study's clusters) shared by two models, or held by one alone.

Where both studies have words (``cluster_labels``), a concept is a cluster's words and concepts
are matched by them (:func:`formula_frame`): a cluster whose formula (in canonical form:
:func:`canonical_formula`) some cluster of the other model also has is *shared*, one whose
formula the other model lacks is *only* in its own model, and a cluster without words (no word
fits) is not a concept to match. Two models' detectors of one thing are found whichever images
each prefers, and two clusters with the same leading top-image term but other words are not.

Where a study has no words (mapped before words, or with ``labels.enabled: false``), concepts
are matched by images as before (:func:`concept_frame`). A concept is then described by the
union of its member units' top images, the set its label was read from. Concepts of different
models are matched like units
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
from carto_assets.core.words.formula import And, Formula, Not, Or, Term, in_order, parse, text

#: ``concept_matches.matched_by``: by the clusters' words, or (a study without words) by images.
BY_FORMULA, BY_IMAGES = "formula", "images"

#: The columns both ways of matching return, in ``concept_matches`` order (``row`` first).
COLUMNS = (
    "row",
    "study",
    "cluster_id",
    "layer",
    "size",
    "label",
    "formula",
    "auc",
    "other_study",
    "matched_by",
    "match_cluster_id",
    "match_layer",
    "match_label",
    "match_auc",
    "jaccard",
    "mutual",
    "status",
    "label_changed",
    "same_label_elsewhere",
)


def labels_differ(label: str | None, other: str | None) -> bool:
    """Whether neither label's leading term is among the other's terms."""
    a, b = label_terms(label), label_terms(other)
    if not a or not b:
        return a != b
    return a[0] not in b and b[0] not in a


def canonical_formula(formula: str | None) -> str | None:
    """The text two formulas that say the same are compared by: parsed, the operands of every
    AND and OR in the order of their text, printed canonically (``b=2 AND a=1`` and
    ``a=1 AND b=2`` give ``a=1 AND b=2``). None for None; text that does not parse is compared
    as it is (stripped)."""
    if formula is None:
        return None
    try:
        return text(in_order(parse(formula)))
    except ValueError:
        return formula.strip()


def positive_terms(formula: str | None) -> frozenset[str]:
    """The terms of a formula that are not under a NOT, as text (``shape=heart AND NOT
    colour=red`` -> ``{"shape=heart"}``); empty for None or text that does not parse."""
    if formula is None:
        return frozenset()
    try:
        tree = parse(formula)
    except ValueError:
        return frozenset()
    found: set[str] = set()

    def walk(node: Formula) -> None:
        if isinstance(node, Term):
            found.add(text(node))
        elif isinstance(node, And | Or):
            for operand in node.operands:
                walk(operand)
        elif not isinstance(node, Not):
            raise TypeError(f"not a formula: {node!r}")

    walk(tree)
    return frozenset(found)


def set_jaccard(sets: UnitSets, a: int, b: int) -> float:
    """Exact Jaccard similarity of rows ``a`` and ``b`` of ``sets`` (0 for two empty sets)."""
    x = sets.images[sets.indptr[a] : sets.indptr[a + 1]]
    y = sets.images[sets.indptr[b] : sets.indptr[b + 1]]
    union = np.union1d(x, y).size
    return float(np.intersect1d(x, y, assume_unique=True).size / union) if union else 0.0


def formula_frame(concepts: pl.DataFrame, sets: UnitSets, study_names: list[str]) -> pl.DataFrame:
    """``concept_matches`` rows matched by words: every concept against every other study.

    A concept with words is *shared* with another study that has a concept of the same
    canonical formula (its match: the one in the same layer first, then the higher AUC, then
    the smaller cluster id), else *only* in its own study; then ``same_label_elsewhere`` says
    whether the other study has a concept whose words share a term not under NOT (a partial
    match: ``shape=heart`` against ``shape=heart AND colour=red``). A cluster without words
    (formula None) has no status. ``jaccard``: the two matched concepts' top images (how far
    they are also detected on the same images); ``mutual``: each is the other's match.

    Parameters
    ----------
    concepts
        ``row`` (the concept's row in ``sets``), ``study``, ``cluster_id``, ``layer``,
        ``size``, ``label``, ``formula``, ``auc``.
    sets
        The concepts' top images (:func:`concept_sets`).
    study_names
        The studies' names in index order.
    """
    records = concepts.sort("row").to_dicts()
    keys = [canonical_formula(r["formula"]) for r in records]
    holders: dict[tuple[str, str], list[int]] = {}
    terms_of: dict[str, set[str]] = {name: set() for name in study_names}
    for i, (record, key) in enumerate(zip(records, keys, strict=True)):
        if key is not None:
            holders.setdefault((record["study"], key), []).append(i)
            terms_of[record["study"]].update(positive_terms(key))

    def auc_of(i: int) -> float:
        value = records[i]["auc"]
        return -1.0 if value is None or value != value else float(value)

    def match(i: int, other: str) -> int | None:
        candidates = holders.get((other, keys[i]), []) if keys[i] is not None else []
        return min(
            candidates,
            key=lambda j: (
                records[j]["layer"] != records[i]["layer"],
                -auc_of(j),
                records[j]["cluster_id"],
            ),
            default=None,
        )

    out = []
    for i, (record, key) in enumerate(zip(records, keys, strict=True)):
        for other in study_names:
            if other == record["study"]:
                continue
            j = match(i, other)
            found = records[j] if j is not None else {}
            if key is None:
                status, partial = None, None
            elif j is None:
                status = "only"
                partial = bool(positive_terms(key) & terms_of[other])
            else:
                status, partial = "shared", None
            out.append(
                {
                    **{c: record[c] for c in COLUMNS[:8]},
                    "other_study": other,
                    "matched_by": BY_FORMULA,
                    "match_cluster_id": found.get("cluster_id"),
                    "match_layer": found.get("layer"),
                    "match_label": found.get("label"),
                    "match_auc": found.get("auc"),
                    "jaccard": (
                        set_jaccard(sets, record["row"], found["row"]) if j is not None else None
                    ),
                    "mutual": j is not None and match(j, record["study"]) == i,
                    "status": status,
                    "label_changed": None,
                    "same_label_elsewhere": partial,
                }
            )
    schema = {
        **dict.fromkeys(COLUMNS, pl.Utf8),
        "row": pl.Int64,
        "cluster_id": pl.Int64,
        "size": pl.Int64,
        "auc": pl.Float64,
        "match_cluster_id": pl.Int64,
        "match_auc": pl.Float64,
        "jaccard": pl.Float64,
        "mutual": pl.Boolean,
        "label_changed": pl.Boolean,
        "same_label_elsewhere": pl.Boolean,
    }
    return pl.DataFrame(out, schema=schema, orient="row").sort("row", "other_study")


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
    """``concept_matches`` rows matched by images: every concept against every other study.

    Parameters
    ----------
    concepts
        ``row`` (the concept's row in the sets matched), ``study``, ``cluster_id``, ``layer``,
        ``size``, ``label``, and optionally ``formula`` and ``auc`` (the words, NULL without).
    best
        The concepts' best matches (``other_study`` indexes ``study_names``).
    study_names
        The studies' names in index order.
    """
    for column, dtype in (("formula", pl.Utf8), ("auc", pl.Float64)):
        if column not in concepts.columns:
            concepts = concepts.with_columns(pl.lit(None, dtype=dtype).alias(column))
    other = concepts.select(
        match="row",
        match_cluster_id="cluster_id",
        match_layer="layer",
        match_label="label",
        match_auc="auc",
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
            matched_by=pl.lit(BY_IMAGES),
        )
        .join(leads, on=["other_study", "lead"], how="left")
        .with_columns(
            same_label_elsewhere=pl.when(~matched).then(
                pl.col("same_label_elsewhere").fill_null(False)
            )
        )
        .sort("row", "other_study")
        .select(COLUMNS)
    )
