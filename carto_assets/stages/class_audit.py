"""The ``class_audit`` stage: what each class's prediction relies on, grouped by the words of
its units, the terms that look like a shortcut, and the causal checks that confirm them.

The shares and the flag are :mod:`carto_assets.core.audit`'s. For every flagged term two checks
say whether the model *uses* the term or the term only co-occurs with the class:

* ablation (any study): the term's units at the layer where it carries most of the class's
  relevance are zeroed on the class's sampled images (``audit.images_per_class``); the class
  logit's drop is set beside the other classes' logits' drop on the same images and beside the
  drop when as many random units of the layer are zeroed (mean of ``RANDOM_DRAWS`` draws);
* counterfactual (a source that renders its images, the ``shapes`` world): the class's sampled
  images that carry the term are rendered again with the term's concept changed (each image to
  a seeded other value, all else the same), and the class's accuracy and mean logit are set
  beside those of the unchanged images.

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
    audit_terms,
    confirms_ablation,
    confirms_counterfactual,
    layer_term_shares,
    paired_p,
    term_rates,
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


def _annotation_terms(store) -> pl.DataFrame:
    """``image_id, term`` of every annotation row, the term written as the words write it."""
    rows = store.query("SELECT image_id, concept, value FROM image_annotations")
    pairs = rows.select("concept", "value").unique()
    spelled = pairs.with_columns(
        term=pl.Series([text(Term(c, v)) for c, v in pairs.iter_rows()], dtype=pl.String)
    )
    return rows.join(spelled, on=["concept", "value"]).select("image_id", "term")


def own_terms(
    class_names: list[str], rates: dict[tuple[int, str], tuple[float, float]]
) -> dict[int, set[str]]:
    """Per class, its own terms: ``class=<name>``, and any term that holds on exactly the
    class's images (the shapes world's ``shape=<class>``, a user's column that repeats the
    class)."""
    own = {label: {text(Term(CLASS_CONCEPT, name))} for label, name in enumerate(class_names)}
    for (label, term), (inside, outside) in rates.items():
        if inside == 1.0 and outside == 0.0:
            own[label].add(term)
    return own


def class_audit(
    prepared: PreparedStudy,
    progress: Callable[[str], None] | None = None,
    extra: Sequence[tuple[int, str]] = (),
) -> Audit:
    """Every class's terms by relevance share, flagged where they look like a shortcut, with
    the causal checks of the flagged ones (and of the ``(label, term)`` pairs in ``extra``)."""
    say = progress or (lambda m: None)
    started = time.perf_counter()
    study, store = prepared.study, prepared.store
    cfg = study.audit
    rule = AuditRule(cfg.min_share, cfg.min_lift, cfg.min_cooccurrence)
    units, class_names, images = prepared.units, prepared.class_names, prepared.images
    relevance = store.query("SELECT label, neuron_id, share FROM class_relevance")
    words = unit_terms(store.query("SELECT neuron_id, layer, formula FROM unit_labels"))
    annotations = _annotation_terms(store)
    rates = term_rates(annotations, images.select("image_id", "label"))
    audit = audit_terms(
        layer_term_shares(relevance, words),
        units.layers,
        class_names,
        rates,
        own_terms(class_names, rates),
        rule,
    )
    seconds = {"shares": time.perf_counter() - started}
    checks = to_check(audit, extra)
    say(
        f"audit: {audit.height} class terms, {int(audit['flagged'].sum())} flagged, "
        f"{checks.height} checked"
    )
    t = time.perf_counter()
    results, shown = [], []
    groups = checks.group_by("label", maintain_order=True)
    for k, (label, part) in enumerate(groups):
        say(f"audit: checking {class_names[int(label[0])]} ({k + 1}/{checks['label'].n_unique()})")
        cp = _class_pass(prepared, int(label[0]), cfg.images_per_class)
        for row in part.iter_rows(named=True):
            got, images_of = _check(prepared, row, words, annotations, cp, cfg)
            results.append({"label": row["label"], "term": row["term"], **got})
            shown.extend((row["label"], row["term"], *x) for x in images_of)
        cp.fwd.release()
    seconds["checks"] = time.perf_counter() - t
    checked = pl.DataFrame(results, schema={"label": pl.Int32, "term": pl.String, **CHECK_COLUMNS})
    terms = audit.join(checked.with_columns(checked=pl.lit(True)), on=["label", "term"], how="left")
    terms = terms.with_columns(pl.col("checked").fill_null(False)).select(
        *audit.columns, "checked", *CHECK_COLUMNS
    )
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
    ablations restart from, and the clean logits."""

    ids: np.ndarray
    pixels: np.ndarray
    x: torch.Tensor
    fwd: RetainedForward
    clean: np.ndarray


def _class_pass(prepared: PreparedStudy, label: int, count: int) -> _ClassPass:
    ids, pixels, x = class_images(
        prepared.study, label, prepared.images, prepared.source, prepared.bundle, count=count
    )
    units = prepared.units
    model = prepared.bundle.module
    # The ablations restart from these outputs; no gradient is needed, so no autograd graph.
    fwd = RetainedForward.run(model, units.layers, units.cluster_of, x, units.features, grad=False)
    return _ClassPass(ids, pixels, x, fwd, fwd.logits.double().cpu().numpy())


def _check(prepared, row: dict, words, annotations, cp: _ClassPass, cfg):
    """One term's checks: the :data:`CHECK_COLUMNS` values and its images that mattered most."""
    label, term, layer = int(row["label"]), str(row["term"]), row["top_layer"]
    ids, clean, n = cp.ids, cp.clean, len(cp.ids)
    units, model = prepared.units, prepared.bundle.module
    batch_size = max(prepared.study.batch_size, 1)
    predict = clean.shape[1] == len(prepared.class_names)
    target = np.full(n, label) if predict else clean.argmax(axis=1)
    rows = np.arange(n)
    out: dict[str, object] = dict.fromkeys(CHECK_COLUMNS)
    images_of: list[tuple[int, int, float, bytes]] = []
    confirms: list[bool] = []
    if layer is not None and n:
        neurons = words.filter((pl.col("term") == term) & (pl.col("layer") == layer))["neuron_id"]
        position = {int(u): i for i, u in enumerate(units.neuron_of[layer]) if u >= 0}
        idx = np.sort([position[int(u)] for u in neurons if int(u) in position])
        if len(idx):
            width = len(units.cluster_of[layer])
            rng = np.random.default_rng(seed_for(prepared.study, label, 11, len(idx)))
            sets = [idx] + [
                np.sort(rng.choice(width, size=len(idx), replace=False))
                for _ in range(RANDOM_DRAWS)
            ]
            # Each row restarts at the layer: it costs the part of the network above it.
            got = ablate(
                model,
                cp.fwd,
                cp.x,
                [Row(int(i), layer, chosen) for chosen in sets for i in rows],
                batch_size=batch_size,
            ).logits
            after, random = got[:n], got[n:].reshape(RANDOM_DRAWS, n, -1)
            drop = clean[rows, target] - after[rows, target]
            random_drop = (clean[rows, target][None] - random[:, rows, target]).mean(axis=0)
            others = clean - after
            others[rows, target] = np.nan
            other_drop = np.nanmean(others, axis=1) if others.shape[1] > 1 else np.zeros(n)
            p_value = confirms_ablation(drop, random_drop, other_drop)
            out.update(
                ablation_units=len(idx),
                ablation_images=n,
                ablation_drop=float(drop.mean()),
                ablation_other_drop=float(other_drop.mean()),
                ablation_random_drop=float(random_drop.mean()),
                ablation_p_value=p_value,
                ablation_confirms=bool(
                    drop.mean() > 0
                    and drop.mean() >= MIN_RANDOM_RATIO * max(random_drop.mean(), 0.0)
                    and p_value < CONFIRM_P
                ),
            )
            confirms.append(bool(out["ablation_confirms"]))
            order = np.argsort(-drop, kind="stable")[: cfg.images_shown]
            images_of = [
                (k + 1, int(ids[i]), float(drop[i]), thumbnail(cp.pixels[i]))
                for k, i in enumerate(order)
            ]
    concept = parse(term)
    source = prepared.source
    if isinstance(concept, Term) and source.can_change(concept.concept) and n:
        carrying = set(annotations.filter(pl.col("term") == term)["image_id"].to_list())
        mine = np.array([i for i, image in enumerate(ids) if int(image) in carrying], dtype=int)
        out["counterfactual_images"] = len(mine)
        if len(mine):
            pixels, _ = source.counterfactual(
                ids[mine].tolist(), concept.concept, seed_for(prepared.study, label, 12)
            )
            changed = _logits(
                model, prepared.bundle.normalize(torch.from_numpy(pixels)), batch_size
            )
            before, after = clean[mine], changed
            t = target[mine]
            if predict:
                out["accuracy"] = float(np.mean(before.argmax(axis=1) == label))
                out["counterfactual_accuracy"] = float(np.mean(after.argmax(axis=1) == label))
            out["logit"] = float(before[np.arange(len(mine)), t].mean())
            out["counterfactual_logit"] = float(after[np.arange(len(mine)), t].mean())
            out["counterfactual_p_value"] = paired_p(
                before[np.arange(len(mine)), t] - after[np.arange(len(mine)), t]
            )
            out["counterfactual_confirms"] = confirms_counterfactual(
                before[np.arange(len(mine)), t],
                after[np.arange(len(mine)), t],
                cfg.min_counterfactual_drop,
            )
            confirms.append(bool(out["counterfactual_confirms"]))
    out["confirmed"] = all(confirms) if confirms else None
    return out, images_of


def audit_figures(audit: Audit) -> list[Figure]:
    """The ``class_audit`` asset's ``study_quality`` rows: classes flagged, and how many
    flags both causal checks confirm."""
    flagged = audit.terms.filter(pl.col("flagged"))
    classes = flagged["label"].n_unique()
    confirmed = int(flagged["confirmed"].fill_null(False).sum())
    names = flagged.unique("label", maintain_order=True)["class_name"].to_list()
    listed = ", ".join(names[:5]) + (", …" if len(names) > 5 else "")
    return [
        Figure(
            "classes_flagged",
            classes,
            "classes with a term that is not their own carrying a flagged share of their "
            "relevance (a candidate shortcut; class_audit.flagged)",
            name="classes flagged",
            shown=f"{classes} of {audit.terms['label'].n_unique()}"
            + (f" ({listed}); {confirmed} of {flagged.height} flags confirmed" if classes else ""),
        ),
        Figure(
            "flags_confirmed",
            confirmed,
            "flagged terms whose causal checks (ablation, and the counterfactual where the "
            "source renders one) all confirm that the model uses them",
        ),
    ]
