"""The ``explanations`` stage: every class chunk's explanation tables merged into the
study's, and the figures they give (pointing game, concept deletion). No dagster imports.

The chunks are computed in the concept graph's step
(:mod:`carto_assets.stages.explanation_chunk`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from carto_assets.stages.explanation_chunk import ORDERS, TABLES, typed

if TYPE_CHECKING:
    pass


# ---- the merge ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Explanations:
    """Every chunk's explanations, merged: the tables and what the figures summarize."""

    tables: dict[str, pl.DataFrame]
    #: ``relevance_exemplars`` rows: per concept, the images it carried the most relevance in
    exemplars: pl.DataFrame


def merge_explanations(parts: list[dict[str, pl.DataFrame]], per_concept: int = 9) -> Explanations:
    """Stack the chunks' tables; per concept, the ``per_concept`` explained images where it
    had the largest share of its layer's relevance for the image's own class (CRP's relevance
    maximization), among the concepts each image stores."""
    tables = typed(
        {name: [p[name] for p in parts if name in p and p[name].height] for name in TABLES}
    )
    tables["explained_images"] = tables["explained_images"].sort("image_id")
    for name in ("explanation_concepts", "explanation_layers"):
        tables[name] = tables[name].sort("image_id", "target", "layer")
    tables["explanation_checks"] = tables["explanation_checks"].sort("image_id", "layer")
    own = tables["explanation_concepts"].join(
        tables["explained_images"].select("image_id", pl.col("label").alias("target")),
        on=["image_id", "target"],
    )
    exemplars = (
        own.sort(["cluster_id", "share", "image_id"], descending=[False, True, False])
        .group_by("cluster_id", maintain_order=True)
        .head(per_concept)
        .with_columns(rank=pl.int_range(1, pl.len() + 1).over("cluster_id"))
        .select("cluster_id", "layer", "rank", "image_id", "share", "relevance")
    )
    from carto_assets import schema

    exemplars = exemplars.select(
        [pl.col(c).cast(t) for c, t in schema.polars_schema("relevance_exemplars").items()]
    )
    return Explanations(tables, exemplars)


def explanation_figures(merged: Explanations) -> list:
    """The ``explanations`` asset's ``study_quality`` rows: the pointing game and C-Deletion
    at the last mapped layers (headline and per layer), the completeness gap per layer, and
    how many images were explained and why."""
    from carto_assets.storage.quality import Figure

    checks = merged.tables["explanation_checks"]
    layers = merged.tables["explanation_layers"]
    images = merged.tables["explained_images"]
    figures = [
        Figure(f"images_{why}", int((images["why"] == why).sum()), f"images explained ({why})")
        for why in ("sample", "misclassified", "listed")
    ]
    figures.append(
        Figure(
            "misclassified_share",
            float((images["predicted"] != images["label"]).mean())
            if images.height
            else float("nan"),
            "share of the explained images the model gets wrong",
        )
    )
    per = checks.group_by("layer", maintain_order=True).agg(
        pl.col("object_share").drop_nans().mean().alias("object"),
        pl.col("top_object_share").drop_nans().mean().alias("top"),
        pl.col("mask_share").drop_nans().mean().alias("mask"),
        *[pl.col(f"auc_{o}").drop_nans().mean().alias(o) for o in ORDERS],
    )
    pointing, deletion = [], []

    def shown(value) -> str:
        return "n/a" if value is None or value != value else f"{value:.2f}"

    def number(value) -> float:
        return float("nan") if value is None else float(value)

    for r in per.iter_rows(named=True):
        layer = r["layer"]
        if r["object"] is not None:
            pointing.append(
                f"{layer} {shown(r['object'])} (top concept {shown(r['top'])}) vs "
                f"{shown(r['mask'])}"
            )
            figures += [
                Figure(
                    "object_share",
                    number(r["object"]),
                    "mean share of the layer's positive relevance inside the object",
                    layer=layer,
                ),
                Figure(
                    "top_concept_object_share",
                    number(r["top"]),
                    "the same for the most relevant concept alone",
                    layer=layer,
                ),
                Figure(
                    "mask_share",
                    number(r["mask"]),
                    "mean share of the image the object covers",
                    layer=layer,
                ),
            ]
        deletion.append(f"{layer} " + "/".join(shown(r[o]) for o in ORDERS))
        figures += [
            Figure(
                f"deletion_auc_{o}",
                number(r[o]),
                f"mean C-Deletion area, concepts deleted in {o} order",
                layer=layer,
            )
            for o in ORDERS
        ]
    if pointing:
        figures.append(
            Figure(
                "relevance_inside_object",
                number(per["object"].drop_nulls().mean()),
                "mean share of the last layers' positive relevance inside the object "
                "(pointing game)",
                name="relevance inside the object",
                shown="; ".join(pointing) + " of the image",
            )
        )
    if deletion:
        figures.append(
            Figure(
                "deletion_auc",
                number(per["relevance"].drop_nulls().mean()),
                "mean C-Deletion area in relevance order at the last layers (lower: the logit "
                "falls faster)",
                name="concept deletion (C-Deletion area, lower is faster)",
                shown="relevance / activation / random order: " + ", ".join(deletion),
            )
        )
    gaps = layers.group_by("layer", maintain_order=True).agg(
        ((pl.col("gap").abs()) / pl.col("logit").abs()).median().alias("gap")
    )
    figures += [
        Figure(
            "completeness_gap",
            number(r["gap"]),
            "median |logit - layer total relevance| / |logit|",
            layer=r["layer"],
        )
        for r in gaps.iter_rows(named=True)
    ]
    return figures
