"""The audit's maths (carto_assets.core.audit) against plain loops over small hand-made tables."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy.stats import fisher_exact, wilcoxon

from carto_assets.core.audit import (
    AuditRule,
    Rate,
    audit_terms,
    confirms_counterfactual,
    cooccurrence_level,
    layer_term_shares,
    model_uses,
    paired_p,
    positive_terms,
    term_rates,
    to_check,
    unit_terms,
)
from carto_assets.core.words.formula import Term, parse


def test_positive_terms_leave_out_what_is_under_an_odd_number_of_nots():
    f = parse("shape=heart OR (colour=red AND NOT texture=dots) OR NOT (NOT size=large)")
    assert positive_terms(f) == (
        Term("shape", "heart"),
        Term("colour", "red"),
        Term("size", "large"),
    )
    assert positive_terms(parse("NOT shape=heart")) == ()


def test_unit_terms_split_a_unit_among_its_positive_terms():
    words = pl.DataFrame(
        {
            "neuron_id": [1, 2, 3, 4],
            "layer": ["a", "a", "b", "b"],
            "formula": ["shape=heart", "shape=heart OR texture=dots", None, "NOT colour=red"],
        }
    )
    got = {(n, t): w for n, _, t, w in unit_terms(words).iter_rows()}
    assert got == {(1, "shape=heart"): 1.0, (2, "shape=heart"): 0.5, (2, "texture=dots"): 0.5}


def _reference_shares(relevance, words):
    """Plain loops: per (label, layer, term), sum of max(share, 0) / positive terms."""
    out: dict[tuple[int, str, str], float] = {}
    formula = {n: (layer, f) for n, layer, f in words.iter_rows()}
    for label, neuron, share in relevance.iter_rows():
        layer, f = formula.get(neuron, (None, None))
        if f is None:
            continue
        terms = [f"{t.concept}={t.value}" for t in positive_terms(parse(f))]
        for t in terms:
            key = (label, layer, t)
            out[key] = out.get(key, 0.0) + max(share, 0.0) / len(terms)
    return out


def test_layer_term_shares_equal_a_plain_loop():
    rng = np.random.default_rng(0)
    formulas = [
        "shape=heart",
        "texture=dots",
        "shape=heart OR texture=dots",
        None,
        "NOT size=large",
    ]
    words = pl.DataFrame(
        {
            "neuron_id": list(range(20)),
            "layer": ["a"] * 10 + ["b"] * 10,
            "formula": [formulas[i % len(formulas)] for i in range(20)],
        }
    )
    relevance = pl.DataFrame(
        {
            "label": np.repeat([0, 1], 20).astype(np.int32),
            "neuron_id": np.tile(np.arange(20), 2),
            "share": rng.normal(0.02, 0.05, 40),
        }
    )
    got = layer_term_shares(relevance, unit_terms(words))
    want = _reference_shares(relevance, words)
    assert {(a, b, c): pytest.approx(d) for a, b, c, d, _ in got.iter_rows()} == want


def test_term_rates_count_images_per_class():
    labels = pl.DataFrame({"image_id": [0, 1, 2, 3, 4], "label": [0, 0, 1, 1, 1]})
    ann = pl.DataFrame(
        {"image_id": [0, 0, 1, 2, 4, 4], "term": ["t=a", "t=a", "t=a", "t=a", "t=b", "t=a"]}
    )
    rates = term_rates(ann, labels)
    assert rates[(0, "t=a")][:2] == (1.0, pytest.approx(2 / 3))
    assert rates[(1, "t=a")][:2] == (pytest.approx(2 / 3), 1.0)
    assert rates[(0, "t=b")][:2] == (0.0, pytest.approx(1 / 3))
    assert rates[(0, "t=b")].p_value == pytest.approx(1.0)


def test_the_cooccurrence_p_value_is_scipys_one_sided_fisher_exact_test():
    rng = np.random.default_rng(3)
    labels = pl.DataFrame({"image_id": np.arange(300), "label": rng.integers(0, 3, 300)})
    # t=a is planted on class 0's images half the time, t=b is random
    holds_a = (labels["label"].to_numpy() == 0) & (rng.random(300) < 0.5) | (rng.random(300) < 0.1)
    holds_b = rng.random(300) < 0.2
    ann = pl.concat(
        [
            pl.DataFrame({"image_id": np.flatnonzero(holds_a), "term": "t=a"}),
            pl.DataFrame({"image_id": np.flatnonzero(holds_b), "term": "t=b"}),
        ]
    )
    rates = term_rates(ann, labels)
    y = labels["label"].to_numpy()
    for (label, term), rate in rates.items():
        holds = holds_a if term == "t=a" else holds_b
        inside, outside = y == label, y != label
        table = [
            [int((holds & inside).sum()), int((~holds & inside).sum())],
            [int((holds & outside).sum()), int((~holds & outside).sum())],
        ]
        assert rate.p_value == pytest.approx(fisher_exact(table, alternative="greater").pvalue)
    assert rates[(0, "t=a")].p_value < 1e-6 < rates[(0, "t=b")].p_value


def _shares(rows):
    return pl.DataFrame(
        rows, schema=["label", "layer", "term", "share", "units"], orient="row"
    ).with_columns(pl.col("label").cast(pl.Int32), pl.col("units").cast(pl.Int32))


def test_a_term_is_flagged_only_when_share_lift_and_cooccurrence_all_hold():
    # Two layers; class 0 leans on texture=dots (0.2 and 0.1 -> mean 0.15), class 1 barely.
    shares = _shares(
        [
            (0, "l1", "texture=dots", 0.2, 3),
            (0, "l2", "texture=dots", 0.1, 2),
            (1, "l1", "texture=dots", 0.02, 3),
            (0, "l1", "colour=red", 0.3, 1),  # large, but every class uses it: lift 1
            (1, "l1", "colour=red", 0.3, 1),
            (0, "l2", "shape=circle", 0.4, 4),  # large and specific, but never on class 0
            (0, "l2", "shape=heart", 0.5, 5),  # the class's own
        ]
    )
    rates = {
        (0, "texture=dots"): Rate(1.0, 0.05, 1e-30),
        (0, "colour=red"): Rate(0.12, 0.12, 0.5),
        (0, "shape=circle"): Rate(0.0, 0.5, 1.0),
        (0, "shape=heart"): Rate(1.0, 0.0, 1e-30),
    }
    own = {0: {"shape=heart", "class=heart"}, 1: {"shape=circle", "class=circle"}}
    got = audit_terms(shares, ["l1", "l2"], ["heart", "circle"], rates, own, AuditRule())
    mine = {r["term"]: r for r in got.filter(pl.col("label") == 0).iter_rows(named=True)}
    dots = mine["texture=dots"]
    assert dots["relevance_share"] == pytest.approx(0.15)
    assert dots["lift"] == pytest.approx(0.15 / 0.01)
    assert (dots["top_layer"], dots["top_layer_share"], dots["units"]) == ("l1", 0.2, 3)
    assert dots["flagged"]
    assert not mine["colour=red"]["flagged"] and mine["colour=red"]["lift"] == pytest.approx(1.0)
    assert not mine["shape=circle"]["flagged"]  # a shared feature, not a correlation
    assert mine["shape=heart"]["own"] and not mine["shape=heart"]["flagged"]
    assert "class=heart" not in mine  # an own term is named: the class term adds nothing
    assert [mine[t]["rank"] for t in ("shape=heart", "shape=circle", "texture=dots")] == [1, 2, 3]
    # Beyond the other classes' mean: colour=red (0.15 against 0.15) drops to the end.
    assert dots["excess_share"] == pytest.approx(0.15 - 0.01)
    assert mine["colour=red"]["excess_share"] == pytest.approx(0.0)
    assert mine["colour=red"]["specific_rank"] == 4
    # The class with no named own term still gets its own row.
    circle = got.filter(pl.col("label") == 1)["term"].to_list()
    assert "shape=circle" in circle and "class=circle" in circle
    # Thresholds move the flag.
    # The share that counts is the top layer's (0.2), not the mean over the layers (0.15).
    at_top = AuditRule(min_share=0.2)
    assert audit_terms(shares, ["l1", "l2"], ["heart", "circle"], rates, own, at_top)[
        "flagged"
    ].any()
    stricter = AuditRule(min_share=0.21)
    assert not audit_terms(shares, ["l1", "l2"], ["heart", "circle"], rates, own, stricter)[
        "flagged"
    ].any()
    checked = to_check(got, extra=[(0, "colour=red")])
    assert set(checked["term"]) == {"texture=dots", "colour=red"}


def test_lift_is_infinite_where_no_other_class_uses_the_term():
    shares = _shares([(0, "l1", "texture=dots", 0.2, 1)])
    got = audit_terms(
        shares, ["l1"], ["a", "b"], {(0, "texture=dots"): Rate(1.0, 0.0, 1e-9)}, {}, AuditRule()
    )
    row = got.filter(pl.col("term") == "texture=dots").row(0, named=True)
    assert math.isinf(row["lift"]) and row["flagged"]


def test_paired_p_is_scipys_one_sided_wilcoxon():
    rng = np.random.default_rng(1)
    d = rng.normal(0.3, 1.0, 40)
    assert paired_p(d) == pytest.approx(wilcoxon(d, alternative="greater").pvalue)
    assert paired_p(np.zeros(5)) == 1.0 and paired_p(np.array([1.0])) == 1.0


def test_the_counterfactual_confirms_a_large_consistent_drop_only():
    rng = np.random.default_rng(2)
    logit = rng.normal(10, 1, 30)
    assert confirms_counterfactual(logit, logit - 3 + rng.normal(0, 0.1, 30), 0.1)
    assert not confirms_counterfactual(logit, logit - 0.5, 0.1)  # under 10% of the logit
    assert not confirms_counterfactual(logit, logit + rng.normal(0, 1, 30), 0.1)


def test_a_correlation_no_unit_names_is_listed_and_checked_only_where_it_can_be_rendered():
    shares = _shares([(0, "l1", "colour=red", 0.3, 1), (1, "l1", "colour=red", 0.3, 1)])
    rates = {
        (0, "texture=dots"): Rate(0.5, 0.05, 1e-20),  # planted: no unit's words name it
        (0, "background=sand"): Rate(0.2, 0.1, 1e-12),  # a correlation too, not renderable
        (0, "size=large"): Rate(0.2, 0.12, 0.004),  # 1.7x, but chance among the pairs
        (0, "colour=red"): Rate(0.12, 0.12, 0.5),
        (1, "texture=dots"): Rate(0.05, 0.5, 1.0),
    }
    got = audit_terms(shares, ["l1"], ["heart", "circle"], rates, {}, AuditRule())
    heart = {r["term"]: r for r in got.filter(pl.col("label") == 0).iter_rows(named=True)}
    dots = heart["texture=dots"]
    assert dots["cooccurs"] and not dots["flagged"] and dots["flagged_by"] is None
    assert (dots["relevance_share"], dots["top_layer"], dots["units"]) == (0.0, None, 0)
    assert dots["cooccurrence_p"] == 1e-20
    assert heart["background=sand"]["cooccurs"]
    assert "size=large" not in heart  # not named, and its co-occurrence is chance
    assert not heart["colour=red"]["cooccurs"]
    assert got.filter(pl.col("label") == 1)["term"].to_list() == ["colour=red"]
    checked = to_check(got, renderable=["texture=dots", "colour=red"])
    assert checked.select("label", "term").rows() == [(0, "texture=dots")]
    assert not checked["wanted"].any()


def test_co_occurrence_is_significant_only_beyond_the_pairs_tested():
    assert cooccurrence_level(344) == pytest.approx(0.01 / 344)
    shares = _shares([(0, "l1", "colour=orange", 0.2, 2), (1, "l1", "colour=orange", 0.01, 1)])
    # heart's colour=orange in the quick sweep study: 1.5x the others' rate, p 0.0057 by
    # chance, one of 344 (class, term) pairs
    others = {(1, f"t={i}"): Rate(0.1, 0.1, 0.5) for i in range(343)}
    chance = {(0, "colour=orange"): Rate(0.177, 0.115, 0.0057), **others}
    assert not audit_terms(shares, ["l1"], ["heart", "circle"], chance, {}, AuditRule())[
        "flagged"
    ].any()
    # alone, the same p-value is significant
    alone = {(0, "colour=orange"): Rate(0.177, 0.115, 0.0057)}
    assert audit_terms(shares, ["l1"], ["heart", "circle"], alone, {}, AuditRule())["flagged"].any()
    real = {(0, "colour=orange"): Rate(0.177, 0.115, 1e-9), **others}
    assert audit_terms(shares, ["l1"], ["heart", "circle"], real, {}, AuditRule())["flagged"].any()


def test_the_counterfactual_decides_where_it_ran_else_the_ablation():
    assert model_uses(False, True) is True
    assert model_uses(True, False) is False
    assert model_uses(True, None) is True and model_uses(False, None) is False
    assert model_uses(None, None) is None
