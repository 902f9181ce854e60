"""The beam search against brute force, and labels of planted units."""

import itertools

import numpy as np
import pytest
from scipy import sparse
from sklearn.metrics import roc_auc_score

from carto_assets.core.words.formula import And, Not, Or, Term, evaluate, parse, terms
from carto_assets.core.words.scoring import auc_from_rank_sums, rank_units
from carto_assets.core.words.search import (
    LabelSearch,
    extension_sums,
    label_units,
    pooled_activations,
    term_indicator,
)


def world(n=2000, seed=0):
    """A synthetic world: shape, colour and background per image, as annotation rows."""
    rng = np.random.default_rng(seed)
    values = {
        "shape": rng.choice(["star", "heart", "circle", "square", "triangle"], n),
        "colour": rng.choice(["red", "green", "blue", "yellow"], n),
        "background": rng.choice(["light", "dark"], n),
    }
    image_ids = np.arange(100, 100 + n)
    rows = np.concatenate([image_ids] * len(values))
    concepts = [c for c in values for _ in range(n)]
    vals = [v for c in values for v in values[c]]
    found, indicator = term_indicator(image_ids, rows, concepts, vals)
    return values, found, indicator


def auc_of(formula, found, indicator, activation):
    columns = indicator.toarray()
    mask = evaluate(formula, {t: columns[:, i] for i, t in enumerate(found)})
    return roc_auc_score(mask, activation)


def test_planted_or_unit_gets_its_formula():
    values, found, indicator = world()
    planted = ((values["colour"] == "red") | (values["shape"] == "star")).astype(np.float32)
    words = label_units(planted[:, None], found, indicator)
    formula = parse(words.formula[0])
    assert isinstance(formula, Or)
    assert set(formula.operands) == {Term("colour", "red"), Term("shape", "star")}
    assert words.auc[0] == 1.0 and words.p_value[0] < 1e-100
    assert words.single_term[0] in ("colour=red", "shape=star") and words.single_auc[0] < 0.95


def test_planted_and_not_unit_gets_its_formula():
    values, found, indicator = world(seed=1)
    planted = (values["colour"] == "red") & (values["background"] != "light")
    words = label_units(planted[:, None].astype(float), found, indicator)
    formula = parse(words.formula[0])
    assert auc_of(formula, found, indicator, planted) == 1.0
    assert set(terms(formula)) <= {Term("colour", "red"), Term("background", "light"),
                                   Term("background", "dark")}  # fmt: skip


def test_a_unit_of_one_term_gets_that_term_alone():
    values, found, indicator = world(seed=2)
    rng = np.random.default_rng(2)
    heart, red = values["shape"] == "heart", values["colour"] == "red"
    unit = heart + 0.3 * red + rng.normal(0, 0.6, len(heart))  # mostly hearts
    words = label_units(unit[:, None], found, indicator)
    assert words.formula[0] == "shape=heart" == words.single_term[0]
    # Without the margin a longer formula wins by chance, by less than the margin.
    eager = label_units(unit[:, None], found, indicator, LabelSearch(min_gain=0.0))
    assert len(terms(parse(eager.formula[0]))) > 1
    assert words.auc[0] < eager.auc[0] < words.auc[0] + 0.02


def test_a_random_unit_gets_no_word():
    _, found, indicator = world(n=500, seed=3)
    unit = np.random.default_rng(3).random(500)
    words = label_units(unit[:, None], found, indicator)
    assert words.formula == [None] and words.tree == [None]
    assert words.candidate[0] is not None and words.p_value[0] > 1e-3
    strict = label_units(unit[:, None], found, indicator, LabelSearch(max_p=1.0, min_auc=0.99))
    assert strict.formula == [None]  # the AUC floor alone refuses it too


def test_constant_units_and_degenerate_terms():
    _, found, indicator = world(n=300, seed=4)
    everywhere = sparse.hstack([indicator, np.ones((300, 1))]).tocsc()
    words = label_units(np.ones((300, 1)), [*found, Term("world", "shapes")], everywhere)
    assert words.formula == [None] and words.candidate == [None] and np.isnan(words.auc[0])
    assert words.p_value[0] == 1.0 and words.single_term == [None]
    # The term that holds everywhere is never used (not scored, not counted).
    plain = label_units(np.ones((300, 1)), found, indicator)
    assert words.n_formulas == plain.n_formulas


def test_polysemantic_count():
    values, found, indicator = world(seed=5)
    star = values["shape"] == "star"
    extra = sparse.hstack([indicator, star[:, None]]).tocsc()
    found = [*found, Term("class", "star")]
    words = label_units(star[:, None].astype(float), found, extra)
    assert words.n_terms_over_08[0] == 2
    assert words.formula[0] == "shape=star"  # ties go to the earlier term


def test_a_unit_silenced_by_one_term_is_named_by_what_fires_it():
    """The demo's crescent cluster: highest on crescents, lowest on arrows, in between on the
    rest. `NOT shape=arrow` (4 in 5 images) separates a sliver better than `shape=crescent`;
    it holds on more than half the images, so it is no label."""
    rng = np.random.default_rng(11)
    shape = rng.choice(["crescent", "arrow", "heart", "star", "circle"], 1000)
    found, indicator = term_indicator(np.arange(1000), np.arange(1000), ["shape"] * 1000, shape)
    unit = np.where(shape == "crescent", 3.0, np.where(shape == "arrow", 0.0, 1.0))
    unit += rng.normal(0, 0.25, 1000) + 0.6 * (shape == "crescent") * rng.random(1000) * -2.5
    assert auc_of(Not(Term("shape", "arrow")), found, indicator, unit) > auc_of(
        Term("shape", "crescent"), found, indicator, unit
    )
    words = label_units(unit[:, None], found, indicator)
    assert words.formula[0] == "shape=crescent" == words.single_term[0]
    broad = label_units(unit[:, None], found, indicator, LabelSearch(max_share=1.0))
    assert broad.formula[0] == "NOT shape=arrow"


def test_no_formula_holds_on_more_than_max_share():
    values, found, indicator = world(n=600, seed=12)
    rng = np.random.default_rng(12)
    units = rng.normal(size=(600, 6))
    units[:, 0] -= 3 * (values["shape"] == "star")  # off on stars: NOT star is its best formula
    units[:, 1] -= 3 * (values["colour"] == "red") + 3 * (values["background"] == "dark")
    columns = indicator.toarray()
    for share in (0.3, 0.5, 1.0):
        words = label_units(units, found, indicator, LabelSearch(max_share=share))
        for u, formula in enumerate(words.candidate):
            mask = evaluate(parse(formula), {t: columns[:, i] for i, t in enumerate(found)})
            assert mask.mean() <= share
            assert words.auc[u] == pytest.approx(roc_auc_score(mask, units[:, u]), abs=1e-12)
        if share == 1.0:
            assert words.formula[0] == "NOT shape=star"


def brute_force_best(activation, found, indicator, max_terms, max_share=0.5):
    """The best AUC over every left-to-right formula of up to max_terms distinct terms that
    holds on at most max_share of the images, built from such formulas only."""
    columns = {t: indicator[:, i].toarray().ravel().astype(bool) for i, t in enumerate(found)}
    best = -np.inf

    def score(mask):
        if mask.all() or not mask.any() or mask.sum() > max_share * len(mask):
            return -np.inf
        return roc_auc_score(mask, activation)

    def extend(formula, used):
        nonlocal best
        mask = evaluate(formula, columns)
        if mask.sum() > max_share * len(mask):
            return  # neither a label nor extended
        best = max(best, score(mask))
        if len(used) == max_terms:
            return
        for t in found:
            if t in used:
                continue
            for f in (And((formula, t)), Or((formula, t)), And((formula, Not(t))),
                      Or((formula, Not(t)))):  # fmt: skip
                extend(f, used | {t})

    for t in found:
        extend(t, {t})
        extend(Not(t), {t})
    return best


@pytest.mark.parametrize(("max_terms", "max_share"), [(2, 0.5), (3, 0.5), (3, 1.0), (2, 0.3)])
def test_a_wide_beam_finds_the_brute_force_best(max_terms, max_share):
    rng = np.random.default_rng(max_terms)
    n, n_terms = 60, 4
    columns = rng.random((n, n_terms)) < rng.uniform(0.2, 0.6, n_terms)
    found = [Term("c", str(i)) for i in range(n_terms)]
    indicator = sparse.csc_matrix(columns)
    activations = rng.integers(0, 5, (n, 3)).astype(float)  # ties
    activations[:, 2] += 3 * (columns[:, 0] & ~columns[:, 1])
    settings = LabelSearch(max_terms=max_terms, beam=10_000, min_gain=0.0, max_share=max_share)
    words = label_units(activations, found, indicator, settings)
    for u in range(3):
        expected = brute_force_best(activations[:, u], found, indicator, max_terms, max_share)
        assert words.auc[u] == pytest.approx(expected, abs=1e-12)
        assert auc_of(words.tree[u] or parse(words.candidate[u]), found, indicator,
                      activations[:, u]) == pytest.approx(words.auc[u], abs=1e-12)  # fmt: skip


def test_extension_sums_match_each_formula_evaluated():
    rng = np.random.default_rng(7)
    n, n_terms, n_units = 50, 5, 4
    columns = rng.random((n, n_terms)) < 0.4
    activations = rng.integers(0, 4, (n, n_units)).astype(float)
    masks = rng.random((n, n_units)) < 0.3
    ranks = rank_units(activations).ranks
    rows = sparse.csr_matrix(columns.T.astype(np.float64))
    sums, counts = extension_sums(
        ranks, masks, rows, np.asarray(rows @ ranks), columns.sum(0)[:, None].astype(float)
    )
    auc = auc_from_rank_sums(sums, counts, n)
    for (op, combine), k, u in itertools.product(
        enumerate(
            [
                lambda m, t: m & t,
                lambda m, t: m | t,
                lambda m, t: m & ~t,
                lambda m, t: m | ~t,
            ]
        ),
        range(n_terms),
        range(n_units),
    ):
        mask = combine(masks[:, u], columns[:, k])
        assert counts[op, k, u] == mask.sum()
        if 0 < mask.sum() < n:
            assert auc[op, k, u] == pytest.approx(roc_auc_score(mask, activations[:, u]))


def test_chunks_do_not_change_the_labels():
    values, found, indicator = world(n=400, seed=8)
    rng = np.random.default_rng(8)
    units = rng.normal(size=(400, 9))
    units[:, 0] += 2 * (values["shape"] == "circle")
    units[:, 1] += 2 * ((values["shape"] == "star") | (values["colour"] == "blue"))
    whole = label_units(units, found, indicator)
    chunked = label_units(units, found, indicator, memory_budget=1)
    assert whole.columns().keys() == chunked.columns().keys()
    for key, column in whole.columns().items():
        np.testing.assert_array_equal(np.asarray(column), np.asarray(chunked.columns()[key]))
    assert whole.formula[0] == "shape=circle"


def test_pooled_activation_divides_each_member_by_its_max():
    x = np.array([[1.0, 10.0, 0.0], [2.0, 0.0, 0.0], [4.0, 5.0, 0.0]])
    pooled = pooled_activations(x, [np.array([0, 1]), np.array([2]), np.array([1])])
    np.testing.assert_allclose(pooled[:, 0], [(0.25 + 1) / 2, (0.5 + 0) / 2, (1 + 0.5) / 2])
    np.testing.assert_array_equal(pooled[:, 1], 0.0)
    np.testing.assert_allclose(pooled[:, 2], [1.0, 0.0, 0.5])
    with pytest.raises(ValueError, match="group 0"):
        pooled_activations(x, [np.array([3])])


def test_term_indicator_keeps_the_sample_rows():
    found, indicator = term_indicator(
        np.array([30, 10, 20]),
        np.array([10, 10, 20, 99, 30, 10]),
        ["shape", "colour", "shape", "shape", "shape", "shape"],
        ["star", "red", "heart", "star", "star", "star"],
    )
    assert found == [Term("colour", "red"), Term("shape", "heart"), Term("shape", "star")]
    np.testing.assert_array_equal(indicator.toarray(), [[0, 0, 1], [1, 0, 1], [0, 1, 0]])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (LabelSearch(max_terms=4), "max_terms"),
        (LabelSearch(beam=0), "beam"),
        (LabelSearch(min_auc=0.2), "min_auc"),
        (LabelSearch(max_p=0.0), "max_p"),
        (LabelSearch(max_share=0.0), "max_share"),
        (LabelSearch(max_share=1.5), "max_share"),
    ],
)
def test_settings_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        label_units(np.zeros((3, 1)), [], np.zeros((3, 0)), settings)


def test_on_shares_against_a_loop():
    from carto_assets.core.words.search import on_shares

    rng = np.random.default_rng(4)
    x = rng.gamma(1.0, size=(300, 6))
    x[:, 2] = 1.0 + 0.1 * rng.random(300)  # always on: never below half its max
    x[:, 3] = 0.0  # never positive: on for none
    x[:, 4] = -rng.random(300)
    expected = []
    for j in range(x.shape[1]):
        top = max(x[:, j])
        expected.append(sum(v >= 0.5 * top for v in x[:, j]) / len(x) if top > 0 else 0.0)
    assert on_shares(x) == pytest.approx(expected)
    assert on_shares(x)[2] == 1.0
    assert on_shares(np.zeros((0, 3))).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="2-D"):
        on_shares(np.zeros(3))
