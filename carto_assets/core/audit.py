"""What each class relies on: its relevance grouped by the terms of its units' words, and
which terms that are not the class's own look like a shortcut.

A unit's relevance for a class is its ``class_relevance.share`` (its share of its layer's
absolute relevance for the class's logit, averaged over the class's sampled images), clipped
at 0: what the prediction uses. It is split equally among the *positive* terms of the unit's
words (``unit_labels.formula``; a term under an odd number of NOTs is not what the unit
detects); a unit without words counts for no term. A term's share at a layer is the sum over
the layer's units, and its ``relevance_share`` is the mean over the study's unit layers (each
layer counts the same, so a term the early layers use weighs as much as one the last layer
uses).

A term is *flagged* (a candidate shortcut) when it is not the class's own, carries at least
``min_share`` of the class's relevance at its ``top_layer`` (the layer where its share is
largest: a shortcut is detected where the network detects it, and the mean over the layers
would dilute it by the layers that cannot), its ``relevance_share`` is at least ``min_lift``
times its mean over the other classes (the class leans on it more than the rest do: a colour
every class uses is not flagged), and holds on the class's images at least
``min_cooccurrence`` times as often as on the other classes' images (a shortcut is a
correlation in the data: a term the class's images never carry, such as another class's
shape, is a shared feature, not a shortcut).

A term that is not the class's own and co-occurs with it that way (``cooccurs``) is listed even
where no unit's words name it (with no relevance): a correlation the model may use through
units without words. Where the source can render the class's images again with such a term
changed, the counterfactual runs on it whether or not the relevance flags it, and flags it
where it confirms (``flagged_by = 'counterfactual'``): the words see only what they name, and
a shortcut carried by units without words would be missed otherwise.

The causal checks that confirm a flag are in :mod:`carto_assets.stages.class_audit`. This
module is plain maths over tables: no torch, no dagster.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import polars as pl

from carto_assets.core.words.formula import And, Formula, Not, Or, Term, parse, text


@dataclass(frozen=True)
class AuditRule:
    """The flag's thresholds (the study's ``audit`` block)."""

    min_share: float = 0.05
    min_lift: float = 2.0
    min_cooccurrence: float = 1.5


def positive_terms(formula: Formula) -> tuple[Term, ...]:
    """The terms a formula asserts: those under an even number of NOTs, in text order.

    >>> positive_terms(parse("shape=heart OR (colour=red AND NOT texture=dots)"))
    (Term(concept='shape', value='heart'), Term(concept='colour', value='red'))
    """
    found: dict[Term, None] = {}

    def walk(node: Formula, negated: bool) -> None:
        if isinstance(node, Term):
            if not negated:
                found.setdefault(node, None)
        elif isinstance(node, Not):
            walk(node.operand, not negated)
        elif isinstance(node, And | Or):
            for operand in node.operands:
                walk(operand, negated)
        else:
            raise TypeError(f"not a formula: {node!r}")

    walk(formula, False)
    return tuple(found)


def unit_terms(words: pl.DataFrame) -> pl.DataFrame:
    """Each worded unit's positive terms with its weight, one row per (unit, term).

    ``words``: ``neuron_id, layer, formula`` (NULL formula: no words). Returns ``neuron_id,
    layer, term, weight`` where ``weight`` is 1 over the unit's positive terms.
    """
    rows: list[tuple[int, str, str, float]] = []
    parsed: dict[str, tuple[str, ...]] = {}
    for neuron, layer, formula in words.select("neuron_id", "layer", "formula").iter_rows():
        if formula is None:
            continue
        if formula not in parsed:
            parsed[formula] = tuple(text(t) for t in positive_terms(parse(formula)))
        terms = parsed[formula]
        rows.extend((int(neuron), str(layer), t, 1.0 / len(terms)) for t in terms)
    return pl.DataFrame(
        rows,
        schema={"neuron_id": pl.Int64, "layer": pl.String, "term": pl.String, "weight": pl.Float64},
        orient="row",
    )


def layer_term_shares(relevance: pl.DataFrame, terms: pl.DataFrame) -> pl.DataFrame:
    """Per class, layer and term: the term's share of the layer's relevance and its units.

    ``relevance``: ``label, neuron_id, share`` (``class_relevance``); ``terms``:
    :func:`unit_terms`. Returns ``label, layer, term, share, units``.
    """
    return (
        relevance.select("label", "neuron_id", pl.col("share").clip(lower_bound=0.0))
        .join(terms, on="neuron_id", how="inner")
        .group_by("label", "layer", "term")
        .agg(
            (pl.col("share") * pl.col("weight")).sum().alias("share"),
            pl.len().cast(pl.Int32).alias("units"),
        )
    )


class Rate(NamedTuple):
    """How a term holds on a class's images against the other classes' images."""

    class_rate: float
    other_rate: float
    #: one-sided Fisher's exact test (hypergeometric) that the term holds on the class's images
    #: more often than on a random draw of as many of the study's images
    p_value: float


def term_rates(
    annotations: pl.DataFrame, image_labels: pl.DataFrame
) -> dict[tuple[int, str], Rate]:
    """Per (class, term): the share of the class's images where the term holds, the share of
    the other classes' images, and the p-value that the class carries it more than chance.

    ``annotations``: ``image_id, term`` (one row per image and term; repeats count once);
    ``image_labels``: ``image_id, label`` of every image.
    """
    counts = (
        annotations.unique(["image_id", "term"])
        .join(image_labels, on="image_id", how="inner")
        .group_by("label", "term")
        .len("k")
    )
    return rates_from_counts(counts, dict(image_labels.group_by("label").len("n").iter_rows()))


def rates_from_counts(
    counts: pl.DataFrame, sizes: Mapping[int, int]
) -> dict[tuple[int, str], Rate]:
    """:func:`term_rates` from ``counts`` (``label, term, k``: the class's images where the
    term holds, one row per pair with ``k`` > 0) and ``sizes`` (label -> its images), so the
    counting can happen in the database."""
    from scipy.stats import hypergeom

    total = int(sum(sizes.values()))
    term_total = counts.group_by("term").agg(pl.col("k").sum().alias("all"))
    labels = sorted(sizes)
    terms = term_total["term"].to_list()
    everywhere = dict(term_total.iter_rows())
    got = {(int(label), term): int(k) for label, term, k in counts.iter_rows()}
    keys = [(label, term) for label in labels for term in terms]
    k = np.array([got.get(key, 0) for key in keys], dtype=np.int64)
    n = np.array([sizes[label] for label, _ in keys], dtype=np.int64)
    held = np.array([everywhere[term] for _, term in keys], dtype=np.int64)
    p_values = hypergeom.sf(k - 1, total, held, n) if keys else np.zeros(0)
    out: dict[tuple[int, str], Rate] = {}
    for i, (label, term) in enumerate(keys):
        rest = total - n[i]
        out[(int(label), term)] = Rate(
            float(k[i] / n[i]) if n[i] else 0.0,
            float((held[i] - k[i]) / rest) if rest else 0.0,
            float(min(max(p_values[i], 0.0), 1.0)),
        )
    return out


def audit_terms(
    shares: pl.DataFrame,
    layers: Sequence[str],
    class_names: Sequence[str],
    rates: Mapping[tuple[int, str], Rate],
    own: Mapping[int, set[str]],
    rule: AuditRule,
) -> pl.DataFrame:
    """Per class, every term its units' words name (and its own terms where none of them is
    named), ranked and flagged.

    Parameters
    ----------
    shares
        :func:`layer_term_shares`.
    layers
        The study's unit layers (the mean is over all of them: a layer where no unit names the
        term adds 0).
    class_names
        Name of each label.
    rates
        :func:`term_rates`.
    own
        Per label, the terms that are the class's own.
    rule
        The thresholds.

    Returns
    -------
    polars.DataFrame
        ``label, class_name, term, own, rank, specific_rank, relevance_share, top_layer,
        top_layer_share, units, lift, excess_share, class_rate, other_rate, flagged``, by label
        then rank (``relevance_share``); ``specific_rank`` orders by ``excess_share``, the
        share beyond the other classes' mean: what the class relies on more than the rest.
    """
    n_layers = max(len(layers), 1)
    labels = list(range(len(class_names)))
    by_term: dict[str, dict[int, dict[str, tuple[float, int]]]] = {}
    for label, layer, term, share, units in shares.iter_rows():
        by_term.setdefault(term, {}).setdefault(int(label), {})[layer] = (float(share), int(units))
    mean: dict[tuple[int, str], float] = {}
    for term, per_label in by_term.items():
        for label in labels:
            at = per_label.get(label, {})
            mean[(label, term)] = sum(s for s, _ in at.values()) / n_layers
    # A correlation in the data has its row, named by some unit's words or not.
    level = cooccurrence_level(len(rates))
    correlated = cooccurring(rates, own, rule.min_cooccurrence)
    rows = []
    for label in labels:
        named = {t for t in by_term if label in by_term[t]}
        mine = set(own.get(label, ()))
        # The class's own row is always there: its named own terms, else all of them.
        terms = named | (mine if not named & mine else set()) | correlated.get(label, set())
        for term in terms:
            at = by_term.get(term, {}).get(label, {})
            share = mean.get((label, term), 0.0)
            others = [mean.get((other, term), 0.0) for other in labels if other != label]
            rest = float(np.mean(others)) if others else 0.0
            lift = share / rest if rest > 0 else (float("inf") if share > 0 else float("nan"))
            top = top_layer(at, layers)
            rate = rates.get((label, term), Rate(0.0, 0.0, 1.0))
            is_own = term in own.get(label, ())
            together = not is_own and cooccurs(rate, rule.min_cooccurrence, level)
            flagged = (
                together
                and (at[top][0] if top is not None else 0.0) >= rule.min_share
                and lift >= rule.min_lift
            )
            rows.append(
                (
                    label,
                    class_names[label],
                    term,
                    is_own,
                    share,
                    top,
                    at[top][0] if top is not None else 0.0,
                    at[top][1] if top is not None else 0,
                    lift,
                    share - rest,
                    rate.class_rate,
                    rate.other_rate,
                    rate.p_value,
                    together,
                    flagged,
                    "relevance" if flagged else None,
                )
            )
    frame = pl.DataFrame(
        rows,
        schema={
            "label": pl.Int32,
            "class_name": pl.String,
            "term": pl.String,
            "own": pl.Boolean,
            "relevance_share": pl.Float64,
            "top_layer": pl.String,
            "top_layer_share": pl.Float64,
            "units": pl.Int32,
            "lift": pl.Float64,
            "excess_share": pl.Float64,
            "class_rate": pl.Float64,
            "other_rate": pl.Float64,
            "cooccurrence_p": pl.Float64,
            "cooccurs": pl.Boolean,
            "flagged": pl.Boolean,
            "flagged_by": pl.String,
        },
        orient="row",
    )
    specific = frame.sort(["label", "excess_share", "term"], descending=[False, True, False])
    specific = specific.with_columns(
        specific_rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over("label")
    )
    ranked = specific.sort(["label", "relevance_share", "term"], descending=[False, True, False])
    return ranked.with_columns(
        rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over("label")
    ).select(
        "label",
        "class_name",
        "term",
        "own",
        "rank",
        "specific_rank",
        "relevance_share",
        "top_layer",
        "top_layer_share",
        "units",
        "lift",
        "excess_share",
        "class_rate",
        "other_rate",
        "cooccurrence_p",
        "cooccurs",
        "flagged",
        "flagged_by",
    )


def top_layer(at: Mapping[str, tuple[float, int]], layers: Sequence[str]) -> str | None:
    """The layer where a term carries most of a class's relevance (``at``: layer -> (share,
    units), :func:`layer_term_shares`' rows of one class and term); ties go to the earlier
    layer; None where no layer names the term."""
    return max(at, key=lambda x: (at[x][0], -layers.index(x) if x in layers else 0), default=None)


def cooccurring(
    rates: Mapping[tuple[int, str], Rate],
    own: Mapping[int, set[str]],
    min_cooccurrence: float,
    pairs: int | None = None,
) -> dict[int, set[str]]:
    """Per class, the terms that are not its own and co-occur with it beyond chance
    (:func:`cooccurs` at :func:`cooccurrence_level`): the only terms the audit can flag, known
    from the data before any relevance is measured. ``pairs``: the (class, term) pairs tested
    where ``rates`` holds only some of them (default: ``len(rates)``)."""
    level = cooccurrence_level(len(rates) if pairs is None else pairs)
    out: dict[int, set[str]] = {}
    for (label, term), rate in rates.items():
        if term not in own.get(label, ()) and cooccurs(rate, min_cooccurrence, level):
            out.setdefault(int(label), set()).add(term)
    return out


def cooccurrence_level(pairs: int) -> float:
    """The p-value below which a (class, term) pair's co-occurrence is significant:
    :data:`CONFIRM_P` over the number of pairs tested (Bonferroni), so that a study's many
    pairs do not turn chance into correlations (2,000 images: p about 0.005 by chance for a
    few of its 344 pairs)."""
    return CONFIRM_P / max(pairs, 1)


def cooccurs(rate: Rate, min_cooccurrence: float, level: float) -> bool:
    """The term holds on the class's images at least ``min_cooccurrence`` times as often as on
    the other classes' images (and at all), more than chance explains (``p_value`` below
    ``level``): a correlation in the data."""
    return (
        rate.class_rate > 0
        and rate.class_rate >= min_cooccurrence * rate.other_rate
        and rate.p_value < level
    )


def to_check(
    audit: pl.DataFrame,
    extra: Sequence[tuple[int, str]] = (),
    renderable: Collection[str] = (),
) -> pl.DataFrame:
    """The rows whose causal checks run: every flagged term, every co-occurring term in
    ``renderable`` (the terms the source can change in its images: the counterfactual decides
    whether the model uses them), and the ``(label, term)`` pairs asked for in ``extra`` (a
    benchmark's planted term, flagged or not). ``wanted`` marks the ``extra`` rows."""
    wanted = pl.DataFrame(
        list(extra), schema={"label": pl.Int32, "term": pl.String}, orient="row"
    ).with_columns(wanted=pl.lit(True))
    marked = audit.join(wanted, on=["label", "term"], how="left").with_columns(
        pl.col("wanted").fill_null(False)
    )
    return marked.filter(
        pl.col("flagged")
        | pl.col("wanted")
        | (pl.col("cooccurs") & pl.col("term").is_in(list(renderable)))
    )


def model_uses(ablation_confirms: bool | None, counterfactual_confirms: bool | None) -> bool | None:
    """Whether the checks say the model uses a term (``class_audit.confirmed``): the
    counterfactual's verdict where the source can render one (it changes the term in the input
    and nothing else: the direct test), else the ablation's (it tests the units the words name);
    None where neither ran."""
    return counterfactual_confirms if counterfactual_confirms is not None else ablation_confirms


#: A check confirms only where its paired one-sided test says so at this level.
CONFIRM_P = 0.01


def paired_p(differences: np.ndarray) -> float:
    """One-sided Wilcoxon signed-rank p-value that the per-image ``differences`` are above 0
    (1.0 when there is nothing to test: fewer than 2 images or all differences 0)."""
    from scipy.stats import wilcoxon

    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) < 2 or not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d, alternative="greater").pvalue)


def confirms_ablation(drop: np.ndarray, random_drop: np.ndarray, other_drop: np.ndarray) -> float:
    """The p-value that zeroing the term's units drops the class's logit more than as many
    random units do and more than the other classes' logits drop (per image, paired): the
    larger of the two one-sided tests. The ablation confirms where it is below
    :data:`CONFIRM_P` and the mean drop is positive."""
    return max(paired_p(drop - random_drop), paired_p(drop - other_drop))


def confirms_counterfactual(logit: np.ndarray, changed: np.ndarray, min_drop: float) -> bool:
    """Changing the term's value in the class's images drops the class's mean logit by at
    least ``min_drop`` of its size, and per image significantly (paired, one-sided)."""
    logit, changed = np.asarray(logit, np.float64), np.asarray(changed, np.float64)
    if not len(logit):
        return False
    before, after = float(logit.mean()), float(changed.mean())
    return bool(before - after >= min_drop * abs(before) and paired_p(logit - changed) < CONFIRM_P)
