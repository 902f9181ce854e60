"""The ``class_audit`` stage: what each class's prediction relies on, grouped by the words of
its units, the terms that look like a shortcut, and the causal checks that confirm them.

The shares and the relevance flag are :mod:`carto_assets.core.audit`'s. Two checks say
whether the model *uses* a term or the term only co-occurs with the class:

* counterfactual (a source that renders its images, the ``shapes`` world): the class's sampled
  images (``audit.images_per_class``) that carry the term are rendered again with the term's
  concept changed (each image to a seeded other value, all else the same), and the class's
  accuracy and mean logit are set beside those of the unchanged images;
* ablation (any study): the term's units at the layer where it carries most of the class's
  relevance are zeroed on the class's sampled images; the class logit's drop is set beside the
  other classes' logits' drop on the same images and beside the drop when as many random units
  of the layer are zeroed (mean of ``RANDOM_DRAWS`` draws).

Every term the relevance flags gets both. Every term that co-occurs with the class and that the
source can render again gets the counterfactual whether or not the relevance flags it: where it
confirms, the term is flagged (``flagged_by = 'counterfactual'``) and its ablation runs too.
``confirmed`` is the counterfactual's verdict where it ran, else the ablation's
(:func:`carto_assets.core.audit.model_uses`).

No dagster imports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import torch

from carto_assets.core.attribution.ablation import Row, ablate
from carto_assets.core.attribution.forward import (
    RetainedForward,
    device_of,
    evaluating,
    logits_of,
)
from carto_assets.core.audit import (
    CONFIRM_P,
    AuditRule,
    Rate,
    audit_terms,
    confirms_ablation,
    confirms_counterfactual,
    layer_term_shares,
    model_uses,
    paired_p,
    rates_from_counts,
    to_check,
    unit_terms,
)
from carto_assets.core.words.formula import Term, parse, text
from carto_assets.sources.annotations import CLASS_CONCEPT
from carto_assets.stages.concept_graph import class_images
from carto_assets.stages.concept_graph_checks import seed_for
from carto_assets.stages.explanation_chunk import thumbnail
from carto_assets.storage.quality import Figure

if TYPE_CHECKING:
    from carto_assets.stages.prepared import PreparedStudy

#: Random unit sets drawn per checked term; their drops are averaged.
RANDOM_DRAWS = 5
#: The ablation confirms only where the term's units drop the class logit at least this many
#: times as much as random units do (and significantly, per image).
MIN_RANDOM_RATIO = 2.0

#: The checks' columns, NULL on rows that were not checked.
CHECK_COLUMNS: dict[str, pl.DataType] = {
    "ablation_units": pl.Int32,
    "ablation_images": pl.Int32,
    "ablation_drop": pl.Float64,
    "ablation_other_drop": pl.Float64,
    "ablation_random_drop": pl.Float64,
    "ablation_p_value": pl.Float64,
    "ablation_confirms": pl.Boolean,
    "counterfactual_images": pl.Int32,
    "accuracy": pl.Float64,
    "counterfactual_accuracy": pl.Float64,
    "logit": pl.Float64,
    "counterfactual_logit": pl.Float64,
    "counterfactual_p_value": pl.Float64,
    "counterfactual_confirms": pl.Boolean,
    "confirmed": pl.Boolean,
}


@dataclass(frozen=True)
class Audit:
    """The ``class_audit`` and ``class_audit_images`` rows."""

    terms: pl.DataFrame
    images: pl.DataFrame
    seconds: dict[str, float]


def _spelled(rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` with ``concept, value`` replaced by ``term``, written as the words write it."""
    pairs = rows.select("concept", "value").unique()
    spelled = pairs.with_columns(
        term=pl.Series([text(Term(c, v)) for c, v in pairs.iter_rows()], dtype=pl.String)
    )
    return rows.join(spelled, on=["concept", "value"]).drop("concept", "value")


#: Per class and annotation value, its images (counted in the database: no per-image rows
#: reach Python, whatever the dataset's size).
COUNTS_SQL = """
SELECT i.label, a.concept, a.value, count(DISTINCT a.image_id) AS k
FROM image_annotations a JOIN images i USING (image_id)
GROUP BY i.label, a.concept, a.value
"""


def _carrying(con, wanted: pl.DataFrame) -> pl.DataFrame:
    """``label, term, image_id``: the images of each wanted (label, term) where it holds
    (only the checked pairs' rows are read)."""
    if wanted.is_empty():
        return pl.DataFrame(schema={"label": pl.Int32, "term": pl.String, "image_id": pl.Int64})
    pairs = [(int(label), term, parse(term)) for label, term in wanted.iter_rows()]
    keys = pl.DataFrame(
        [(label, t, f.concept, f.value) for label, t, f in pairs if isinstance(f, Term)],
        schema={"label": pl.Int32, "term": pl.String, "concept": pl.String, "value": pl.String},
        orient="row",
    )
    con.register("audit_wanted", keys.to_arrow())
    try:
        return con.sql(
            "SELECT w.label, w.term, a.image_id FROM audit_wanted w "
            "JOIN image_annotations a ON a.concept = w.concept AND a.value = w.value "
            "JOIN images i ON i.image_id = a.image_id AND i.label = w.label"
        ).pl()
    finally:
        con.unregister("audit_wanted")


def own_terms(class_names: list[str], rates: dict[tuple[int, str], Rate]) -> dict[int, set[str]]:
    """Per class, its own terms: ``class=<name>``, and any term that holds on exactly the
    class's images (the shapes world's ``shape=<class>``, a user's column that repeats the
    class)."""
    own = {label: {text(Term(CLASS_CONCEPT, name))} for label, name in enumerate(class_names)}
    for (label, term), rate in rates.items():
        if rate.class_rate == 1.0 and rate.other_rate == 0.0:
            own[label].add(term)
    return own


def _renderable(source, terms: pl.Series) -> list[str]:
    """The terms (single ``concept=value``) whose concept the source can change in its images."""
    out = []
    for term in terms.unique().to_list():
        parsed = parse(term)
        if isinstance(parsed, Term) and source.can_change(parsed.concept):
            out.append(term)
    return out


def class_audit(
    prepared: PreparedStudy,
    progress: Callable[[str], None] | None = None,
    extra: Sequence[tuple[int, str]] = (),
) -> Audit:
    """Every class's terms by relevance share, flagged where they look like a shortcut, with
    the causal checks of the flagged ones, of the co-occurring terms the source can render
    again, and of the ``(label, term)`` pairs in ``extra``."""
    say = progress or (lambda m: None)
    started = time.perf_counter()
    study, store = prepared.study, prepared.store
    cfg = study.audit
    rule = AuditRule(cfg.min_share, cfg.min_lift, cfg.min_cooccurrence)
    units, class_names, images = prepared.units, prepared.class_names, prepared.images
    with store.connect() as con:  # one connection for the audit's reads
        relevance = con.sql("SELECT label, neuron_id, share FROM class_relevance").pl()
        labels = con.sql("SELECT neuron_id, layer, formula FROM unit_labels").pl()
        counts = _spelled(con.sql(COUNTS_SQL).pl()).select("label", "term", "k")
        words = unit_terms(labels)
        sizes = dict(images.group_by("label").len("n").iter_rows())
        rates = rates_from_counts(counts, sizes)
        audit = audit_terms(
            layer_term_shares(relevance, words),
            units.layers,
            class_names,
            rates,
            own_terms(class_names, rates),
            rule,
        )
        checks = to_check(
            audit, extra, _renderable(prepared.source, audit.filter(pl.col("cooccurs"))["term"])
        )
        carrying = _carrying(con, checks.select("label", "term"))
    seconds = {"shares": time.perf_counter() - started}
    say(
        f"audit: {audit.height} class terms, {int(audit['flagged'].sum())} flagged by relevance, "
        f"{checks.height} checked"
    )
    t = time.perf_counter()
    results, shown = [], []
    groups = checks.group_by("label", maintain_order=True)
    for k, (label, part) in enumerate(groups):
        say(f"audit: checking {class_names[int(label[0])]} ({k + 1}/{checks['label'].n_unique()})")
        cp = _class_pass(prepared, int(label[0]), cfg.images_per_class)
        for row in part.iter_rows(named=True):
            got, images_of = _check(prepared, row, words, carrying, cp, cfg)
            results.append({"label": row["label"], "term": row["term"], **got})
            shown.extend((row["label"], row["term"], *x) for x in images_of)
        cp.fwd.release()
    seconds["checks"] = time.perf_counter() - t
    checked = pl.DataFrame(results, schema={"label": pl.Int32, "term": pl.String, **CHECK_COLUMNS})
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
    exemplars = pl.DataFrame(
        shown,
        schema={
            "label": pl.Int32,
            "term": pl.String,
            "rank": pl.Int32,
            "image_id": pl.Int64,
            "drop": pl.Float64,
            "thumb": pl.Binary,
        },
        orient="row",
    )
    return Audit(terms, exemplars, seconds)


def _logits(model, x: torch.Tensor, batch_size: int) -> np.ndarray:
    """The logits of ``x``, in batches, as float64."""
    out, device = [], device_of(model)
    with evaluating(model), torch.no_grad():
        for lo in range(0, len(x), batch_size):
            batch = x[lo : lo + batch_size].to(device)
            out.append(logits_of(model(batch)).double().cpu().numpy())
    return np.concatenate(out)


@dataclass
class _ClassPass:
    """A class's checked images (a seeded sample): ids, model input, the forward pass the
    ablations restart from, the clean logits and the logit each image is judged by (the
    class's where the model predicts the study's classes, else its own top logit)."""

    ids: np.ndarray
    pixels: np.ndarray
    x: torch.Tensor
    fwd: RetainedForward
    clean: np.ndarray
    target: np.ndarray
    predicts: bool


def _class_pass(prepared: PreparedStudy, label: int, count: int) -> _ClassPass:
    ids, pixels, x = class_images(
        prepared.study, label, prepared.images, prepared.source, prepared.bundle, count=count
    )
    units = prepared.units
    model = prepared.bundle.module
    # The ablations restart from these outputs; no gradient is needed, so no autograd graph.
    fwd = RetainedForward.run(model, units.layers, units.cluster_of, x, units.features, grad=False)
    clean = fwd.logits.double().cpu().numpy()
    predicts = clean.shape[1] == len(prepared.class_names)
    target = np.full(len(ids), label) if predicts else clean.argmax(axis=1)
    return _ClassPass(ids, pixels, x, fwd, clean, target, predicts)


def _check(prepared, row: dict, words, carrying, cp: _ClassPass, cfg):
    """One term's checks: the :data:`CHECK_COLUMNS` values and its images that mattered most.

    A flagged term (or one asked for) gets both checks. A co-occurring term that is not
    flagged gets the counterfactual first, and the ablation only where the counterfactual
    shows the model uses it (it is then flagged)."""
    out: dict[str, object] = dict.fromkeys(CHECK_COLUMNS)
    images_of: list[tuple[int, int, float, bytes]] = []
    if len(cp.ids):
        out.update(_counterfactual(prepared, row, carrying, cp, cfg))
        if row["flagged"] or row["wanted"] or out["counterfactual_confirms"]:
            got, images_of = _ablation(prepared, row, words, cp, cfg)
            out.update(got)
    out["confirmed"] = model_uses(out["ablation_confirms"], out["counterfactual_confirms"])
    return out, images_of


def _ablation(prepared, row: dict, words, cp: _ClassPass, cfg):
    """Zero the term's units at its top layer on the class's images, against as many random
    units (:data:`RANDOM_DRAWS` draws) and against the other classes' logits."""
    label, term, layer = int(row["label"]), str(row["term"]), row["top_layer"]
    if layer is None:
        return {}, []
    units = prepared.units
    neurons = words.filter((pl.col("term") == term) & (pl.col("layer") == layer))["neuron_id"]
    position = {int(u): i for i, u in enumerate(units.neuron_of[layer]) if u >= 0}
    idx = np.sort([position[int(u)] for u in neurons if int(u) in position])
    if not len(idx):
        return {}, []
    clean, target, n = cp.clean, cp.target, len(cp.ids)
    rows = np.arange(n)
    width = len(units.cluster_of[layer])
    rng = np.random.default_rng(seed_for(prepared.study, label, 11, len(idx)))
    sets = [idx] + [
        np.sort(rng.choice(width, size=len(idx), replace=False)) for _ in range(RANDOM_DRAWS)
    ]
    # Each row restarts at the layer: it costs the part of the network above it. An image's
    # rows are neighbours, so a feature layer's clean maps are encoded once per image and batch.
    got = ablate(
        prepared.bundle.module,
        cp.fwd,
        cp.x,
        [Row(int(i), layer, chosen) for i in rows for chosen in sets],
        batch_size=max(prepared.study.batch_size, 1),
    ).logits.reshape(n, len(sets), -1)
    after, random = got[:, 0], got[:, 1:].transpose(1, 0, 2)
    drop = clean[rows, target] - after[rows, target]
    random_drop = (clean[rows, target][None] - random[:, rows, target]).mean(axis=0)
    others = clean - after
    others[rows, target] = np.nan
    other_drop = np.nanmean(others, axis=1) if others.shape[1] > 1 else np.zeros(n)
    p_value = confirms_ablation(drop, random_drop, other_drop)
    out = {
        "ablation_units": len(idx),
        "ablation_images": n,
        "ablation_drop": float(drop.mean()),
        "ablation_other_drop": float(other_drop.mean()),
        "ablation_random_drop": float(random_drop.mean()),
        "ablation_p_value": p_value,
        "ablation_confirms": bool(
            drop.mean() > 0
            and drop.mean() >= MIN_RANDOM_RATIO * max(random_drop.mean(), 0.0)
            and p_value < CONFIRM_P
        ),
    }
    order = np.argsort(-drop, kind="stable")[: cfg.images_shown]
    shown = [
        (k + 1, int(cp.ids[i]), float(drop[i]), thumbnail(cp.pixels[i]))
        for k, i in enumerate(order)
    ]
    return out, shown


def _counterfactual(prepared, row: dict, carrying, cp: _ClassPass, cfg) -> dict:
    """Render the class's checked images that carry the term again with its concept changed
    (a source that can: the shapes world), and set the class's accuracy and logit beside the
    unchanged images'. Empty where the source cannot."""
    label, term = int(row["label"]), str(row["term"])
    concept, source = parse(term), prepared.source
    if not (isinstance(concept, Term) and source.can_change(concept.concept)):
        return {}
    holds = carrying.filter((pl.col("label") == label) & (pl.col("term") == term))
    held = set(holds["image_id"].to_list())
    mine = np.array([i for i, image in enumerate(cp.ids) if int(image) in held], dtype=int)
    out: dict[str, object] = {"counterfactual_images": len(mine)}
    if not len(mine):
        return out
    pixels, _ = source.counterfactual(
        cp.ids[mine].tolist(), concept.concept, seed_for(prepared.study, label, 12)
    )
    after = _logits(
        prepared.bundle.module,
        prepared.bundle.normalize(torch.from_numpy(pixels)),
        max(prepared.study.batch_size, 1),
    )
    before, t, at = cp.clean[mine], cp.target[mine], np.arange(len(mine))
    if cp.predicts:
        out["accuracy"] = float(np.mean(before.argmax(axis=1) == label))
        out["counterfactual_accuracy"] = float(np.mean(after.argmax(axis=1) == label))
    out["logit"] = float(before[at, t].mean())
    out["counterfactual_logit"] = float(after[at, t].mean())
    out["counterfactual_p_value"] = paired_p(before[at, t] - after[at, t])
    out["counterfactual_confirms"] = confirms_counterfactual(
        before[at, t], after[at, t], cfg.min_counterfactual_drop
    )
    return out


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
