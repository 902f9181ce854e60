"""Formulas over annotation values: the words a unit's label is written in.

A *term* says that an image has a value of a concept (``shape=heart``, ``class=goldfish``,
``weather=snow``); a *formula* combines terms with ``AND``, ``OR`` and ``NOT``. The text of a
formula has one grammar, which docs/words.md documents and other programs parse::

    formula := disj
    disj    := conj ("OR" conj)*
    conj    := unary ("AND" unary)*
    unary   := "NOT" unary | "(" formula ")" | term
    term    := name "=" value

A name or value made only of ``[A-Za-z0-9_.-]`` (and not one of the operators) is written
bare; any other is written in double quotes with ``\\"`` and ``\\\\`` escaped. :func:`text`
writes the canonical form (upper-case operators, single spaces, the fewest parentheses:
``AND`` binds tighter than ``OR``), and ``parse(text(f)) == f`` for every formula ``f``.

``AND`` and ``OR`` are n-ary and flat: ``And((And((a, b)), c))`` is ``And((a, b, c))``, so that
``a AND b AND c`` has one tree whichever way it was built.

Pure Python and numpy; no orchestration imports.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["And", "Formula", "Not", "Or", "Term", "evaluate", "parse", "terms", "text"]

#: The operators' words: upper case only, and never a bare name or value.
OPERATORS = frozenset({"AND", "OR", "NOT"})

_BARE = re.compile(r"[A-Za-z0-9_.\-]+")


@dataclass(frozen=True)
class Term:
    """``concept=value``: the image has this value of this concept.

    Attributes
    ----------
    concept : str
        The concept's name (``shape``, ``class``, a column of the user's annotations).
    value : str
        One of its values (``heart``).
    """

    concept: str
    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.concept, str) or not isinstance(self.value, str):
            raise TypeError(f"a term's concept and value must be strings, got {self!r}")


@dataclass(frozen=True)
class Not:
    """The operand does not hold."""

    operand: Formula


def _flat(kind: type, operands: tuple) -> tuple:
    flat: list = []
    for operand in operands:
        flat.extend(operand.operands if isinstance(operand, kind) else (operand,))
    if len(flat) < 2:
        raise ValueError(f"{kind.__name__} needs at least two operands, got {len(flat)}")
    return tuple(flat)


@dataclass(frozen=True)
class And:
    """Every operand holds (two or more; nested ``And`` operands are flattened)."""

    operands: tuple[Formula, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "operands", _flat(And, tuple(self.operands)))


@dataclass(frozen=True)
class Or:
    """At least one operand holds (two or more; nested ``Or`` operands are flattened)."""

    operands: tuple[Formula, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "operands", _flat(Or, tuple(self.operands)))


Formula = Term | Not | And | Or

#: What a unit or cluster without words is called wherever the product names it.
NO_WORD_FITS = "no word fits"


def in_order(formula: Formula) -> Formula:
    """The same formula with the operands of every AND and OR in the order of their text, so
    that formulas that differ only in that order (``a AND b``, ``b AND a``) print the same."""
    if isinstance(formula, Term):
        return formula
    if isinstance(formula, Not):
        return Not(in_order(formula.operand))
    operands = sorted((in_order(o) for o in formula.operands), key=text)
    return type(formula)(tuple(operands))


# --- printing ---------------------------------------------------------------------------------


def quote(word: str) -> str:
    """A name or value as formula text: bare where the grammar allows, else double-quoted.

    Examples
    --------
    >>> quote("heart"), quote("light blue"), quote("AND"), quote('say "hi"')
    ('heart', '"light blue"', '"AND"', '"say \\\\"hi\\\\""')
    """
    if _BARE.fullmatch(word) and word not in OPERATORS:
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def text(formula: Formula) -> str:
    """The canonical text of a formula: fewest parentheses, operators upper case.

    Parameters
    ----------
    formula : Formula
        A :class:`Term`, :class:`Not`, :class:`And` or :class:`Or`.

    Returns
    -------
    str
        E.g. ``shape=heart OR shape=circle``, ``colour=red AND NOT background=light``,
        ``(shape=heart OR shape=circle) AND colour=red``.
    """
    if isinstance(formula, Term):
        return f"{quote(formula.concept)}={quote(formula.value)}"
    if isinstance(formula, Not):
        inner = text(formula.operand)
        return f"NOT ({inner})" if isinstance(formula.operand, And | Or) else f"NOT {inner}"
    if isinstance(formula, And):
        return " AND ".join(
            f"({text(o)})" if isinstance(o, Or) else text(o) for o in formula.operands
        )
    if isinstance(formula, Or):
        # An And operand needs no parentheses (AND binds tighter); an Or cannot occur (flat).
        return " OR ".join(text(o) for o in formula.operands)
    raise TypeError(f"not a formula: {formula!r}")


def terms(formula: Formula) -> tuple[Term, ...]:
    """The distinct terms of a formula, in the order they first occur in its text."""
    found: dict[Term, None] = {}

    def walk(node: Formula) -> None:
        if isinstance(node, Term):
            found.setdefault(node, None)
        elif isinstance(node, Not):
            walk(node.operand)
        elif isinstance(node, And | Or):
            for operand in node.operands:
                walk(operand)
        else:
            raise TypeError(f"not a formula: {node!r}")

    walk(formula)
    return tuple(found)


def evaluate(formula: Formula, indicator: Mapping[Term, np.ndarray]) -> np.ndarray:
    """Where a formula holds, from where each of its terms holds.

    Parameters
    ----------
    formula : Formula
        The formula.
    indicator : Mapping[Term, np.ndarray]
        For every term of the formula, a bool vector over the images (all the same length).

    Returns
    -------
    np.ndarray
        bool vector over the images: True where the formula holds.
    """

    def value(node: Formula) -> np.ndarray:
        if isinstance(node, Term):
            if node not in indicator:
                raise ValueError(f"no indicator for the term {text(node)}")
            return np.asarray(indicator[node], dtype=bool)
        if isinstance(node, Not):
            return ~value(node.operand)
        if isinstance(node, And):
            return np.logical_and.reduce([value(o) for o in node.operands])
        if isinstance(node, Or):
            return np.logical_or.reduce([value(o) for o in node.operands])
        raise TypeError(f"not a formula: {node!r}")

    return value(formula)


# --- parsing ----------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<quoted>"(?:[^"\\]|\\.)*")
      | (?P<open>"(?:[^"\\]|\\.)*\\?$)
      | (?P<word>[A-Za-z0-9_.\-]+)
      | (?P<punct>[=()])
    )""",
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # "word" (bare), "quoted", "=", "(", ")" or "end"
    value: str
    position: int


def _tokens(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while True:
        while position < len(source) and source[position].isspace():
            position += 1
        if position == len(source):
            tokens.append(_Token("end", "", position))
            return tokens
        match = _TOKEN.match(source, position)
        if match is None:
            raise _error(source, position, f"unexpected character {source[position]!r}")
        start = match.start(match.lastgroup)
        if match.lastgroup == "open":
            raise _error(source, start, "unterminated quoted string")
        if match.lastgroup == "quoted":
            raw = match.group("quoted")[1:-1]
            tokens.append(_Token("quoted", re.sub(r"\\(.)", r"\1", raw, flags=re.S), start))
        elif match.lastgroup == "word":
            tokens.append(_Token("word", match.group("word"), start))
        else:
            tokens.append(_Token(match.group("punct"), match.group("punct"), start))
        position = match.end()


def _error(source: str, position: int, what: str) -> ValueError:
    return ValueError(f"cannot parse formula {source!r}: {what} at position {position}")


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "the end"
    if token.kind == "quoted":
        return quote(token.value) if token.value else '""'
    return repr(token.value)


def parse(source: str) -> Formula:
    """Read a formula's text (the grammar in this module's docstring and docs/words.md).

    Whitespace between tokens is free; operators are upper case (``and`` is a name, not an
    operator); a name or value that is an operator word must be quoted, except a value
    right after ``=``.

    Parameters
    ----------
    source : str
        E.g. ``"colour=red AND NOT background=light"``.

    Returns
    -------
    Formula
        The formula's tree (``parse(text(f)) == f``).

    Raises
    ------
    ValueError
        Where the text does not follow the grammar; the message names the position (0-based
        character offset) and what was expected there.
    """
    if not isinstance(source, str):
        raise TypeError(f"a formula's text must be a string, got {source!r}")
    tokens = _tokens(source)
    at = 0

    def peek() -> _Token:
        return tokens[at]

    def take() -> _Token:
        nonlocal at
        token = tokens[at]
        at += 1
        return token

    def is_operator(token: _Token, word: str) -> bool:
        return token.kind == "word" and token.value == word

    def expect(what: str) -> ValueError:
        token = peek()
        return _error(source, token.position, f"expected {what}, found {_describe(token)}")

    def formula() -> Formula:
        operands = [conjunction()]
        while is_operator(peek(), "OR"):
            take()
            operands.append(conjunction())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def conjunction() -> Formula:
        operands = [unary()]
        while is_operator(peek(), "AND"):
            take()
            operands.append(unary())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def unary() -> Formula:
        token = peek()
        if is_operator(token, "NOT"):
            take()
            return Not(unary())
        if token.kind == "(":
            take()
            inner = formula()
            if peek().kind != ")":
                raise expect("')' or an operator")
            take()
            return inner
        return term()

    def term() -> Term:
        token = peek()
        if token.kind not in ("word", "quoted") or (
            token.kind == "word" and token.value in OPERATORS
        ):
            raise expect("a term (name=value), 'NOT' or '('")
        concept = take().value
        if peek().kind != "=":
            raise expect("'='")
        take()
        if peek().kind not in ("word", "quoted"):
            raise expect("a value")
        return Term(concept, take().value)

    result = formula()
    if peek().kind != "end":
        raise expect("'AND', 'OR' or the end")
    return result
