"""The ``class_audit`` stage: what each class's prediction relies on, grouped by the words of
its units, the terms that look like a shortcut, and the causal checks that confirm them.

The shares and the relevance flag are :mod:`carto_assets.core.audit`'s; the checks
(counterfactual and ablation) are :mod:`carto_assets.stages.audit_checks`', and run inside
the concept graph's chunks on the graph's own passes. This stage flags over every class, keeps
the chunks' checks of the rows it checks and runs the checks itself only for rows no chunk
checked.

Every term the relevance flags gets both checks. Every term that co-occurs with the class and
that the source can render again gets the counterfactual whether or not the relevance flags
it: where it confirms, the term is flagged (``flagged_by = 'counterfactual'``) and its ablation
runs too. ``confirmed`` is the counterfactual's verdict where it ran, else the ablation's
(:func:`carto_assets.core.audit.model_uses`).

No dagster imports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from carto_assets.core.audit import (
    AuditRule,
    audit_terms,
    layer_term_shares,
    model_uses,
    to_check,
)
from carto_assets.stages.audit_checks import (
    CHECK_COLUMNS,
    IMAGES_SCHEMA,
    ClassPass,
    carrying,
    check,
    checks_key,
    frames,
    read_inputs,
    renderable,
)
from carto_assets.storage.quality import Figure

if TYPE_CHECKING:
    from carto_assets.stages.prepared import PreparedStudy


@dataclass(frozen=True)
class Audit:
    """The ``class_audit`` and ``class_audit_images`` rows."""

    terms: pl.DataFrame
    images: pl.DataFrame
    seconds: dict[str, float]
    #: rows whose checks the concept graph's chunks ran, and rows this stage checked itself
    reused: int = 0
    checked_here: int = 0


#: The study's unit layers in the graph's order (channel layers in forward order, then the
#: feature layers), from ``neurons`` (no model needed).
LAYERS_SQL = """
SELECT layer FROM neurons GROUP BY layer
ORDER BY bool_or(kind = 'feature'), min(layer_index)
"""


def unit_layers(con) -> list[str]:
    """:data:`LAYERS_SQL`'s layers: :class:`~carto_assets.stages.units.Units`' ``layers``."""
    return [row[0] for row in con.execute(LAYERS_SQL).fetchall()]


def class_audit(
    prepared: PreparedStudy,
    progress: Callable[[str], None] | None = None,
    extra: Sequence[tuple[int, str]] = (),
    chunks: Sequence[dict[str, pl.DataFrame]] = (),
) -> Audit:
    """Every class's terms by relevance share, flagged where they look like a shortcut, with
    the causal checks of the flagged ones, of the co-occurring terms the source can render
    again, and of the ``(label, term)`` pairs in ``extra``.

    ``chunks``: the concept graph's chunks' audit tables
    (:data:`~carto_assets.stages.audit_checks.TABLES`); their checks are kept where they cover
    a row (same term, class and ablation layer; the ablation run where the row needs it). The
    rows they do not cover are checked here (the model is loaded only then)."""
    say = progress or (lambda m: None)
    started = time.perf_counter()
    study, store = prepared.study, prepared.store
    cfg = study.audit
    rule = AuditRule(cfg.min_share, cfg.min_lift, cfg.min_cooccurrence)
    class_names, images = prepared.class_names, prepared.images
    with store.connect() as con:  # one connection for the audit's reads
        relevance = con.sql("SELECT label, neuron_id, share FROM class_relevance").pl()
        inputs = read_inputs(con, images, class_names)
        audit = audit_terms(
            layer_term_shares(relevance, inputs.words),
            unit_layers(con),
            class_names,
            inputs.rates,
            inputs.own,
            rule,
        )
        co = audit.filter(pl.col("cooccurs"))["term"]
        checks = to_check(audit, extra, renderable(prepared.source, co) if co.len() else [])
        done, images_done = _from_chunks(checks, chunks, checks_key(study, inputs.words_key))
        todo = checks.join(done.select("label", "term"), on=["label", "term"], how="anti")
        held = carrying(con, todo.select("label", "term"))
    seconds = {"shares": time.perf_counter() - started}
    say(
        f"audit: {audit.height} class terms, {int(audit['flagged'].sum())} flagged by relevance, "
        f"{checks.height} checked ({done.height} in the concept graph's chunks)"
    )
    t = time.perf_counter()
    rows, shown = [], []
    groups = todo.group_by("label", maintain_order=True)
    for k, (label, part) in enumerate(groups):
        label = int(label[0])
        say(f"audit: checking {class_names[label]} ({k + 1}/{todo['label'].n_unique()})")
        cp = ClassPass.drawn(prepared, label, cfg.images_per_class or study.graph.images_per_class)
        mine = held.filter(pl.col("label") == label)
        for row in part.iter_rows(named=True):
            term = str(row["term"])
            got, images_of = check(
                prepared,
                label,
                term,
                row["top_layer"],
                bool(row["flagged"] or row["wanted"]),
                inputs.words,
                set(mine.filter(pl.col("term") == term)["image_id"].to_list()),
                cp,
            )
            rows.append({"label": label, "term": term, **got})
            shown.extend((label, term, *x) for x in images_of)
        cp.fwd.release()
    seconds["checks"] = time.perf_counter() - t
    here, images_here = frames(rows, shown)
    checked = pl.concat([done, here.drop("top_layer", "checks_key")], how="vertical_relaxed")
    terms = audit.join(checked.with_columns(checked=pl.lit(True)), on=["label", "term"], how="left")
    # A co-occurring term the counterfactual shows the model uses is flagged, named or not.
    by_counterfactual = (
        ~pl.col("flagged") & pl.col("cooccurs") & pl.col("counterfactual_confirms").fill_null(False)
    )
    terms = terms.with_columns(
        pl.col("checked").fill_null(False),
        pl.when(by_counterfactual)
        .then(pl.lit("counterfactual"))
        .otherwise(pl.col("flagged_by"))
        .alias("flagged_by"),
        (pl.col("flagged") | by_counterfactual).alias("flagged"),
    ).select(*audit.columns, "checked", *CHECK_COLUMNS)
    exemplars = pl.concat(
        [images_done, images_here.drop("checks_key")], how="vertical_relaxed"
    ).select([pl.col(c).cast(t) for c, t in IMAGES_SCHEMA.items()])
    return Audit(terms, exemplars, seconds, reused=done.height, checked_here=here.height)


ABLATION_COLUMNS = [c for c in CHECK_COLUMNS if c.startswith("ablation_")]


def _from_chunks(
    checks: pl.DataFrame, chunks: Sequence[dict[str, pl.DataFrame]], key: str | None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The rows of ``checks`` the chunks' checks cover (``label, term`` and
    :data:`CHECK_COLUMNS`) and their images.

    A chunk checked every co-occurring term of its classes, the ablation where the term carried
    at least ``min_share`` at its top layer or where the counterfactual confirmed. A row is
    covered where its chunk row has the same ablation layer and, where the row needs an
    ablation (flagged, asked for, or the counterfactual confirms), the ablation ran; a row that
    does not need one keeps none (as if checked here). Only checks made under ``key``
    (:func:`~carto_assets.stages.audit_checks.checks_key`: the same audit settings, graph
    sample, seed and words) count; a (class, term) two chunks checked counts once."""
    empty_images = pl.DataFrame(schema=IMAGES_SCHEMA)
    parts = [c["audit_checks"] for c in chunks if "audit_checks" in c]
    if not parts or checks.is_empty():
        return pl.DataFrame(schema={"label": pl.Int32, "term": pl.String, **CHECK_COLUMNS}), (
            empty_images
        )
    got = (
        pl.concat(parts, how="vertical_relaxed")
        .filter(pl.col("checks_key") == key)
        .unique(["label", "term"], keep="first", maintain_order=True)
        .rename({"top_layer": "checked_layer"})
    )
    joined = checks.select("label", "term", "top_layer", "flagged", "wanted").join(
        got, on=["label", "term"], how="inner"
    )
    needs = (
        pl.col("flagged") | pl.col("wanted") | pl.col("counterfactual_confirms").fill_null(False)
    )
    same_layer = pl.col("top_layer").eq_missing(pl.col("checked_layer"))
    ablated = pl.col("ablation_units").is_not_null() | pl.col("top_layer").is_null()
    covered = joined.filter(same_layer & (~needs | ablated)).with_columns(needs.alias("needs"))
    covered = covered.with_columns(
        [
            pl.when(pl.col("needs")).then(pl.col(c)).otherwise(None).alias(c)
            for c in ABLATION_COLUMNS
        ]
    )
    confirmed = [
        model_uses(a, c)
        for a, c in covered.select("ablation_confirms", "counterfactual_confirms").iter_rows()
    ]
    covered = covered.with_columns(confirmed=pl.Series(confirmed, dtype=pl.Boolean))
    kept = covered.filter(pl.col("needs")).select("label", "term")
    images = [c["audit_check_images"] for c in chunks if "audit_check_images" in c]
    shown = (
        pl.concat(images, how="vertical_relaxed")
        .filter(pl.col("checks_key") == key)
        .unique(["label", "term", "rank"], keep="first", maintain_order=True)
        .join(kept, on=["label", "term"], how="semi")
        .drop("checks_key")
        if images
        else empty_images
    )
    return covered.select("label", "term", *CHECK_COLUMNS), shown


def audit_figures(audit: Audit) -> list[Figure]:
    """The ``class_audit`` asset's ``study_quality`` rows: classes flagged, and how many
    flags the causal checks confirm (class_audit.confirmed)."""
    flagged = audit.terms.filter(pl.col("flagged"))
    classes = flagged["label"].n_unique()
    confirmed = int(flagged["confirmed"].fill_null(False).sum())
    names = flagged.unique("label", maintain_order=True)["class_name"].to_list()
    listed = ", ".join(names[:5]) + (", …" if len(names) > 5 else "")
    return [
        Figure(
            "classes_flagged",
            classes,
            "classes with a flagged term: not their own, co-occurring with them in the data, "
            "and carrying a large share of their relevance or changing their prediction when "
            "re-rendered (a candidate shortcut; class_audit.flagged)",
            name="classes flagged",
            shown=f"{classes} of {audit.terms['label'].n_unique()}"
            + (f" ({listed}); {confirmed} of {flagged.height} flags confirmed" if classes else ""),
        ),
        Figure(
            "flags_confirmed",
            confirmed,
            "flagged terms the causal checks confirm the model uses (the counterfactual where "
            "the source renders one, else the ablation; class_audit.confirmed)",
        ),
    ]
