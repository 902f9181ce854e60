"""The formula grammar: canonical text, parsing back, errors that name the position."""

import numpy as np
import pytest

from carto_assets.core.words.formula import (
    And,
    Not,
    Or,
    Term,
    evaluate,
    in_order,
    parse,
    terms,
    text,
)

RED, STAR, LIGHT = Term("colour", "red"), Term("shape", "star"), Term("background", "light")


@pytest.mark.parametrize(
    ("formula", "expected"),
    [
        (Or((Term("shape", "heart"), Term("shape", "circle"))), "shape=heart OR shape=circle"),
        (And((RED, Not(LIGHT))), "colour=red AND NOT background=light"),
        (
            And((Or((Term("shape", "heart"), Term("shape", "circle"))), RED)),
            "(shape=heart OR shape=circle) AND colour=red",
        ),
        (Or((And((RED, STAR)), LIGHT)), "colour=red AND shape=star OR background=light"),
        (Not(Or((RED, STAR))), "NOT (colour=red OR shape=star)"),
        (Not(Not(RED)), "NOT NOT colour=red"),
        (Term("light colour", 'say "hi"\\'), '"light colour"="say \\"hi\\"\\\\"'),
        (Term("AND", "OR"), '"AND"="OR"'),
        (Term("class", ""), 'class=""'),
        (Term("size", "1.5-x_y"), "size=1.5-x_y"),
    ],
)
def test_canonical_text_and_back(formula, expected):
    assert text(formula) == expected
    assert parse(expected) == formula


def test_and_or_are_flat():
    assert And((And((RED, STAR)), LIGHT)) == And((RED, STAR, LIGHT))
    assert parse("colour=red AND (shape=star AND background=light)") == And((RED, STAR, LIGHT))
    assert text(Or((RED, Or((STAR, LIGHT))))) == "colour=red OR shape=star OR background=light"
    with pytest.raises(ValueError, match="at least two"):
        And((RED,))


def test_parse_is_free_with_whitespace_and_reads_precedence():
    assert parse("  ( colour = red OR shape=star )AND NOT background=light ") == And(
        (Or((RED, STAR)), Not(LIGHT))
    )
    assert parse("colour=red OR shape=star AND background=light") == Or((RED, And((STAR, LIGHT))))
    assert parse("colour=AND") == Term("colour", "AND")  # a value right after '=' may be bare


def random_formula(rng, depth=0):
    names = ["shape", "colour", "x y", 'q"', "AND", "a.b-c_1"]
    kind = rng.integers(0, 4) if depth < 3 else 0
    if kind == 0:
        return Term(str(rng.choice(names)), str(rng.choice([*names, "", "\\"])))
    if kind == 1:
        return Not(random_formula(rng, depth + 1))
    operands = tuple(random_formula(rng, depth + 1) for _ in range(rng.integers(2, 4)))
    return (And if kind == 2 else Or)(operands)


def test_round_trip_on_generated_formulas():
    rng = np.random.default_rng(0)
    for _ in range(500):
        formula = random_formula(rng)
        assert parse(text(formula)) == formula, text(formula)
        assert text(parse(text(formula))) == text(formula)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("shape=heart OR", "expected a term .* found the end at position 14"),
        ("shape heart", "expected '=', found 'heart' at position 6"),
        ("(colour=red", r"expected '\)' or an operator, found the end at position 11"),
        ("colour=red)", r"expected 'AND', 'OR' or the end, found '\)' at position 10"),
        ('colour="red', "unterminated quoted string at position 7"),
        ("AND=red", "expected a term .* found 'AND' at position 0"),
        ("colour=red and shape=star", "found 'and' at position 11"),
        ("colour=red # x", "unexpected character '#' at position 11"),
        ("colour=", "expected a value, found the end at position 7"),
        ("", "expected a term .* at position 0"),
    ],
)
def test_parse_errors_name_the_position(source, message):
    with pytest.raises(ValueError, match=message):
        parse(source)


def test_terms_and_evaluate():
    formula = parse("(colour=red OR shape=star) AND NOT colour=red OR background=light")
    assert terms(formula) == (RED, STAR, LIGHT)
    indicator = {
        RED: np.array([1, 1, 0, 0, 0, 0], bool),
        STAR: np.array([0, 1, 1, 0, 1, 0], bool),
        LIGHT: np.array([1, 0, 0, 0, 0, 1], bool),
    }
    expected = (indicator[RED] | indicator[STAR]) & ~indicator[RED] | indicator[LIGHT]
    np.testing.assert_array_equal(evaluate(formula, indicator), expected)
    with pytest.raises(ValueError, match="no indicator for the term shape=heart"):
        evaluate(parse("shape=heart"), indicator)


def test_in_order_prints_formulas_that_differ_only_in_operand_order_the_same():
    a, b, c = Term("colour", "green"), Term("colour", "cyan"), Term("shape", "star")
    one = And((Not(a), Not(b)))
    other = And((Not(b), Not(a)))
    assert text(one) != text(other)
    assert text(in_order(one)) == text(in_order(other)) == "NOT colour=cyan AND NOT colour=green"
    nested = Or((And((c, a)), b))
    assert text(in_order(nested)) == "colour=cyan OR colour=green AND shape=star"
    assert parse(text(in_order(nested))) == in_order(nested)
