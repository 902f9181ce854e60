"""The class audit's causal checks, and the part of them that runs inside the concept graph's
class chunks.

Two checks say whether the model *uses* a term or the term only co-occurs with the class:

* counterfactual (a source that renders its images, the ``shapes`` world): a seeded sample of
  the class's images that carry the term (as many as the checked images) is rendered again with
  the term's concept changed (each image to a seeded other value, all else the same), and the
  class's accuracy and mean logit are set beside those of the unchanged images;
* ablation (any study): the term's units at the layer where it carries most of the class's
  relevance are zeroed on the class's checked images; the class logit's drop is set beside the
  other classes' logits' drop on the same images and beside the drop when as many random units
  of the layer are zeroed (mean of :data:`RANDOM_DRAWS` draws).

**Where they run.** Only a term that co-occurs with a class beyond chance can be flagged
(:func:`carto_assets.core.audit.cooccurring`), and that is known from the annotations before
any relevance is measured. So the concept graph's chunk (:class:`Auditor`) checks each of its
classes' co-occurring terms right after the class's graph, on the graph's own sampled images
and forward pass (``audit.images_per_class`` null, the default) or on a sample of that many
images of its own: the counterfactual wherever the source can render the term, the ablation
where the term carries at least ``audit.min_share`` of the class's relevance at its top layer
(a flag by relevance needs that; the lift over the other classes is known only once every
chunk is done) or where the counterfactual confirms. The ``class_audit`` stage flags the terms
over all classes, keeps the chunks' checks of the rows it checks, and runs the checks itself
only for rows no chunk checked (a benchmark's extra pairs, chunks written with the audit off).

No dagster imports.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
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
    Rate,
    confirms_ablation,
    confirms_counterfactual,
    cooccurring,
    layer_term_shares,
    model_uses,
    paired_p,
    rates_from_counts,
    top_layer,
    unit_terms,
)
from carto_assets.core.words.formula import Term, parse, text
from carto_assets.sources.annotations import CLASS_CONCEPT
from carto_assets.stages.class_sample import class_images
from carto_assets.stages.concept_graph_checks import seed_for
from carto_assets.stages.explanation_chunk import thumbnail

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

#: A chunk's checks: one row per (class, co-occurring term) with the layer its ablation used
#: and the :func:`checks_key` they were made under.
CHECKS_SCHEMA: dict[str, pl.DataType] = {
    "label": pl.Int32,
    "term": pl.String,
    "top_layer": pl.String,
    **CHECK_COLUMNS,
    "checks_key": pl.String,
}
#: Per checked term, the class's images where zeroing its units dropped the logit most.
IMAGES_SCHEMA: dict[str, pl.DataType] = {
    "label": pl.Int32,
    "term": pl.String,
    "rank": pl.Int32,
    "image_id": pl.Int64,
    "drop": pl.Float64,
    "thumb": pl.Binary,
}
#: The chunk folder's audit tables (Parquet beside the graph's; absent with the audit off).
TABLES = ("audit_checks", "audit_check_images")

#: Per class and annotation value, its images (counted in the database: no per-image rows
#: reach Python, whatever the dataset's size).
#: Each (class, annotation value)'s image count, as the ``images`` asset stores it.
COUNTS_SQL = "SELECT label, concept, value, n_images AS k FROM annotation_counts"


def _spelled(rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` with ``concept, value`` replaced by ``term``, written as the words write it."""
    pairs = rows.select("concept", "value").unique()
    spelled = pairs.with_columns(
        term=pl.Series([text(Term(c, v)) for c, v in pairs.iter_rows()], dtype=pl.String)
    )
    return rows.join(spelled, on=["concept", "value"]).drop("concept", "value")


def own_terms(class_names: list[str], rates: dict[tuple[int, str], Rate]) -> dict[int, set[str]]:
    """Per class, its own terms: ``class=<name>``, and any term that holds on exactly the
    class's images (the shapes world's ``shape=<class>``, a user's column that repeats the
    class)."""
    own = {label: {text(Term(CLASS_CONCEPT, name))} for label, name in enumerate(class_names)}
    for label, terms in exact_terms(rates).items():
        own.setdefault(label, set()).update(terms)
    return own


def exact_terms(rates: dict[tuple[int, str], Rate]) -> dict[int, set[str]]:
    """Per class, the terms that hold on exactly its images."""
    out: dict[int, set[str]] = {}
    for (label, term), rate in rates.items():
        if rate.class_rate == 1.0 and rate.other_rate == 0.0:
            out.setdefault(label, set()).add(term)
    return out


@dataclass(frozen=True)
class Inputs:
    """What the audit reads besides the relevance: the units' positive terms
    (:func:`~carto_assets.core.audit.unit_terms`), each (class, term)'s rates and each
    class's own terms."""

    words: pl.DataFrame
    rates: dict[tuple[int, str], Rate]
    own: dict[int, set[str]]
    #: :func:`labels_key` of ``unit_labels``
    words_key: str


def read_inputs(con, images: pl.DataFrame, class_names: list[str]) -> Inputs:
    """:class:`Inputs` from an open connection (``unit_labels``, ``image_annotations``)."""
    labels = con.sql("SELECT neuron_id, layer, formula FROM unit_labels").pl()
    counts = _spelled(con.sql(COUNTS_SQL).pl()).select("label", "term", "k")
    sizes = dict(images.group_by("label").len("n").iter_rows())
    rates = rates_from_counts(counts, sizes)
    return Inputs(unit_terms(labels), rates, own_terms(class_names, rates), labels_key(labels))


def read_candidates(
    con, images: pl.DataFrame, min_cooccurrence: float
) -> tuple[pl.DataFrame, dict[int, set[str]], str]:
    """The candidate terms' units, per class the terms that co-occur with it, and
    :func:`labels_key` of the words: what
    :func:`read_inputs` and :func:`~carto_assets.core.audit.cooccurring` give, without the
    ``class=`` terms' rates (each holds on its own class only: never another class's
    co-occurring term; a study with only those, an image folder without annotations, has
    none), so a chunk of an ImageNet-sized study does not score 1,000 x 1,000 pairs. The
    correction still counts every (class, term) pair."""
    labels = con.sql("SELECT neuron_id, layer, formula FROM unit_labels").pl()
    counts = con.sql(COUNTS_SQL).pl()
    n_terms = counts.select("concept", "value").n_unique()
    sizes = dict(images.group_by("label").len("n").iter_rows())
    rest = counts.filter(pl.col("concept") != CLASS_CONCEPT)
    together: dict[int, set[str]] = {}
    if not rest.is_empty():
        rates = rates_from_counts(_spelled(rest).select("label", "term", "k"), sizes)
        together = cooccurring(
            rates, exact_terms(rates), min_cooccurrence, pairs=len(sizes) * n_terms
        )
    # Only the formulas that spell a candidate term are parsed (its units are what a check
    # zeroes); the key is of every unit's formula.
    wanted = sorted(set().union(*together.values())) if together else []
    spelled = (
        labels.filter(pl.col("formula").is_not_null() & pl.col("formula").str.contains_any(wanted))
        if wanted
        else labels.clear()
    )
    return unit_terms(spelled), together, labels_key(labels)


def labels_key(labels: pl.DataFrame) -> str:
    """A digest of ``unit_labels``' ``neuron_id, layer, formula`` (which units say what)."""
    import hashlib

    rows = labels.select("neuron_id", "layer", "formula").sort("neuron_id")
    return hashlib.sha256(rows.write_csv().encode()).hexdigest()[:16]


def checks_key(study, words: str) -> str:
    """What a chunk's checks depend on beyond the graph's pass and relevance: the audit's
    settings, the graph's sample size, the seed and the units' words (``words``:
    :func:`labels_key`). A chunk whose checks
    carry another key (written before the settings or the words changed) is not used: the
    stage checks those rows itself."""
    import hashlib
    import json

    payload = json.dumps(
        {
            "audit": study.audit.model_dump(mode="json"),
            "graph_images": study.graph.images_per_class,
            "seed": study.seed,
        },
        sort_keys=True,
    ).encode()
    return hashlib.sha256(payload + words.encode()).hexdigest()[:16]


def carrying(con, wanted: pl.DataFrame) -> pl.DataFrame:
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


def renderable(source, terms: Iterable[str]) -> list[str]:
    """The terms (single ``concept=value``) whose concept the source can change in its images."""
    out = []
    for term in dict.fromkeys(terms):
        parsed = parse(term)
        if isinstance(parsed, Term) and source.can_change(parsed.concept):
            out.append(term)
    return out


# ---- one class's checked images -------------------------------------------------------------
def _logits(model, x: torch.Tensor, batch_size: int) -> np.ndarray:
    """The logits of ``x``, in batches, as float64."""
    out, device = [], device_of(model)
    with evaluating(model), torch.no_grad():
        for lo in range(0, len(x), batch_size):
            batch = x[lo : lo + batch_size].to(device)
            out.append(logits_of(model(batch)).double().cpu().numpy())
    return np.concatenate(out)


@dataclass
class ClassPass:
    """A class's checked images: ids, pixels, model input, the forward pass the ablations
    restart from, the clean logits and the logit each image is judged by (the class's where
    the model predicts the study's classes, else its own top logit)."""

    ids: np.ndarray
    pixels: np.ndarray
    x: torch.Tensor
    fwd: RetainedForward
    clean: np.ndarray
    target: np.ndarray
    predicts: bool

    @classmethod
    def of(cls, prepared: PreparedStudy, label: int, ids, pixels, x, fwd) -> ClassPass:
        """The checks' view of a pass already run (the concept graph's)."""
        clean = fwd.logits.detach().double().cpu().numpy()
        predicts = clean.shape[1] == len(prepared.class_names)
        target = np.full(len(ids), label) if predicts else clean.argmax(axis=1)
        return cls(np.asarray(ids), pixels, x, fwd, clean, target, predicts)

    @classmethod
    def drawn(cls, prepared: PreparedStudy, label: int, count: int) -> ClassPass:
        """``count`` seeded images of the class and their own forward pass (no gradient)."""
        ids, pixels, x = class_images(
            prepared.study, label, prepared.images, prepared.source, prepared.bundle, count=count
        )
        units = prepared.units
        fwd = RetainedForward.run(
            prepared.bundle.module, units.layers, units.cluster_of, x, units.features, grad=False
        )
        return cls.of(prepared, label, ids, pixels, x, fwd)


def check(
    prepared: PreparedStudy,
    label: int,
    term: str,
    layer: str | None,
    ablate_first: bool,
    words: pl.DataFrame,
    held: set[int],
    cp: ClassPass,
) -> tuple[dict[str, object], list[tuple[int, int, float, bytes]]]:
    """One term's checks on the class's images: the :data:`CHECK_COLUMNS` values and its
    images that mattered most (rank, image, drop, thumbnail).

    The counterfactual runs where the source can render the term (on the images in ``held``,
    those that carry it); the ablation (at ``layer``) where ``ablate_first`` or where the
    counterfactual shows the model uses the term."""
    out: dict[str, object] = dict.fromkeys(CHECK_COLUMNS)
    images_of: list[tuple[int, int, float, bytes]] = []
    if len(cp.ids):
        out.update(_counterfactual(prepared, label, term, held, cp))
        if ablate_first or out["counterfactual_confirms"]:
            got, images_of = _ablation(prepared, label, term, layer, words, cp)
            out.update(got)
    out["confirmed"] = model_uses(out["ablation_confirms"], out["counterfactual_confirms"])
    return out, images_of


def _ablation(prepared, label: int, term: str, layer: str | None, words, cp: ClassPass):
    """Zero the term's units at its top layer on the class's images, against as many random
    units (:data:`RANDOM_DRAWS` draws) and against the other classes' logits."""
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
    order = np.argsort(-drop, kind="stable")[: prepared.study.audit.images_shown]
    shown = [
        (k + 1, int(cp.ids[i]), float(drop[i]), thumbnail(cp.pixels[i]))
        for k, i in enumerate(order)
    ]
    return out, shown


def _counterfactual(prepared, label: int, term: str, held: set[int], cp: ClassPass) -> dict:
    """Render images of the class that carry the term again with its concept changed (a
    source that can: the shapes world), and set the class's accuracy and logit beside the
    unchanged images'. Empty where the source cannot.

    The images are the checked images (``cp``) that carry the term (``held``), topped up with
    a seeded sample of the class's other carrying images to as many as the checked images, so
    a term that holds on half the class is tested on as many images as one that holds on all
    of it (a paired test on 16 images can reach p = 1.5e-5; on the 7 or so of 16 checked
    images that would carry it at share 0.5, no lower than 0.008)."""
    concept, source = parse(term), prepared.source
    if not (isinstance(concept, Term) and source.can_change(concept.concept)):
        return {}
    pool = np.array(sorted(held), dtype=np.int64)
    if not len(pool):
        return {"counterfactual_images": 0}
    # The checked images that carry the term first (their logits are known), then a seeded
    # sample of the class's other carrying images, up to as many as the checked images.
    known = np.flatnonzero(np.isin(cp.ids, pool))
    rest = np.setdiff1d(pool, cp.ids[known])
    rng = np.random.default_rng(seed_for(prepared.study, label, 13))
    more = np.sort(rng.choice(rest, size=min(len(rest), len(cp.ids) - len(known)), replace=False))
    model, batch = prepared.bundle.module, max(prepared.study.batch_size, 1)
    extra, ok = source.load_many(more.tolist(), workers=4) if len(more) else (None, [])
    more = more[np.asarray(ok, dtype=bool)] if len(more) else more
    pick = np.concatenate([cp.ids[known], more]).astype(np.int64)
    out: dict[str, object] = {"counterfactual_images": len(pick)}
    if not len(pick):
        return out
    before = cp.clean[known]
    if len(more):
        fresh = _logits(model, prepared.bundle.normalize(torch.from_numpy(extra)), batch)
        before = np.concatenate([before, fresh])
    changed, _ = source.counterfactual(
        pick.tolist(), concept.concept, seed_for(prepared.study, label, 12)
    )
    after = _logits(model, prepared.bundle.normalize(torch.from_numpy(changed)), batch)
    at = np.arange(len(pick))
    t = np.full(len(pick), label) if cp.predicts else before.argmax(axis=1)
    if not cp.predicts:  # the checked images' own top logit, as the ablation judges them
        t[: len(known)] = cp.target[known]
    if cp.predicts:
        out["accuracy"] = float(np.mean(before.argmax(axis=1) == label))
        out["counterfactual_accuracy"] = float(np.mean(after.argmax(axis=1) == label))
    out["logit"] = float(before[at, t].mean())
    out["counterfactual_logit"] = float(after[at, t].mean())
    out["counterfactual_p_value"] = paired_p(before[at, t] - after[at, t])
    out["counterfactual_confirms"] = confirms_counterfactual(
        before[at, t], after[at, t], prepared.study.audit.min_counterfactual_drop
    )
    return out


def frames(
    rows: list[dict], shown: list[tuple], key: str | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The checks' rows (:data:`CHECKS_SCHEMA`) and images (:data:`IMAGES_SCHEMA`, with
    ``checks_key``) as tables, made under ``key``."""
    checks = pl.DataFrame(
        [{**{c: r.get(c) for c in CHECKS_SCHEMA}, "checks_key": key} for r in rows],
        schema=CHECKS_SCHEMA,
    )
    images = pl.DataFrame(shown, schema=IMAGES_SCHEMA, orient="row")
    return checks, images.with_columns(checks_key=pl.lit(key, dtype=pl.String))


# ---- inside the concept graph's chunk -------------------------------------------------------
@dataclass
class Auditor:
    """The audit's checks of a chunk's classes, on the concept graph's passes."""

    prepared: PreparedStudy
    words: pl.DataFrame
    #: per label of the chunk, its co-occurring terms (sorted)
    terms: dict[int, list[str]]
    #: ``label, term, image_id`` of the chunk's co-occurring pairs
    held: pl.DataFrame
    #: :func:`checks_key` of the study's settings and words
    key: str
    rows: list[dict] = field(default_factory=list)
    shown: list[tuple] = field(default_factory=list)

    @classmethod
    def for_chunk(cls, prepared: PreparedStudy, labels: Sequence[int]) -> Auditor | None:
        """The auditor of the classes ``labels``; None where the study has no audit (or no
        words: ``labels.enabled`` false)."""
        study, store = prepared.study, prepared.store
        if not (study.audit.enabled and study.labels.enabled):
            return None
        with store.connect() as con:
            present = {
                row[0]
                for row in con.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'carto'"
                ).fetchall()
            }
            # `annotation_counts`: a database the images asset wrote before it has none
            # (the stage then checks every row itself)
            if not {"unit_labels", "image_annotations", "annotation_counts"} <= present:
                return None
            words, together, words_key = read_candidates(
                con, prepared.images, study.audit.min_cooccurrence
            )
            terms = {int(k): sorted(together.get(int(k), ())) for k in labels}
            pairs = pl.DataFrame(
                [(k, t) for k, ts in terms.items() for t in ts],
                schema={"label": pl.Int32, "term": pl.String},
                orient="row",
            )
            held = carrying(con, pairs)
        return cls(prepared, words, terms, held, checks_key(study, words_key))

    def check(
        self, label: int, ids, pixels, x, fwd: RetainedForward, relevance: pl.DataFrame
    ) -> None:
        """Check the class's co-occurring terms; ``relevance``: the class's ``neuron_id,
        share`` (its ``class_relevance`` rows); ``ids, pixels, x, fwd``: the graph's pass."""
        terms = self.terms.get(int(label), [])
        if not terms or not len(ids):
            return
        prepared, cfg = self.prepared, self.prepared.study.audit
        cp: ClassPass | None = None
        drawable = set(renderable(prepared.source, terms))
        layers = prepared.units.layers
        shares = layer_term_shares(
            relevance.select("neuron_id", "share").with_columns(label=pl.lit(label)),
            self.words.filter(pl.col("term").is_in(terms)),
        )
        at: dict[str, dict[str, tuple[float, int]]] = {}
        for _, layer, term, share, units in shares.iter_rows():
            at.setdefault(term, {})[layer] = (float(share), int(units))
        mine = self.held.filter(pl.col("label") == label)
        for term in terms:
            top = top_layer(at.get(term, {}), layers)
            top_share = at[term][top][0] if top is not None else 0.0
            ablate_first = top_share >= cfg.min_share
            if not (ablate_first or term in drawable):
                continue  # neither check can run: the stage does not check it either
            if cp is None:  # the class's checked images, on the first term that needs them
                if cfg.images_per_class is None:
                    cp = ClassPass.of(prepared, label, ids, pixels, x, fwd)
                else:
                    cp = ClassPass.drawn(prepared, label, cfg.images_per_class)
            held = set(mine.filter(pl.col("term") == term)["image_id"].to_list())
            got, images_of = check(prepared, label, term, top, ablate_first, self.words, held, cp)
            self.rows.append({"label": label, "term": term, "top_layer": top, **got})
            self.shown.extend((label, term, *x) for x in images_of)
        if cp is not None and cp.fwd is not fwd:
            cp.fwd.release()

    def tables(self) -> dict[str, pl.DataFrame]:
        checks, images = frames(self.rows, self.shown, self.key)
        return {"audit_checks": checks, "audit_check_images": images}
